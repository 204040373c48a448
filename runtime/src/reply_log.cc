#include "reply_log.h"

#include <time.h>

#include <algorithm>
#include <cstring>
#include <exception>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include "decode.h"
#include "framing.h"
#include "wire.capnp.h"

namespace plugpool::detail {

namespace {

constexpr std::uint64_t RING_WRAP = ~std::uint64_t{0};  // a record that says: go on at the start

// The ring: the data's second half.
kj::ArrayPtr<capnp::word> ringOf(SharedRegion& log) {
  const std::size_t half = log.capacityWords() / 2;
  return log.words(half, log.capacityWords() - half);
}

}  // namespace

ReplyLogWriter::ReplyLogWriter(std::shared_ptr<SharedRegion> log) : log_(std::move(log)) {
  const std::size_t half = log_->capacityWords() / 2;
  auto all = log_->words(0, log_->capacityWords());
  data_ = all.slice(0, half);
  ring_ = all.slice(half, all.size());
}

bool ReplyLogWriter::append(capnp::MessageBuilder& reply) {
  const std::size_t words = capnp::computeSerializedSizeInWords(reply);
  const std::size_t size = ring_.size();
  if (words > RING_MAX_FRAME_WORDS || words + 2 > size) return false;
  const std::uint64_t head = log_->headerWord(LOG_HEAD).load(std::memory_order_relaxed);
  const std::uint64_t tail = log_->headerWord(LOG_TAIL).load(std::memory_order_acquire);
  std::size_t at = head % size;
  std::uint64_t skip = 0;  // words left at the end, too few for the record
  if (at + 1 + words > size) {
    skip = size - at;
    at = 0;
  }
  if (head - tail + skip + 1 + words > size) return false;  // no room until the host takes some
  auto record = ring_.slice(at, at + 1 + words);
  kj::ArrayOutputStream out(record.slice(1, record.size()).asBytes());
  capnp::writeMessage(out, reply);
  if (skip != 0) {
    std::uint64_t wrap = RING_WRAP;
    std::memcpy(static_cast<void*>(&ring_[head % size]), &wrap, sizeof wrap);
  }
  const std::uint64_t length = words;
  std::memcpy(static_cast<void*>(record.begin()), &length, sizeof length);
  log_->headerWord(LOG_HEAD).store(head + skip + 1 + words, std::memory_order_seq_cst);
  return true;
}

bool ReplyLogWriter::hostSleeping() {
  auto flag = log_->headerWord(LOG_SLEEPING);
  if (flag.load(std::memory_order_seq_cst) == 0) return false;
  std::uint64_t asleep = 1;
  return flag.compare_exchange_strong(asleep, 0, std::memory_order_seq_cst);
}

bool ringHasReplies(const SharedRegion& log) {
  return log.headerWord(LOG_HEAD).load(std::memory_order_seq_cst) !=
         log.headerWord(LOG_TAIL).load(std::memory_order_relaxed);
}

std::optional<kj::Array<capnp::word>> takeRingReply(SharedRegion& log, std::uint64_t maxWords) {
  auto ring = ringOf(log);
  const std::size_t size = ring.size();
  const std::uint64_t head = log.headerWord(LOG_HEAD).load(std::memory_order_acquire);
  std::uint64_t tail = log.headerWord(LOG_TAIL).load(std::memory_order_relaxed);
  if (head - tail > size) throw ProtocolViolation("logged more replies than its ring holds");
  while (tail != head) {
    const std::size_t at = tail % size;
    std::uint64_t length = 0;
    std::memcpy(&length, &ring[at], sizeof length);
    if (length == RING_WRAP) {
      if (head - tail < size - at) throw ProtocolViolation("logged a wrap past its replies");
      tail += size - at;
      continue;
    }
    if (length == 0 || length > RING_MAX_FRAME_WORDS || length > maxWords + 1 + 256 ||
        at + 1 + length > size || 1 + length > head - tail) {
      throw ProtocolViolation("logged a reply record of a bad size");
    }
    auto frame = kj::heapArray<capnp::word>(length);
    std::memcpy(frame.begin(), &ring[at + 1], length * sizeof(capnp::word));
    log.headerWord(LOG_TAIL).store(tail + 1 + length, std::memory_order_release);
    return frame;
  }
  log.headerWord(LOG_TAIL).store(tail, std::memory_order_release);  // past a wrap record
  return std::nullopt;
}

void sleeping(SharedRegion& log, bool asleep) {
  log.headerWord(LOG_SLEEPING).store(asleep ? 1 : 0, std::memory_order_seq_cst);
}

kj::ArrayPtr<capnp::word> ReplyLogWriter::begin(std::uint64_t run, unsigned items, bool timed,
                                                bool opaque) {
  timed_ = timed;
  publish(LOG_OPAQUE, opaque ? 1 : 0);
  publish(LOG_RUN, 0);  // while the rest changes, the header names no run
  publish(LOG_ITEMS, items);
  runningWord().store(LOG_ITEM_UNKNOWN, std::memory_order_release);
  publish(LOG_ERRORS, 0);
  publish(LOG_STARTED, 0);
  publish(LOG_WORDS, data_.size());
  publish(LOG_RUN, run);
  return data_;
}

void ReplyLogWriter::end(std::size_t usedWords) {
  publish(LOG_RUN, 0);
  std::memset(data_.begin(), 0, std::min(usedWords, data_.size()) * sizeof(capnp::word));
}

std::uint64_t ReplyLogWriter::monotonicNs() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(now.tv_nsec);
}

namespace {

std::uint64_t read(const SharedRegion& log, std::size_t word) {
  return log.headerWord(word).load(std::memory_order_acquire);
}

std::uint32_t readRunning(const SharedRegion& log) {
  return std::atomic_ref<std::uint32_t>(*log.headerHalfWord(LOG_RUNNING))
      .load(std::memory_order_acquire);
}

// The log's message, read in place. Lives as long as the outcome read from it.
struct LoggedMessage {
  std::shared_ptr<SharedRegion> log;
  kj::ArrayPtr<const capnp::word> segment;
  std::unique_ptr<capnp::SegmentArrayMessageReader> reader;
};

// Whether all of `tuple`, what its pointers point at included, lies in the message's segment.
bool readable(capnp::AnyStruct::Reader tuple) {
  try {
    tuple.totalSize();  // follows every pointer, with the reader's checks
    return true;
  } catch (const kj::Exception&) {
    return false;
  }
}

}  // namespace

std::optional<PartialReply> readPartial(const std::shared_ptr<SharedRegion>& log, std::uint64_t run,
                                        unsigned items, std::uint64_t maxWords,
                                        std::optional<std::uint32_t> crashItem) noexcept {
  try {
    if (run == 0) return std::nullopt;
    const std::uint64_t logged = read(*log, LOG_RUN);
    if (logged < run) {  // runs begin in order: it had not begun this one
      PartialReply none;
      none.started = false;
      return none;
    }
    if (logged != run || read(*log, LOG_ITEMS) != items) return std::nullopt;
    std::uint64_t running = readRunning(*log);
    if (running == LOG_ITEM_UNKNOWN && crashItem) running = *crashItem;
    if (running == LOG_ITEM_UNKNOWN) {
      if (read(*log, LOG_OPAQUE) != 0) return std::nullopt;  // which item ran is not known
      PartialReply none;  // it had begun the run, but not its first item
      none.started = false;
      return none;
    }
    const std::uint64_t errors = read(*log, LOG_ERRORS);
    const std::uint64_t words = std::min<std::uint64_t>(read(*log, LOG_WORDS), maxWords);
    if (running > items || words == 0 || words > log->capacityWords()) return std::nullopt;
    auto message = std::make_shared<LoggedMessage>();
    message->log = log;
    message->segment = log->words(0, words);
    message->reader = std::make_unique<capnp::SegmentArrayMessageReader>(
        kj::arrayPtr(&message->segment, 1), readerOptions(words));
    auto root = message->reader->getRoot<wire::WorkerMessage>();
    if (!root.isChunkDone()) return std::nullopt;
    PartialReply partial;
    partial.running = static_cast<unsigned>(running);
    partial.outcome =
        decodePartialChunkDone(root.getChunkDone(), run, items, partial.running, errors);
    const auto& results = partial.outcome.results;
    std::size_t e = 0;  // failed items hold nothing to read
    const auto& failed = partial.outcome.errors;
    while (partial.finished < partial.running) {
      while (e < failed.size() && failed[e].index < partial.finished) ++e;
      const bool isError = e < failed.size() && failed[e].index == partial.finished;
      if (!isError && !readable(results[partial.finished])) break;
      ++partial.finished;
    }
    while (!partial.outcome.errors.empty() &&
           partial.outcome.errors.back().index >= partial.finished) {
      partial.outcome.errors.pop_back();
    }
    partial.outcome.keepAlive = std::move(message);
    return partial;
  } catch (...) {
    return std::nullopt;  // a log that does not hold up is no log: the whole chunk is lost
  }
}

std::optional<ItemProgress> peek(const SharedRegion& log, std::uint64_t run, unsigned items) {
  // The worker stores `started` before `running`: read `running` on both sides of `started`,
  // so that a start time never belongs to a later item than the one it is taken for (it would
  // time that item out early). Then the run: a new one stores 0 there before the rest.
  std::uint64_t item = 0, started = 0;
  for (int attempt = 0;; ++attempt) {
    item = readRunning(log);
    started = read(log, LOG_STARTED);
    if (readRunning(log) == item) break;
    if (attempt == 3) return std::nullopt;  // moving fast: nothing is near its timeout
  }
  if (run == 0 || read(log, LOG_RUN) != run || item >= items) return std::nullopt;
  ItemProgress progress;
  progress.item = static_cast<unsigned>(item);
  if (started != 0) {
    progress.started = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(started));
  }
  return progress;
}

}  // namespace plugpool::detail
