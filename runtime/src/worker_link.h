// worker_link.h — one worker, however it was started and is reached. Internal.
//
// The dispatcher (core.h) sees a worker only through this header. A local worker (posix_spawn
// or fork, a socketpair, memfd regions, a pidfd: local_link.h) and a remote one (a launcher
// process such as srun or ssh and a connection the worker opened back) differ only in the
// classes that implement it; nothing above this header asks which kind it has.
//
// A link carries one conversation (host_session.h does its protocol, without I/O) and reports
// what happens to LinkEvents: each message the worker sends, once checked; that its channel
// closed; and, last, how it ended, already translated into a signal, an exit status and words
// for a human. A worker that breaks the protocol is stopped by its link, which says why in the
// end it reports.
//
// Threads: dispatcher thread only. Lifetime: a link reports ended() exactly once, after every
// reply the worker sent before it died; after that it holds no process and no descriptor.
// Destroying a link that has not ended kills its worker and waits for it.
#pragma once

#include <poll.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "decode.h"
#include "host_session.h"
#include "reply_log.h"

namespace plugpool::detail {

using Clock = std::chrono::steady_clock;

// How to stop a worker: a meaning, which each kind of link carries out its own way.
enum class Stop {
  CLOSE,      // end the channel: the worker exits once it reads the end (after its running chunk)
  TERMINATE,  // stop now, politely (SIGTERM), and end the channel
  KILL,       // stop now, no grace (SIGKILL), and end the channel
};

// How a worker ended.
struct WorkerEnd {
  int signal = 0;       // the terminating signal; 0 if none or unknown
  int exitStatus = -1;  // its exit status; -1 if it did not exit or it is unknown
  std::string how;      // "was killed by signal 11 (SIGSEGV)", "exited with status 3"
  // Non-empty: it broke the protocol, in words for a human ("sent Hello twice").
  std::string violation;
  // What it reported as it died of a fatal signal (none if it exited).
  std::optional<CrashContent> crash;
  // The item of its running chunk the crash report named (HostSession::Incoming::crashItem).
  std::optional<std::uint32_t> crashItem;
  // Non-zero: a reply of this many bytes could not be allocated while it held unanswered
  // work; it was killed for that.
  std::uint64_t unallocatableBytes = 0;
  // What its reply log held of the chunk it was running: the items it had finished, and the
  // one it was running. None for a worker without a log (a remote one), a chunk run as one
  // call, or a worker that broke the protocol.
  std::optional<PartialReply> partial;
};

class WorkerLink;

// Implemented by the dispatcher.
class LinkEvents {
 public:
  // A message from the worker, checked by its HostSession: Hello, the initializer's answer, or
  // a chunk's reply (replies come in the order the runs were sent).
  virtual void received(WorkerLink& link, HostSession::Incoming&& message) = 0;
  // The channel ended without the pool asking (the worker closed it, broke the protocol, a
  // reply could not be taken): nothing more can be sent; ended() follows.
  virtual void closed(WorkerLink& link) = 0;
  // The last event of this link.
  virtual void ended(WorkerLink& link, WorkerEnd end) = 0;
  // A message went through shared memory (Stats::sharedMessages).
  virtual void sharedMessage() = 0;
  // A connection that claimed to be this remote worker was refused, for the reason given
  // (Stats::connectionsRefused); the link goes on waiting for its worker.
  virtual void refused(const std::string& why) = 0;

 protected:
  ~LinkEvents() = default;
};

class WorkerLink {
 public:
  virtual ~WorkerLink() = default;

  // What errors name the worker by: its process id (for a remote worker, its launcher's).
  virtual int pid() const = 0;
  // Which item of its running chunk it is running, and since when, if it says (a local
  // worker with a reply log, for a chunk sent with Run.itemStartTimes: reply_log.h).
  virtual std::optional<ItemProgress> progress() const { return std::nullopt; }
  // Whether it has a reply log: progress() may say, and its end says what it had finished.
  virtual bool logsReplies() const { return false; }
  // Takes the replies waiting in its reply log's ring (reply_log.h), reporting them as
  // messages from the channel are; whether it took any. Called each dispatcher round.
  virtual bool takeLogged() { return false; }
  // Whether replies wait there.
  virtual bool hasLogged() const { return false; }
  // The dispatcher is about to wait: the worker is to wake it when it logs a reply. False if
  // one is waiting already (then it must not wait). awake() when the wait is over.
  virtual bool mayWait() { return true; }
  virtual void awake() {}
  // Queues a Run of `items` items (numbered by the session: kind says whether it is the
  // initializer's or a chunk); flush() writes it. Dropped if the channel has ended.
  virtual void send(std::shared_ptr<capnp::MessageBuilder> run, unsigned items,
                    HostSession::RunKind kind) = 0;
  // Writes what the channel takes now; never blocks. Whether anything is left queued.
  virtual bool flush() = 0;
  // Whether runs can still be sent.
  virtual bool open() const = 0;
  // Idempotent, and a stronger `how` overrides a weaker one; ended() follows. A non-empty
  // `violation` says the worker broke the protocol (and is reported in its end).
  virtual void stop(Stop how, const std::string& violation = {}) = 0;

  // Polling, one round at a time: watch() appends the descriptors to wait on and says how
  // many; after the wait, onEvents() gets the same entries back with their revents (and may
  // report any event, ended() included). Timers: nextTimer() is when onTime() must run next
  // (max() for none).
  virtual std::size_t watch(std::vector<pollfd>& fds) const = 0;
  virtual void onEvents(const pollfd* fds) = 0;
  virtual Clock::time_point nextTimer() const = 0;
  virtual void onTime(Clock::time_point now) = 0;
};

// Starts links of one kind.
class Transport {
 public:
  virtual ~Transport() = default;
  // Starts one worker and sends it the session's Setup; returns at once, and the conversation
  // goes on in the link's onEvents(). Throws StartError if no worker could be started.
  virtual std::unique_ptr<WorkerLink> start(HostSession session, LinkEvents& events) = 0;
};

}  // namespace plugpool::detail
