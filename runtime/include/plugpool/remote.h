// plugpool/remote.h — workers on other machines: Options::remote (pool.h).
//
// A remote pool is the same Pool: map, imap, submit, timeouts, crash handling and every
// counter behave as in a local one. Only how a worker is started and how it is reached
// differ. The cluster's engine starts each worker (an `srun` job step, or any launcher
// command: ssh, mpiexec, a container runtime); the worker, `plugpool-worker --connect
// HOST:PORT`, opens a TCP connection back to the host, proves with a secret that it is the
// worker the pool started, and from then on speaks the pool's protocol over it.
//
//   plugpool::Options options;
//   options.workers = 16;
//   options.plugins = {"examples"};
//   options.remote = plugpool::Slurm{};                      // inside salloc or sbatch
//   // options.remote = plugpool::LaunchCommand{{"ssh", "node7"}};
//   plugpool::Pool pool(options);
//
// The launcher process (srun, ssh, ...) stands for its worker: errors name its pid, its exit
// is the worker's end (an exit status of 128 + N, which launchers use for a task killed by
// signal N, is reported as that signal), and stopping the worker signals it (SIGTERM, then
// SIGKILL after Options::stopTimeout) and closes the connection. A worker whose connection
// ends exits by itself, also in the middle of a task, so nothing is left running on a node
// even where a launcher does not pass signals on. A dead node or a cut link is seen by the
// connection (TCP keepalive and TCP_USER_TIMEOUT, Liveness), within about 4 s by default.
//
// Plugins and the worker executable are found on the nodes by the paths the host resolved
// (a shared file system); a node that lacks a plugin fails the pool's start with PluginError.
// Shared memory is local only: large payloads, SharedBytes included, go through the
// connection (SharedBytes still works, with a copy).
//
// Security: meant for a trusted cluster network. Each worker gets a fresh 256-bit secret in
// its environment (PLUGPOOL_WORKER_SECRET, never on its command line); the host refuses every
// connection without it (Stats::connectionsRefused). Nothing is encrypted.
#pragma once

#include <chrono>
#include <string>
#include <variant>
#include <vector>

#include "plugpool/export.h"

namespace plugpool {

// Each worker is one Slurm job step, `srun --exact -n1 -N1 --cpus-per-task=C ARGS...
// plugpool-worker --connect HOST:PORT`, inside the allocation the host runs in (salloc or
// sbatch): Slurm places, starts, signals and cleans up the steps. Without an allocation
// (no SLURM_JOB_ID) the Pool constructor throws StartError.
struct Slurm {
  unsigned cpusPerWorker = 1;          // --cpus-per-task
  std::vector<std::string> extraArgs;  // more srun options, e.g. {"--mem-per-cpu=2G"}
  std::string srun = "srun";           // the srun to run (looked up in PATH)
};

// Each worker is started by a command prefix followed by the worker's command line:
// LaunchCommand{{"ssh", "node7"}}, LaunchCommand{{"mpiexec", "-n", "1", "--host", "node7"}}, or
// LaunchCommand{{"env"}} (this machine: tests). LaunchCommand::spread({{"ssh", "node7"},
// {"ssh", "node8"}}) gives each new worker the prefix running the fewest workers.
// The prefix's program must pass PLUGPOOL_WORKER_SECRET from its environment to the worker
// (srun and env do; for ssh, SendEnv/AcceptEnv; for Open MPI's mpiexec, -x).
struct PLUGPOOL_API LaunchCommand {
  LaunchCommand(std::vector<std::string> prefix);  // NOLINT: implicit on purpose
  static LaunchCommand spread(std::vector<std::vector<std::string>> prefixes);
  std::vector<std::vector<std::string>> prefixes;  // one or more, none empty

 private:
  LaunchCommand() = default;
};

// How soon a silent connection counts as lost, on both ends (TCP keepalive and
// TCP_USER_TIMEOUT). The defaults see a dead node or a cut link within about 4 s; a worker
// busy in a long task still answers (the kernel does), so they need no heartbeat.
struct Liveness {
  std::chrono::seconds idle{1};                  // TCP_KEEPIDLE: silence before the first probe
  std::chrono::seconds interval{1};              // TCP_KEEPINTVL: between probes
  int probes = 3;                                // TCP_KEEPCNT: unanswered probes before it is lost
  std::chrono::milliseconds userTimeout{4'000};  // TCP_USER_TIMEOUT: unacknowledged data
};

struct Remote {
  Remote(Slurm slurm) : launcher(std::move(slurm)) {}              // NOLINT: implicit on purpose
  Remote(LaunchCommand command) : launcher(std::move(command)) {}  // NOLINT
  std::variant<Slurm, LaunchCommand> launcher;
  // The host address workers connect back to, and the one the host listens on (a name or a
  // numeric IPv4/IPv6 address; each worker gets a port of its own). Empty: the address the
  // host's own name (gethostname) resolves to. Set it on a host with several networks.
  std::string address;
  Liveness liveness;
};

}  // namespace plugpool
