// remote_link.h — workers on other machines (plugpool/remote.h): each started by a launcher
// command (srun, ssh, ...) and reached through a TCP connection it opens back to the host
// (tcp.h, rendezvous.h); process_link.h does the rest, as for a local worker. Internal.
#pragma once

#include <memory>
#include <string>

#include "plugpool/remote.h"
#include "process_link.h"
#include "worker_link.h"

namespace plugpool::detail {

// `workerExecutable` is the worker's path, the same on every node (a shared file system).
// Throws StartError at once if the launcher cannot work here (Slurm without an allocation)
// or the host cannot listen on the address.
std::unique_ptr<Transport> newRemoteTransport(const Remote& remote, std::string workerExecutable,
                                              LinkConfig config);

// The command line that starts one worker: `prefix`, then the worker's own.
std::vector<std::string> workerCommand(const std::vector<std::string>& prefix,
                                       const std::string& workerExecutable,
                                       const std::string& endpoint, const Liveness& liveness);

// The prefix that makes a worker one Slurm job step.
std::vector<std::string> slurmPrefix(const Slurm& slurm);

}  // namespace plugpool::detail
