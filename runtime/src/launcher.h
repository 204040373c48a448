// launcher.h — how the pool starts a worker process. Internal.
//
// The dispatcher asks a Launcher for processes; it never calls fork/exec itself, so a test
// (or a future transport) can substitute its own. The implementations are in
// launcher_posix.cc (posix_spawn) and launcher_fork.cc (fork), sharing launcher_common.h.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "fd.h"

namespace plugpool::detail {

// A started worker. The caller owns the descriptors and must reap the process (waitpid on
// exactly this pid, or waitid on the pidfd): until then its pid cannot be reused.
//
// The worker leads a process group of its own (its pgid is `pid`) from before spawn()
// returns, so kill(-pid, signal) reaches it and every process its tasks start in that group;
// it is not in the terminal's foreground group, so Ctrl-C reaches the host only. Both
// descriptors are on 3 or above (aboveStdio, fd.h).
struct SpawnedProcess {
  pid_t pid = -1;
  UniqueFd pidfd;    // readable once the process has exited
  UniqueFd channel;  // our end of the socketpair: non-blocking, close-on-exec
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  // Starts `executable` with the other end of a new socketpair as its descriptor 3 and no
  // other inherited descriptors beyond 0-2, which are the host's, or /dev/null for those the
  // host has closed. Throws std::system_error on failure.
  virtual SpawnedProcess spawn(const std::string& executable) = 0;
};

// posix_spawn + pidfd_open; safe to call from a multithreaded host.
std::unique_ptr<Launcher> newPosixLauncher();

// fork() without exec: the child serves as a worker from the host's memory image (see
// StartMethod::FORK); `executable` is ignored. Implemented in launcher_fork.cc.
std::unique_ptr<Launcher> newForkLauncher();

// Starts `argv` (argv[0] looked up in PATH; a remote worker's launcher, such as srun) with
// `environment` ("NAME=value") added to the host's, stdin from /dev/null (a launcher such as
// ssh would otherwise read the host's), stdout and stderr the host's, and no other inherited
// descriptor; it leads a process group of its own, as a worker does. The result has no
// channel. Throws std::system_error.
SpawnedProcess spawnCommand(const std::vector<std::string>& argv,
                            const std::vector<std::string>& environment);

// The descriptor a worker finds its channel on.
inline constexpr int WORKER_CHANNEL_FD = 3;

}  // namespace plugpool::detail
