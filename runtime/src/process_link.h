// process_link.h — the worker link both transports use: a process the pool started and a
// stream channel to the worker. Internal.
//
// The one implementation of worker_link.h that makes system calls on processes: it signals
// the process's group, watches its pidfd, reaps it with waitpid on its own pid only, and, for
// a local worker, maps the shared regions. Everything it reads goes through its HostSession.
//
// The two transports differ only in what they hand it:
//   local (local_link.h)   the worker itself, with its end of a socketpair, and regions;
//   remote (remote_link.h) the worker's launcher (srun, ssh, ...) and a Rendezvous that
//                          yields the channel once the worker has connected back; the
//                          launcher's exit is the worker's end (LinkConfig::launcher).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>

#include "launcher.h"
#include "rendezvous.h"
#include "worker_link.h"

namespace plugpool::detail {

struct LinkConfig {
  // Grace for a process whose channel ended: then it is killed (stream cut inside a message:
  // a violation; a launcher still running: the worker is lost).
  std::chrono::milliseconds stopTimeout;
  std::chrono::milliseconds idleMemoryTimeout;  // then the regions give their pages back
  std::size_t maxMessageBytes;                  // the regions hold at most this much each
  // The process is a remote worker's launcher, not the worker: it may outlive the channel
  // briefly, and an exit status of 128 + N says its worker was killed by signal N.
  bool launcher = false;
};

// Starts the conversation: queues Setup (offering shared regions if `rendezvous` is null
// and they can be made). `process.channel` is the channel, or empty until `rendezvous`
// yields it. `placement` is held as long as the link lives (a transport counts links by it;
// may be null). `config` must outlive the link.
std::unique_ptr<WorkerLink> newProcessLink(SpawnedProcess process, HostSession session,
                                           LinkEvents& events, const LinkConfig& config,
                                           std::unique_ptr<Rendezvous> rendezvous = nullptr,
                                           std::shared_ptr<const void> placement = nullptr);

}  // namespace plugpool::detail
