// A deadline on blocking calls that cross hosts (comm/comm.h arms it): a rank whose peer is lost
// without the MPI runtime noticing (a cut link: TCP retransmits for many minutes; a host frozen)
// would otherwise wait in the collective for ever. Open MPI itself ends the job at once when a rank
// dies (its daemon sees the exit), so this only matters for the silent failures.
//
// One thread a process sleeps until the armed call's deadline; if the call has not returned by
// then, it prints the line it was given on stderr and ends the process with _exit(1). It does not
// call MPI: the main thread is the one stuck in it (and the program initialises MPI with
// MPI_THREAD_FUNNELED unless --comm-progress thread asks for more). Open MPI's daemon sees a rank leave with a non-zero status before
// MPI_Finalize and ends the whole job (its default, orte_abort_on_non_zero_status).
#pragma once
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace diloco {

class Watchdog {
public:
    Watchdog() = default;
    ~Watchdog();
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

    // seconds > 0 starts the thread (once); 0 turns the deadline off. `grace`: extra seconds this
    // process waits past the deadline before it speaks, so that of the ranks that all time out
    // together one speaks first and the runtime ends the others quietly.
    void set_timeout(double seconds, double grace = 0.0);
    double timeout() const { return timeout_; }
    // A call starts: if it is not disarmed within the timeout, `message` is printed and the process
    // ends. Arming while armed replaces the earlier call (calls do not nest here).
    void arm(const std::string& message);
    void disarm();

private:
    void run();
    std::mutex mu_;
    std::condition_variable cv_;
    std::thread thread_;
    double timeout_ = 0.0, grace_ = 0.0;
    bool armed_ = false, stop_ = false;
    std::chrono::steady_clock::time_point deadline_;
    std::string message_;
};

// Arms a watchdog for one scope (a blocking call); does nothing when the watchdog is off.
class Deadline {
public:
    Deadline(Watchdog& w, const std::string& message) : w_(w.timeout() > 0 ? &w : nullptr) {
        if (w_) w_->arm(message);
    }
    ~Deadline() {
        if (w_) w_->disarm();
    }
    Deadline(const Deadline&) = delete;
    Deadline& operator=(const Deadline&) = delete;

private:
    Watchdog* w_;
};

}  // namespace diloco
