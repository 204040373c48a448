#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>

#include "launcher.h"

extern char** environ;

namespace plugpool::detail {

namespace {

// glibc 2.36's <sys/pidfd.h> declares pidfd_open without C linkage, so C++ cannot link
// against it; the system call itself is stable since Linux 5.3.
int pidfdOpen(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

[[noreturn]] void fail(int error, const std::string& what) {
  throw std::system_error(error, std::generic_category(), what);
}

class PosixLauncher final : public Launcher {
 public:
  SpawnedProcess spawn(const std::string& executable) override {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) fail(errno, "socketpair");
    UniqueFd ours(pair[0]), theirs(pair[1]);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // dup2 onto 3 clears close-on-exec for the copy; then close everything above it, so the
    // worker inherits no descriptor of the host's but stdin/out/err and its channel.
    posix_spawn_file_actions_adddup2(&actions, theirs.get(), WORKER_CHANNEL_FD);
    posix_spawn_file_actions_addclosefrom_np(&actions, WORKER_CHANNEL_FD + 1);

    // The worker starts with default signal dispositions and an empty mask, whatever the
    // host application set for itself.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    std::string hostPid = "--host-pid=" + std::to_string(::getpid());
    char* argv[] = {const_cast<char*>(executable.c_str()), const_cast<char*>(hostPid.c_str()),
                    nullptr};
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, executable.c_str(), &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) fail(rc, "posix_spawn " + executable);

    SpawnedProcess process;
    process.pid = pid;
    process.pidfd = UniqueFd(pidfdOpen(pid));
    if (!process.pidfd) {
      int error = errno;
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      fail(error, "pidfd_open");
    }
    ::fcntl(ours.get(), F_SETFL, ::fcntl(ours.get(), F_GETFL) | O_NONBLOCK);
    process.channel = std::move(ours);
    return process;
  }
};

}  // namespace

std::unique_ptr<Launcher> newPosixLauncher() {
  return std::make_unique<PosixLauncher>();
}

}  // namespace plugpool::detail
