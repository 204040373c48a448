#include "launcher_common.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace plugpool::detail {

namespace {

// glibc 2.36's <sys/pidfd.h> declares pidfd_open without C linkage, so C++ cannot link
// against it; the system call itself is stable since Linux 5.3.
int pidfdOpen(pid_t pid) {
  return aboveStdio(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
}

}  // namespace

void throwSystemError(int error, const std::string& what) {
  throw std::system_error(error, std::generic_category(), what);
}

ChannelPair newChannelPair() {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    throwSystemError(errno, "socketpair");
  }
  ChannelPair channel{UniqueFd(aboveStdio(pair[0])), UniqueFd(aboveStdio(pair[1]))};
  if (!channel.host || !channel.worker) throwSystemError(errno, "moving a socket off 0-2");
  return channel;
}

SpawnedProcess adoptWorker(pid_t pid, UniqueFd hostEnd) {
  SpawnedProcess process;
  process.pid = pid;
  process.pidfd = UniqueFd(pidfdOpen(pid));
  if (!process.pidfd) {
    int error = errno;
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    throwSystemError(error, "pidfd_open");
  }
  if (hostEnd) ::fcntl(hostEnd.get(), F_SETFL, ::fcntl(hostEnd.get(), F_GETFL) | O_NONBLOCK);
  process.channel = std::move(hostEnd);
  return process;
}

}  // namespace plugpool::detail
