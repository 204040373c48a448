// worker.h — the worker's side of the conversation (wire.capnp), as a library function.
// Internal.
//
// Both ways of starting a worker end here: plugpool-worker's main() (StartMethod::SPAWN)
// and the child of the fork launcher (StartMethod::FORK). The caller prepares the process
// (descriptors, signals, death signal) before calling serveWorker; serveWorker only talks.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "big_buffers.h"
#include "fd.h"
#include "plugin_loader.h"
#include "plugpool/manifest.h"
#include "reply_log.h"
#include "shared_memory.h"
#include "wire.capnp.h"

namespace plugpool::detail {

struct ItemFailureRecord {
  unsigned index;
  std::string type, message;
};

// The worker's side of the conversation without the channel: one host message in, the reply
// out. serveWorker reads and writes; the fuzz target (tests/fuzz/) feeds messages directly.
// Not thread-safe.
class WorkerSession {
 public:
  // Handles Setup (decode.h's decodeSetup): applies the resource limits, loads every plugin
  // and returns Hello. After a load error Hello carries it and loaded() is false. Throws
  // ProtocolViolation for anything but a valid Setup. `descriptors` came with Setup: if it
  // asks for shared memory and they are its two regions, Hello says the worker uses them.
  std::unique_ptr<capnp::MallocMessageBuilder> setUp(capnp::MessageReader& message,
                                                     std::vector<UniqueFd> descriptors = {});
  bool loaded() const { return loaded_; }

  // The shared regions (shared_memory.h) agreed at setUp: the host's, which Runs may place
  // segments in, and this worker's own, which replies are built in. Null without.
  const std::shared_ptr<SharedRegion>& inbound() const { return inbound_; }
  SharedRegion* outbound() const { return outbound_.get(); }

  // The largest message the host accepts and sends, in words, as Setup said.
  std::uint64_t maxWords() const { return maxWords_; }

  // Handles one Run (decode.h's decodeRun): calls the task on every item and returns the
  // ChunkDone, its large segment built in outbound() when that is free. Tasks report their
  // failures per item; throws ProtocolViolation (or kj::Exception from a lazily checked
  // pointer) for a malformed message.
  std::unique_ptr<BigSegmentBuilder> run(capnp::MessageReader& message);
  // Appends the reply run() returned to the reply log's ring (reply_log.h) if it can go
  // there (no segment in the outbound region, room in the ring); false: it takes the channel.
  bool logReply(BigSegmentBuilder& reply);
  // After logReply: whether the host may be asleep, so that the caller wakes it (`logged`).
  bool hostSleeping();
  // The reply run() returned has been logged or written to the channel: the reply log may
  // take the next.
  void replySent();

  // The loaded plugins' manifests, in Setup's order.
  std::vector<PluginInfo> plugins() const;

 private:
  struct Plugin {
    LoadedPlugin loaded;
    PluginInfo info;
  };
  void logErrors(wire::ChunkDone::Builder done);
  static void recordFailure(void* context, const char* type, std::size_t typeSize,
                            const char* message, std::size_t messageSize) noexcept;

  std::uint64_t maxWords_ = 0;
  bool loaded_ = false;
  std::shared_ptr<SharedRegion> inbound_, outbound_;
  std::vector<Plugin> plugins_;
  std::vector<unsigned> taskCounts_;
  std::vector<ItemFailureRecord> failures_;
  unsigned current_ = 0;
  // The reply log, if the host passed one: run() builds replies in it, item by item.
  std::unique_ptr<ReplyLogWriter> log_;
  bool logged_ = false;        // the last reply was built in it
  std::size_t logUsed_ = 0;    // words of it that reply used
  unsigned loggedErrors_ = 0;  // failures_ written to the logged reply's errors list
};

// Exit statuses of a worker process (besides 0, "the host closed the channel").
inline constexpr int EXIT_LOAD_FAILED = 1;   // a plugin could not be loaded (after Hello said so)
inline constexpr int EXIT_USAGE = 2;         // started by hand, or with bad arguments
inline constexpr int EXIT_PROTOCOL = 70;     // the host sent something malformed
inline constexpr int EXIT_CHILD_SETUP = 71;  // a fork-started worker could not set up its fds
inline constexpr int EXIT_NO_HOST = 72;      // a remote worker could not reach its host, or lost it

// Runs the whole conversation on the connected, blocking stream `fd`: reads Setup, loads the
// plugins and answers Hello, then runs each Run and answers with a ChunkDone, until the host
// closes its end. Returns the status the process should exit with:
//   0                 the host closed the channel, also while we were writing (EPIPE,
//                     ECONNRESET), or before sending Setup;
//   EXIT_LOAD_FAILED  a plugin could not be used; Hello carried the reason;
//   EXIT_PROTOCOL     a malformed or unexpected message, or another channel error; a line
//                     saying why has been written to stderr.
// Every std::exception is turned into one of these statuses; nothing else is expected to be
// thrown (tasks report failures through their ErrorSink) and would propagate. Plugins stay
// loaded; `fd` is not closed. Channel writes use MSG_NOSIGNAL, so a vanished host cannot
// raise SIGPIPE here. A task that crashes ends the process, as it must: the host reports it
// as WorkerCrashed.
int serveWorker(int fd);

// The death signal, the part of the process setup both kinds of worker share: the worker dies
// with its host, and so does every process its tasks started and left in its process group,
// which the worker leads (launcher.h). PR_SET_PDEATHSIG cannot do that alone: it does not
// pass to children, and its signal reaches only the worker. So the worker's death signal is
// HOST_GONE_SIGNAL, caught by a handler that SIGKILLs the worker's whole group, the worker
// included. It fires however the host ends (SIGKILL too: the kernel sends it), also while a
// task is blocked; only a task that blocks, ignores or takes over HOST_GONE_SIGNAL defeats
// it. A worker that does not lead its own group kills only itself.
//
// Returns false if host `hostPid` (<= 0: not checked) is no longer our parent: it died before
// the death signal was set, and the caller must exit at once. Plain system calls only: the
// fork launcher's child calls it (launcher_fork.cc).
bool dieWithHost(pid_t hostPid) noexcept;

// The other half, for a worker about to exit (after serveWorker, whatever it returned): a
// host that dies closes its end of the channel before the kernel sends the death signal, so
// an idle worker may read the end of its stream first and exit before the signal arrives. So
// if host `hostPid` is gone or exiting (its PF_EXITING flag), SIGKILLs the worker's group
// (the worker included) here. A host that is alive and closed the channel reaps the worker
// and SIGKILLs its group itself (Core::reap). Does nothing unless the worker leads its group.
void endWithHost(pid_t hostPid) noexcept;

// A real-time signal nothing else in a worker uses; its default action ends the process too.
inline int hostGoneSignal() {
  return SIGRTMIN + 3;
}

}  // namespace plugpool::detail
