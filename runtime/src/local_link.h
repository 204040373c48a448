// local_link.h — workers on this machine: a process started by a Launcher (posix_spawn or
// fork), reached through a socketpair, with two memfd regions for large segments. Internal.
//
// The one implementation of worker_link.h that makes system calls on local processes: it
// signals the worker's process group, watches its pidfd, reaps it with waitpid on its own pid
// only, and maps the regions. Everything it reads goes through the link's HostSession.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "launcher.h"
#include "worker_link.h"

namespace plugpool::detail {

struct LocalConfig {
  std::chrono::milliseconds stopTimeout;        // a stream cut inside a message: wait this long
  std::chrono::milliseconds idleMemoryTimeout;  // then give back the regions' pages
  std::size_t maxMessageBytes;                  // the regions hold at most this much each
};

// `executable` is what `launcher` starts ("" for the fork launcher), named in start errors.
std::unique_ptr<Transport> newLocalTransport(std::unique_ptr<Launcher> launcher,
                                             std::string executable, LocalConfig config);

}  // namespace plugpool::detail
