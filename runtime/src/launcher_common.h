// launcher_common.h — what the launchers share: the channel's socketpair and taking charge
// of a started child. Internal; used by launcher_posix.cc and launcher_fork.cc only.
#pragma once

#include <sys/types.h>

#include <string>

#include "fd.h"
#include "launcher.h"

namespace plugpool::detail {

[[noreturn]] void throwSystemError(int error, const std::string& what);

// The two ends of a new worker channel: a connected AF_UNIX SOCK_STREAM socketpair, both
// ends close-on-exec, blocking and on 3 or above (aboveStdio). Throws std::system_error.
struct ChannelPair {
  UniqueFd host;
  UniqueFd worker;
};
ChannelPair newChannelPair();

// Completes the start of worker `pid`, a child of this process that nobody has reaped yet:
// opens its pidfd and makes `hostEnd` (if any) non-blocking. If the pidfd cannot be opened, kills and
// reaps the child, then throws std::system_error: the caller is left with nothing to clean up.
SpawnedProcess adoptWorker(pid_t pid, UniqueFd hostEnd);

}  // namespace plugpool::detail
