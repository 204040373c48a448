#include "rendezvous.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

namespace plugpool::detail {

Rendezvous::Rendezvous(UniqueFd listener, Secret secret, Liveness liveness,
                       std::function<void(const std::string&)> refused)
    : listener_(std::move(listener)),
      secret_(secret),
      liveness_(liveness),
      refused_(std::move(refused)) {}

std::size_t Rendezvous::watch(std::vector<pollfd>& fds) const {
  fds.push_back({Clock::now() < pausedUntil_ ? -1 : listener_.get(), POLLIN, 0});
  for (const Pending& p : pending_) fds.push_back({p.fd.get(), POLLIN, 0});
  return 1 + pending_.size();
}

UniqueFd Rendezvous::onEvents(const pollfd* fds) {
  UniqueFd channel;
  // Only the entries watch() listed: accept() below may add more.
  const std::size_t listed = pending_.size();
  for (std::size_t i = 0; i < listed && !channel; ++i) {
    Pending& p = pending_[i];
    if (!p.fd || (fds[1 + i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    std::uint8_t bytes[PREAMBLE_BYTES];
    // Exactly what the preamble still needs: what follows it is the conversation's.
    const ssize_t n = ::recv(p.fd.get(), bytes, p.check.needed(), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n < 0) {
      refuse(p, std::string("its connection failed before its preamble: ") + std::strerror(errno));
      continue;
    }
    if (n == 0) {
      refuse(p, "it closed its connection before its preamble was complete");
      continue;
    }
    p.check.take(bytes, static_cast<std::size_t>(n));
    if (p.check.state() == PreambleCheck::State::REFUSED) {
      refuse(p, p.check.why());
    } else if (p.check.state() == PreambleCheck::State::ACCEPTED) {
      try {
        setLiveness(p.fd.get(), liveness_);
        channel = std::move(p.fd);
      } catch (const std::system_error& e) {
        refuse(p, std::string("cannot watch its connection: ") + e.what());
      }
    }
  }
  if (!channel && (fds[0].revents & POLLIN) != 0) accept();
  std::erase_if(pending_, [](const Pending& p) { return !p.fd; });
  if (channel) {
    // The worker is here: whoever else connected is refused, and no one else may.
    for (Pending& p : pending_) refuse(p, "its worker had already connected");
    pending_.clear();
    listener_.reset();
  }
  return channel;
}

Rendezvous::Clock::time_point Rendezvous::nextTimer() const {
  auto next = pausedUntil_ > Clock::now() ? pausedUntil_ : Clock::time_point::max();
  for (const Pending& p : pending_) next = std::min(next, p.deadline);
  return next;
}

void Rendezvous::onTime(Clock::time_point now) {
  for (Pending& p : pending_) {
    if (now >= p.deadline) {
      refuse(p, "it sent no preamble within " + std::to_string(PREAMBLE_TIMEOUT.count()) + " ms");
    }
  }
  std::erase_if(pending_, [](const Pending& p) { return !p.fd; });
}

void Rendezvous::accept() {
  for (;;) {
    UniqueFd fd(
        aboveStdio(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)));
    if (!fd) {
      // EAGAIN: none left. EMFILE, ENOMEM and the like: try again in a while.
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        pausedUntil_ = Clock::now() + ACCEPT_PAUSE;
      }
      return;
    }
    Pending p{std::move(fd), PreambleCheck(secret_), Clock::now() + PREAMBLE_TIMEOUT};
    if (pending_.size() >= MAX_PENDING) {
      refuse(p, "too many connections were waiting for their preamble");
      continue;
    }
    pending_.push_back(std::move(p));
  }
}

void Rendezvous::refuse(Pending& p, const std::string& why) {
  p.fd.reset();
  refused_(why);
}

}  // namespace plugpool::detail
