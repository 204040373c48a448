#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "launcher.h"
#include "launcher_common.h"

extern char** environ;

namespace plugpool::detail {

namespace {

// Unless the host's environment sets glibc's tunables itself, a worker's malloc asks for
// transparent huge pages for its large blocks (glibc >= 2.35; ignored by older ones): a task
// that allocates a large result then takes 512 times fewer page faults (big_buffers.h says
// why that matters). The workers' environment is otherwise the host's.
constexpr const char* WORKER_TUNABLES = "GLIBC_TUNABLES=glibc.malloc.hugetlb=1";

std::vector<char*> workerEnvironment() {
  std::vector<char*> env;
  bool tuned = false;
  for (char** e = environ; *e != nullptr; ++e) {
    tuned = tuned || std::strncmp(*e, "GLIBC_TUNABLES=", 15) == 0;
    env.push_back(*e);
  }
  if (!tuned) env.push_back(const_cast<char*>(WORKER_TUNABLES));
  env.push_back(nullptr);
  return env;
}

class PosixLauncher final : public Launcher {
 public:
  SpawnedProcess spawn(const std::string& executable) override {
    ChannelPair pair = newChannelPair();

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // /dev/null for each of 0-2 the host has closed (a daemon): otherwise the worker's own
    // first descriptors, or a task's output, would land there.
    for (int fd = 0; fd < WORKER_CHANNEL_FD; ++fd) {
      if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
        posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDWR, 0);
      }
    }
    // dup2 onto 3 clears close-on-exec for the copy; then close everything above it, so the
    // worker inherits no descriptor of the host's but stdin/out/err and its channel.
    posix_spawn_file_actions_adddup2(&actions, pair.worker.get(), WORKER_CHANNEL_FD);
    posix_spawn_file_actions_addclosefrom_np(&actions, WORKER_CHANNEL_FD + 1);

    // The worker starts with default signal dispositions and an empty mask, whatever the
    // host application set for itself, and leads a process group of its own (launcher.h).
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(
        &attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

    std::string hostPid = "--host-pid=" + std::to_string(::getpid());
    char* argv[] = {const_cast<char*>(executable.c_str()), const_cast<char*>(hostPid.c_str()),
                    nullptr};
    std::vector<char*> env = workerEnvironment();
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, executable.c_str(), &actions, &attr, argv, env.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throwSystemError(rc, "posix_spawn " + executable);
    return adoptWorker(pid, std::move(pair.host));
  }
};

}  // namespace

std::unique_ptr<Launcher> newPosixLauncher() {
  return std::make_unique<PosixLauncher>();
}

}  // namespace plugpool::detail
