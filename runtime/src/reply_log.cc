#include "reply_log.h"

#include <time.h>

#include <algorithm>
#include <cstring>
#include <exception>

#include <capnp/message.h>
#include <kj/exception.h>

#include "decode.h"
#include "framing.h"
#include "wire.capnp.h"

namespace plugpool::detail {

ReplyLogWriter::ReplyLogWriter(std::shared_ptr<SharedRegion> log) : log_(std::move(log)) {
  data_ = log_->words(0, log_->capacityWords());
}

kj::ArrayPtr<capnp::word> ReplyLogWriter::begin(std::uint64_t run, unsigned items, bool timed) {
  timed_ = timed;
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
    if (run == 0 || read(*log, LOG_RUN) != run || read(*log, LOG_ITEMS) != items) {
      return std::nullopt;
    }
    std::uint64_t running = readRunning(*log);
    if (running == LOG_ITEM_UNKNOWN && crashItem) running = *crashItem;
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
