// fd.h — an owned file descriptor, and keeping the pool's descriptors off 0-2. Internal.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace plugpool::detail {

// Every descriptor the pool opens passes through this at once: returns `fd` if it is -1 or 3
// and above; moves one that landed on 0, 1 or 2 to the lowest free number from 3 up
// (close-on-exec, as all of the pool's descriptors are) and returns that. A host that closed
// its standard descriptors (a daemon) goes on using those numbers — another thread reads
// "stdin", prints to "stdout" — and must never reach the pool's eventfd or a worker's socket
// through them. Returns -1 with errno set if the move fails (`fd` is closed then).
inline int aboveStdio(int fd) noexcept {
  if (fd < 0 || fd > 2) return fd;
  const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  const int error = errno;
  ::close(fd);
  errno = error;
  return moved;
}

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  // Closes the descriptor. close() is not retried on EINTR: on Linux the descriptor is
  // released either way, and retrying could close a descriptor another thread just opened.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace plugpool::detail
