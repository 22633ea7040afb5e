// comm/watchdog.h: a call armed past its deadline ends the process with its line and status 1; a
// call disarmed in time, re-armed calls and a watchdog that is off never do. Death tests: gtest
// runs each in a child process.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "comm/watchdog.h"

using namespace diloco;
using std::chrono::milliseconds;

TEST(Watchdog, StuckCallEndsTheProcessWithItsLine) {
    EXPECT_EXIT(
        {
            Watchdog w;
            w.set_timeout(0.1);
            Deadline d(w, "error: the outer sync is stuck");
            std::this_thread::sleep_for(milliseconds(3000));
            std::exit(0);  // not reached: the watchdog ends the process first
        },
        ::testing::ExitedWithCode(1), "^error: the outer sync is stuck\n$");
}

TEST(Watchdog, GraceDelaysTheEnd) {
    EXPECT_EXIT(
        {
            Watchdog w;
            w.set_timeout(0.1, 0.5);
            w.arm("late");
            std::this_thread::sleep_for(milliseconds(300));  // past the timeout, inside the grace
            std::fprintf(stderr, "still here;");
            std::this_thread::sleep_for(milliseconds(3000));
            std::exit(0);
        },
        ::testing::ExitedWithCode(1), "still here;late");
}

TEST(Watchdog, CallsThatReturnInTimeNeverFire) {
    EXPECT_EXIT(
        {
            Watchdog w;
            w.set_timeout(0.2);
            for (int i = 0; i < 10; i++) {  // ten calls of 0.1 s: 1 s in all, each within 0.2 s
                Deadline d(w, "fired");
                std::this_thread::sleep_for(milliseconds(100));
            }
            std::this_thread::sleep_for(milliseconds(400));  // disarmed: no deadline
            std::exit(0);
        },
        ::testing::ExitedWithCode(0), "");
}

TEST(Watchdog, OffNeverFires) {
    EXPECT_EXIT(
        {
            Watchdog w;
            w.set_timeout(0.0);
            Deadline d(w, "fired");
            std::this_thread::sleep_for(milliseconds(300));
            std::exit(0);
        },
        ::testing::ExitedWithCode(0), "");
}
