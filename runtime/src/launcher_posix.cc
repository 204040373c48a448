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

// The host's environment with `extra` ("NAME=value", which must outlive the result) added.
std::vector<char*> workerEnvironment(const std::vector<std::string>& extra) {
  std::vector<char*> env;
  bool tuned = false;
  for (char** e = environ; *e != nullptr; ++e) {
    tuned = tuned || std::strncmp(*e, "GLIBC_TUNABLES=", 15) == 0;
    env.push_back(*e);
  }
  if (!tuned) env.push_back(const_cast<char*>(WORKER_TUNABLES));
  for (const auto& e : extra) env.push_back(const_cast<char*>(e.c_str()));
  env.push_back(nullptr);
  return env;
}

// posix_spawn(p) of `argv` with descriptor `channel` (-1: none) as the child's descriptor 3
// and nothing else inherited beyond 0-2 (`devNullInput`: stdin from /dev/null), default
// signal dispositions, an empty mask, and a process group of its own (launcher.h).
pid_t spawnProcess(const std::vector<std::string>& argv, const std::vector<char*>& env, int channel,
                   bool searchPath, bool devNullInput) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // /dev/null for each of 0-2 the host has closed (a daemon): otherwise the child's own
  // first descriptors, or a task's output, would land there.
  for (int fd = 0; fd < WORKER_CHANNEL_FD; ++fd) {
    if ((fd == 0 && devNullInput) || (::fcntl(fd, F_GETFD) < 0 && errno == EBADF)) {
      posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDWR, 0);
    }
  }
  // dup2 onto 3 clears close-on-exec for the copy; then close everything above it, so the
  // child inherits no descriptor of the host's but stdin/out/err and its channel.
  if (channel >= 0) posix_spawn_file_actions_adddup2(&actions, channel, WORKER_CHANNEL_FD);
  posix_spawn_file_actions_addclosefrom_np(&actions, WORKER_CHANNEL_FD + (channel >= 0 ? 1 : 0));

  // The child starts with default signal dispositions and an empty mask, whatever the host
  // application set for itself, and leads a process group of its own (launcher.h).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = (searchPath ? ::posix_spawnp : ::posix_spawn)(&pid, args[0], &actions, &attr,
                                                               args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throwSystemError(rc, "posix_spawn " + argv[0]);
  return pid;
}

class PosixLauncher final : public Launcher {
 public:
  SpawnedProcess spawn(const std::string& executable) override {
    ChannelPair pair = newChannelPair();
    const pid_t pid = spawnProcess({executable, "--host-pid=" + std::to_string(::getpid())},
                                   workerEnvironment({}), pair.worker.get(), /*searchPath=*/false,
                                   /*devNullInput=*/false);
    return adoptWorker(pid, std::move(pair.host));
  }
};

}  // namespace

std::unique_ptr<Launcher> newPosixLauncher() {
  return std::make_unique<PosixLauncher>();
}

SpawnedProcess spawnCommand(const std::vector<std::string>& argv,
                            const std::vector<std::string>& environment) {
  const pid_t pid = spawnProcess(argv, workerEnvironment(environment), -1, /*searchPath=*/true,
                                 /*devNullInput=*/true);
  return adoptWorker(pid, UniqueFd());
}

}  // namespace plugpool::detail
