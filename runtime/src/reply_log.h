// reply_log.h — a worker's replies, kept where its host can read them after it died. Internal.
//
// A local worker builds each chunk's reply (ChunkDone) in its reply log, a SharedRegion only
// it writes, and publishes in the log's header how far it got: which run, which item is
// running, how many have finished (wire.capnp, "The reply log", is the specification). The
// reply still goes to the host through the channel when the chunk is done. What the log adds
// is what is left when the worker dies part-way through a chunk: the host reads the items it
// had finished from there, so that they keep their results, and knows which item was
// running, so that only that item fails. While the worker lives the host reads only the
// header, to time each item.
//
// Threads: a writer belongs to the worker's task thread; readPartial and peek run on the
// host's dispatcher thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>

#include <capnp/common.h>
#include <kj/common.h>

#include "plugpool/detail/call.h"
#include "shared_memory.h"

namespace plugpool::detail {

// The log's data: the replies of the chunks most pools send. A reply that needs more goes on
// in ordinary memory, and a large result (SHARED_SEGMENT_BYTES or more) in the worker's
// region for large segments, as without a log, where the host reads it without a copy; the
// items whose results are not wholly in the log are run again if the worker dies.
// The data's second half, as much again, is the ring of finished replies (below).
inline constexpr std::size_t REPLY_LOG_BYTES = 2 * SHARED_SEGMENT_BYTES;
// A finished reply larger than this goes through the channel, not the ring.
inline constexpr std::size_t RING_MAX_FRAME_WORDS = 8192;

// The header's words (wire.capnp).
enum ReplyLogWord : std::size_t {
  LOG_RUN = 1,
  LOG_ITEMS = 2,
  LOG_RUNNING = 3,  // a 32-bit word, in the low half (a plugin's chunk entry writes it)
  LOG_ERRORS = 4,
  LOG_STARTED = 5,
  LOG_WORDS = 6,
  LOG_HEAD = 7,      // words ever appended to the ring (the worker's)
  LOG_TAIL = 8,      // words ever taken from it (the host's)
  LOG_SLEEPING = 9,  // 1: the host may be asleep; the worker that appends wakes it
  LOG_OPAQUE = 10,   // 1: `running` is not kept for this run (a chunk entry without it)
};
inline constexpr std::uint32_t LOG_ITEM_UNKNOWN = 0xffffffff;

// The worker's side.
class ReplyLogWriter {
 public:
  // Maps all of `log` (a region adopted writable), so that segments in it never move.
  // Throws std::bad_alloc if it cannot be mapped.
  explicit ReplyLogWriter(std::shared_ptr<SharedRegion> log);

  // Run `run` of `items` items starts: returns the zeroed words its reply's first segment is
  // to be built in. `timed`: running() publishes each item's start time.
  // `opaque`: the run's running item is not written here (a plugin's chunk entry without
  // abi.h convention 11), so a death costs its whole chunk.
  kj::ArrayPtr<capnp::word> begin(std::uint64_t run, unsigned items, bool timed,
                                  bool opaque = false);
  // Item `index` starts: every item before it has run, its result wholly written. `items`
  // once all have run.
  void running(unsigned index) {
    if (timed_) publish(LOG_STARTED, monotonicNs());
    runningWord().store(index, std::memory_order_release);
  }
  // The word running() writes, for a plugin's chunk entry to write instead (abi.h
  // convention 11).
  volatile std::uint32_t* runningAddress() { return log_->headerHalfWord(LOG_RUNNING); }
  // The first `count` elements of the reply's errors list are written.
  void errors(unsigned count) { publish(LOG_ERRORS, count); }
  // The reply has been sent: nothing is being built, and the `usedWords` words the message
  // took of the segment are zeroed for the next one.
  void end(std::size_t usedWords);

  // Appends `reply`'s frame (wire.capnp's stream framing, all its segments inline) to the
  // ring of finished replies, where the host takes it without a system call; false (nothing
  // written) if it is larger than RING_MAX_FRAME_WORDS or the ring has no room for it now.
  bool append(capnp::MessageBuilder& reply);
  // Whether the host may be asleep (it said so, and nobody has woken it since): then the
  // caller wakes it through the channel. Clears the flag: one wake-up per sleep.
  bool hostSleeping();

 private:
  void publish(std::size_t word, std::uint64_t value) {
    log_->headerWord(word).store(value, std::memory_order_release);
  }
  std::atomic_ref<std::uint32_t> runningWord() {
    return std::atomic_ref<std::uint32_t>(*log_->headerHalfWord(LOG_RUNNING));
  }
  static std::uint64_t monotonicNs();

  std::shared_ptr<SharedRegion> log_;
  kj::ArrayPtr<capnp::word> data_;  // the first half: where a reply is built
  kj::ArrayPtr<capnp::word> ring_;  // the second half
  bool timed_ = false;
};

// The host's side of the ring: whether it holds a reply, and the next one, copied out (its
// room is free again). Throws ProtocolViolation for a record that breaks the format or is
// larger than `maxWords`. The host says it may sleep with sleeping(true) before it waits,
// then checks the ring once more (an eventcount), and sleeping(false) when it wakes.
bool ringHasReplies(const SharedRegion& log);
std::optional<kj::Array<capnp::word>> takeRingReply(SharedRegion& log, std::uint64_t maxWords);
void sleeping(SharedRegion& log, bool asleep);

// What a dead worker's log holds of run `run` (of `items` items): the results of the items it
// had finished (outcome.results, its first `finished` elements; outcome.errors, those of them
// that failed) and the item it was running. The items before the running one have finished;
// those whose results cannot be read wholly from the log (they outgrew it) and the ones after
// them count as not finished. `crashItem`: the running item its crash report named, for a
// plugin that writes it only there (abi.h convention 10). Null if the log holds nothing of
// that run, or nothing that passes the checks of a reply from the channel (a worker that had
// not begun it yet, whose log names no run or an earlier one, gives one with started false)
// (decodePartialChunkDone). The outcome's keepAlive holds the log. Never throws.
struct PartialReply {
  ChunkOutcome outcome;
  unsigned finished = 0;
  unsigned running = 0;  // >= finished; `items` if it had run them all
  // False: the worker had not begun the run (it died between runs): none of it ran.
  bool started = true;
};
std::optional<PartialReply> readPartial(const std::shared_ptr<SharedRegion>& log, std::uint64_t run,
                                        unsigned items, std::uint64_t maxWords,
                                        std::optional<std::uint32_t> crashItem) noexcept;

// Which item of run `run` a live worker is running, and since when if it publishes that.
struct ItemProgress {
  unsigned item = 0;
  std::optional<std::chrono::steady_clock::time_point> started;
};
std::optional<ItemProgress> peek(const SharedRegion& log, std::uint64_t run, unsigned items);

}  // namespace plugpool::detail
