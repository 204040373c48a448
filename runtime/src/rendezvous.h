// rendezvous.h — waiting for one remote worker to connect back. Internal.
//
// A starting remote worker's link owns one: a socket listening on a port of its own, and the
// connections made to it that have not yet sent their preamble (tcp.h). The first connection
// whose preamble carries the worker's secret becomes the worker's channel; every other one —
// no preamble, a wrong one, a wrong secret or version, too slow, one too many — is closed and
// reported, and costs nothing else. Threads: the dispatcher's only. Non-blocking throughout.
#pragma once

#include <poll.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "fd.h"
#include "tcp.h"

namespace plugpool::detail {

class Rendezvous {
 public:
  using Clock = std::chrono::steady_clock;
  // A connection may take this long to send its preamble.
  static constexpr std::chrono::milliseconds PREAMBLE_TIMEOUT{10'000};
  // At most this many connections wait for their preamble at once; more are refused.
  static constexpr std::size_t MAX_PENDING = 16;
  // After accept() fails for want of descriptors or memory, the port is not watched for this
  // long (it would be readable at once again, and the dispatcher would spin).
  static constexpr std::chrono::milliseconds ACCEPT_PAUSE{100};

  // `refused` is told why each connection it closed was refused.
  Rendezvous(UniqueFd listener, Secret secret, Liveness liveness,
             std::function<void(const std::string&)> refused);

  // Polling, as WorkerLink's: watch() appends 1 + pending entries; onEvents() gets them back
  // and returns the worker's channel (blocking, liveness set) once it has connected, after
  // which the rendezvous holds no descriptor. nextTimer()/onTime(): preamble deadlines.
  std::size_t watch(std::vector<pollfd>& fds) const;
  UniqueFd onEvents(const pollfd* fds);
  Clock::time_point nextTimer() const;
  void onTime(Clock::time_point now);

 private:
  struct Pending {
    UniqueFd fd;
    PreambleCheck check;
    Clock::time_point deadline;
  };
  void accept();
  void refuse(Pending& p, const std::string& why);

  UniqueFd listener_;
  Secret secret_;
  Liveness liveness_;
  std::function<void(const std::string&)> refused_;
  std::vector<Pending> pending_;
  Clock::time_point pausedUntil_{};  // accept() failed: the port is not watched until then
};

}  // namespace plugpool::detail
