#include "comm/watchdog.h"

#include <cstdio>
#include <unistd.h>

namespace diloco {

Watchdog::~Watchdog() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void Watchdog::set_timeout(double seconds, double grace) {
    std::lock_guard<std::mutex> lock(mu_);
    timeout_ = seconds > 0 ? seconds : 0.0;
    grace_ = grace > 0 ? grace : 0.0;
    if (timeout_ > 0 && !thread_.joinable()) thread_ = std::thread([this] { run(); });
}

void Watchdog::arm(const std::string& message) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (timeout_ <= 0) return;
        armed_ = true;
        deadline_ = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_));
        message_ = message;
    }
    cv_.notify_all();
}

void Watchdog::disarm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;  // no notify: the thread finds it disarmed when it wakes
}

void Watchdog::run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
        if (!armed_) {
            cv_.wait(lock);
            continue;
        }
        const auto grace = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(grace_));
        cv_.wait_until(lock, deadline_ + grace);
        // woken early, disarmed, or re-armed meanwhile (a later deadline): look again
        if (stop_ || !armed_ || std::chrono::steady_clock::now() < deadline_ + grace) continue;
        // the call is still stuck: say so in one line and leave without running any destructor
        // or MPI (the main thread holds MPI's state)
        std::fprintf(stderr, "%s\n", message_.c_str());
        std::fflush(stderr);
        _exit(1);
    }
}

}  // namespace diloco
