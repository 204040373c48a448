// local_link.h — workers on this machine: a process started by a Launcher (posix_spawn or
// fork), reached through a socketpair, with two memfd regions for large segments
// (process_link.h does the rest). Internal.
#pragma once

#include <memory>
#include <string>

#include "launcher.h"
#include "process_link.h"
#include "worker_link.h"

namespace plugpool::detail {

// `executable` is what `launcher` starts ("" for the fork launcher), named in start errors.
std::unique_ptr<Transport> newLocalTransport(std::unique_ptr<Launcher> launcher,
                                             std::string executable, LinkConfig config);

}  // namespace plugpool::detail
