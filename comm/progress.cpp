#include "comm/progress.h"

#ifdef DILOCO_HAVE_MPI
#include <mpi.h>
#endif

namespace diloco {

void ProgressThread::start(void* probe_comm, std::chrono::microseconds interval) {
    if (thread_.joinable()) return;
    probe_comm_ = probe_comm;
    interval_ = interval;
    stop_ = false;
    thread_ = std::thread([this] { run(); });
}

void ProgressThread::stop() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void ProgressThread::exchange_started() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        in_flight_++;
    }
    cv_.notify_all();
}

void ProgressThread::exchange_done() {
    std::lock_guard<std::mutex> lock(mu_);
    if (in_flight_ > 0) in_flight_--;  // no notify: the thread finds the count at zero when it wakes
}

void ProgressThread::run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
        if (in_flight_ == 0) {
            cv_.wait(lock);
            continue;
        }
        lock.unlock();  // MPI is called without the lock: the main thread may start or finish meanwhile
#ifdef DILOCO_HAVE_MPI
        int found = 0;
        MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, *static_cast<MPI_Comm*>(probe_comm_), &found, MPI_STATUS_IGNORE);
#endif
        polls_.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::sleep_for(interval_);
        lock.lock();
    }
}

}  // namespace diloco
