#include "machine.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <vector>

namespace plugpool::bench {

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void fail(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// Reads exactly n bytes; false at end of stream.
bool readAll(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail("read");
    if (r == 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void writeAll(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail("write");
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

// Forks a child that runs `body` and _exits; returns its pid.
template <typename Body>
pid_t forkChild(Body body) {
  pid_t pid = ::fork();
  if (pid < 0) fail("fork");
  if (pid == 0) {
    try {
      body();
      ::_exit(0);
    } catch (...) {
      ::_exit(1);
    }
  }
  return pid;
}

void reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error("a reference-point helper process failed");
  }
}

// With ONE_CPU, pins the calling thread (and so children forked while it lives) to the CPU it
// runs on; restores the thread's previous affinity when it dies.
class Pinning {
 public:
  explicit Pinning(Placement placement) {
    if (placement != Placement::ONE_CPU) return;
    if (::sched_getaffinity(0, sizeof old_, &old_) != 0) fail("sched_getaffinity");
    int cpu = ::sched_getcpu();
    if (cpu < 0) fail("sched_getcpu");
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (::sched_setaffinity(0, sizeof one, &one) != 0) fail("sched_setaffinity");
    pinned_ = true;
  }
  ~Pinning() {
    if (pinned_) ::sched_setaffinity(0, sizeof old_, &old_);
  }
  Pinning(const Pinning&) = delete;
  Pinning& operator=(const Pinning&) = delete;

 private:
  cpu_set_t old_{};
  bool pinned_ = false;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

double socketpairRttUs(int roundTrips, Placement placement) {
  Pinning pinning(placement);
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) fail("socketpair");
  pid_t child = forkChild([&] {
    ::close(fds[0]);
    char c;
    while (readAll(fds[1], &c, 1)) writeAll(fds[1], &c, 1);
  });
  ::close(fds[1]);
  const int warmUp = std::min(roundTrips, 1000);
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(roundTrips));
  char c = 'x';
  for (int i = 0; i < warmUp + roundTrips; ++i) {
    auto t0 = Clock::now();
    writeAll(fds[0], &c, 1);
    if (!readAll(fds[0], &c, 1)) throw std::runtime_error("socketpair helper ended early");
    auto t1 = Clock::now();
    if (i >= warmUp) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  ::close(fds[0]);
  reap(child);
  return median(std::move(us));
}

double pipeGbps(std::size_t bytes, Placement placement) {
  Pinning pinning(placement);
  constexpr std::size_t BLOCK = std::size_t{1} << 20;
  int data[2], ready[2];
  if (::pipe2(data, O_CLOEXEC) != 0 || ::pipe2(ready, O_CLOEXEC) != 0) fail("pipe2");
  pid_t child = forkChild([&] {
    ::close(data[0]);
    ::close(ready[0]);
    std::vector<char> block(BLOCK, 'p');  // touched before the clock starts
    writeAll(ready[1], "r", 1);
    for (std::size_t sent = 0; sent < bytes; sent += BLOCK) {
      writeAll(data[1], block.data(), std::min(BLOCK, bytes - sent));
    }
  });
  ::close(data[1]);
  ::close(ready[1]);
  std::vector<char> block(BLOCK, 0);
  char r;
  if (!readAll(ready[0], &r, 1)) throw std::runtime_error("pipe helper ended early");
  auto t0 = Clock::now();
  std::size_t got = 0;
  for (;;) {
    ssize_t n = ::read(data[0], block.data(), BLOCK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("read");
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  auto t1 = Clock::now();
  ::close(data[0]);
  ::close(ready[0]);
  reap(child);
  if (got != bytes) throw std::runtime_error("pipe helper sent the wrong number of bytes");
  return static_cast<double>(bytes) / std::chrono::duration<double>(t1 - t0).count() / 1e9;
}

double memcpyGbps(std::size_t bytes, int passes) {
  std::vector<char> from(bytes, 'm'), to(bytes, 0);  // both touched before timing
  std::vector<double> gbps;
  for (int i = 0; i < passes; ++i) {
    from[static_cast<std::size_t>(i) % bytes] = static_cast<char>(i);
    auto t0 = Clock::now();
    std::memcpy(to.data(), from.data(), bytes);
    auto t1 = Clock::now();
    if (to[static_cast<std::size_t>(i) % bytes] != static_cast<char>(i)) {
      throw std::runtime_error("memcpy reference: copy mismatch");
    }
    gbps.push_back(static_cast<double>(bytes) / std::chrono::duration<double>(t1 - t0).count() /
                   1e9);
  }
  return median(std::move(gbps));
}

}  // namespace plugpool::bench
