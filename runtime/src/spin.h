// spin.h — watching briefly for an event before going to sleep on it. Internal.
//
// Sleeping and being woken costs about as much as a socket round trip (more when the CPU it
// wakes on was idle), so a thread that expects an answer within microseconds — an apply's
// caller, the dispatcher with a lone chunk out, a worker that has just replied and may get
// the next Run at once — first polls for it a little while. Only where a second CPU can do
// the work meanwhile: on one CPU, watching only delays it.
#pragma once

#include <chrono>
#include <thread>

namespace plugpool::detail {

// How long a thread watches before it sleeps.
inline constexpr auto WATCH_TIME = std::chrono::microseconds(50);

// Calls `arrived()` until it returns true or WATCH_TIME has passed, yielding the CPU between
// calls; returns its last answer. Returns false at once, without calling it, on a machine
// with one CPU.
template <typename Arrived>
bool watchBriefly(Arrived&& arrived) {
  static const bool pays = std::thread::hardware_concurrency() > 1;
  if (!pays) return false;
  const auto until = std::chrono::steady_clock::now() + WATCH_TIME;
  for (;;) {
    if (arrived()) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::yield();
  }
}

}  // namespace plugpool::detail
