// A thread that moves non-blocking exchanges forward while compute goes on (--comm-progress thread).
//
// Over TCP, Open MPI moves a non-blocking message only inside MPI calls (no progress thread of its
// own in the tcp BTL: `btl_tcp_progress_thread` changed nothing, docs/distributed.md). With one
// call a step, a large message's rendezvous handshake alone takes two steps, and the data then
// moves at completion: an exchange overlapped by tau = 1 step is hardly overlapped at all. This
// thread calls MPI_Iprobe on a communicator of its own, which carries no message, every
// `interval` while at least one exchange is in flight: each call runs Open MPI's progress engine,
// which sends and receives whatever the sockets allow for every request of the process. It never
// touches the program's requests, so the main thread's test and wait stay as they are, and it
// sleeps on a condition variable while nothing is in flight.
//
// It needs MPI_THREAD_MULTIPLE (two threads in MPI at once): the program asks for it at MPI_Init
// when the option is given, and Comm refuses the thread when the library did not grant it.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace diloco {

class ProgressThread {
public:
    ProgressThread() = default;
    ~ProgressThread() { stop(); }
    ProgressThread(const ProgressThread&) = delete;
    ProgressThread& operator=(const ProgressThread&) = delete;

    // Starts the thread, probing `probe_comm` (an MPI_Comm* that nothing else uses).
    void start(void* probe_comm, std::chrono::microseconds interval);
    // Joins the thread; before the communicator is freed and before MPI_Finalize.
    void stop();
    bool running() const { return thread_.joinable(); }

    // An exchange started / completed: the thread polls while the count is above zero.
    void exchange_started();
    void exchange_done();
    // Progress calls made so far (tests: it polls while an exchange is in flight, and only then).
    uint64_t polls() const { return polls_.load(std::memory_order_relaxed); }

private:
    void run();
    std::mutex mu_;
    std::condition_variable cv_;
    std::thread thread_;
    void* probe_comm_ = nullptr;
    std::chrono::microseconds interval_{200};
    int in_flight_ = 0;
    bool stop_ = false;
    std::atomic<uint64_t> polls_{0};
};

}  // namespace diloco
