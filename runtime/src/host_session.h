// host_session.h — the host's half of one worker conversation (wire.capnp), without I/O.
// Internal.
//
// The mirror of worker.h's WorkerSession: it builds the Setup, numbers the runs the host sends
// (the initializer's, then chunks), and checks every message the worker sends against what was
// sent and when: Hello first and once, each ChunkDone answering the oldest unanswered run, a
// crash report at most once. A message that breaks those rules, or decode.h's checks, throws
// ProtocolViolation saying for a human what the peer did wrong. Links (worker_link.h) feed it
// the frames they read; tests/fuzz/fuzz_host.cc drives it directly.
//
// Not thread-safe: it belongs to its link.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "decode.h"
#include "framing.h"
#include "plugpool/detail/call.h"
#include "plugpool/pool.h"

namespace plugpool::detail {

// What every conversation of a pool starts from.
struct SessionConfig {
  std::vector<std::string> pluginPaths;
  std::uint64_t maxWords = 0;  // Options::maxMessageBytes, in words
  WorkerLimits limits;
};

class HostSession {
 public:
  explicit HostSession(std::shared_ptr<const SessionConfig> config);

  // The conversation's first message. With `offerSharedMemory`, it says that two regions are
  // passed with it (the link passes them), and with `offerReplyLog` a third, the reply log;
  // the worker's Hello says whether it mapped them.
  std::unique_ptr<capnp::MallocMessageBuilder> setup(bool offerSharedMemory,
                                                     bool offerReplyLog = false);

  enum class RunKind { INITIALIZER, CHUNK };
  // Sets `run`'s id; the worker must answer runs in the order they were numbered. The
  // initializer's run may be numbered only after Hello, and only before any chunk.
  void number(capnp::MessageBuilder& run, unsigned items, RunKind kind);

  struct Incoming {
    enum Kind {
      HELLO,        // `hello`: the manifests, or why a plugin could not be loaded
      INITIALIZED,  // `outcome`: the initializer's answer (its errors say if it failed)
      REPLY,        // `outcome`: a chunk's results; keepAlive is the message
      CRASH,        // `crash`: what a worker dying of a fatal signal said
      WAKE,         // nothing: replies wait in the reply log's ring (reply_log.h)
    } kind;
    HelloContent hello;
    ChunkOutcome outcome;
    CrashContent crash;
    // CRASH: the index, within the chunk the worker was running (the oldest unanswered
    // one), of the item it named; empty if it named no item of that chunk.
    std::optional<std::uint32_t> crashItem;
  };
  // One message from the worker. Throws ProtocolViolation (Cap'n Proto's exceptions for a
  // malformed message included).
  Incoming receive(std::shared_ptr<Received> message);

  // The largest message the worker may send next: FIRST_MESSAGE_MAX_WORDS until its Hello,
  // then maxMessageBytes.
  std::uint64_t maxWords() const;
  bool helloReceived() const { return hello_; }
  // The worker mapped the regions offered with Setup.
  bool sharedMemory() const { return shared_; }
  // The worker builds its replies in the reply log offered with Setup.
  bool replyLog() const { return replyLog_; }
  // The oldest unanswered run, if it is a chunk: the one the worker is running.
  struct Running {
    std::uint64_t id;
    unsigned items;
  };
  std::optional<Running> running() const;
  // The id the next reply must answer (the oldest unanswered run's); 0 if none.
  std::uint64_t nextAnswer() const { return sent_.empty() ? 0 : sent_.front().id; }
  // Runs sent and not yet answered (the initializer's included).
  std::size_t unanswered() const { return sent_.size(); }

 private:
  struct Sent {
    std::uint64_t id;
    unsigned items;
    RunKind kind;
  };
  Incoming receiveChunkDone(wire::ChunkDone::Reader done, std::shared_ptr<const void> keep);

  std::shared_ptr<const SessionConfig> config_;
  bool offered_ = false;  // Setup offered shared memory
  bool logOffered_ = false;
  bool replyLog_ = false;
  bool hello_ = false;
  bool shared_ = false;
  bool crashed_ = false;  // a Crash came
  std::uint64_t nextId_ = 1;
  std::deque<Sent> sent_;
};

}  // namespace plugpool::detail
