// plugpool/stream.h — lazy results of Pool::imap and Pool::imapUnordered.
//
// A Stream pulls its input only as its reader asks for results. It keeps at most `window`
// chunks outstanding (sent, or finished but not yet read), so memory stays flat however long
// the input is — an unbounded generator included — and a slow reader slows the intake instead
// of piling up results. (Python's Pool.imap reads its whole input at once, bpo-40110.)
//
// Ordered streams (imap) yield results in input order; unordered ones (imapUnordered) yield
// each chunk's results as soon as the chunk ends. next() throws a failed item's error
// (TaskError, WorkerCrashed, Cancelled, ...) for that item only; calling next() again goes on
// with the following item. A range-for loop stops at the first error it meets.
//
// An input that fails — its iterator's increment or dereference throws, or encoding an item
// does (a DynamicTask's Encode function included) — is finished, as a Python generator that
// raised is: the stream reads no more of it. The items read before the failing one are still
// sent (the last chunk shorter), their results come as usual, and after every one of them,
// in either kind of stream, next() throws the input's own exception, unchanged, with index()
// the failing item's input position. After it the stream ends (next() returns nullopt).
//
// Chunk size: fixed if given; else adaptive — the first chunks hold 1, 2, 4, ... items, then
// each chunk is sized to take about TARGET_CHUNK of worker time, measured from the chunks
// already run, and at most MAX_ADAPTIVE_CHUNK items. The cap bounds memory (window × cap
// items) for tasks so cheap that the time rule alone would make chunks huge; at 4096 items a
// chunk's messaging is already a small share of its cost.
//
// If the pool is closed (close(), shutdown(), terminate(), or its destructor) while a stream
// still has input to send, the stream goes on to the end of its input all the same: what was
// sent ends as usual (under terminate(), unfinished chunks with Cancelled), and every item not
// sent ends with PoolClosed at its place, so each input item still ends as exactly one result
// or one error. Those items are read past without being used (their iterators are advanced,
// not dereferenced) and never encoded or sent; an increment that throws there is an input
// error as above, after the PoolClosed of the items before it. Over an endless input the
// PoolClosed errors never end either: a reader that goes on after errors needs its own stop
// (a range-for loop stops at the first). A stream may outlive its Pool and be read to its end
// afterwards.
//
// Thread safety: a Stream belongs to one reader thread at a time. Lifetime: the input range is
// held as std::views::all holds it: a container passed as an lvalue must outlive the stream.
// Destroying a stream before its end drops its queued chunks; chunks already in a worker run
// to completion and their results are discarded.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "plugpool/detail/call.h"
#include "plugpool/errors.h"

namespace plugpool {

template <typename T>
class Stream {
 public:
  using value_type = T;

  // A chunk should take about this long in a worker: long enough that messaging costs well
  // under 1%, short enough to balance load and keep the first results prompt.
  static constexpr std::chrono::nanoseconds TARGET_CHUNK = std::chrono::milliseconds(10);
  static constexpr std::size_t MAX_ADAPTIVE_CHUNK = 4096;
  // An automatic window (no window given, none set in Options) over chunks of a fixed size
  // grows up to WINDOW_GROWTH times while chunks take under SHORT_CHUNK of worker time: such
  // chunks (a small chunksize over a cheap task) are mostly messaging, and only many of them
  // in flight keep the workers busy. Memory stays bounded: at most WINDOW_GROWTH times the
  // window. Adaptive chunks need no more: they grow instead.
  static constexpr std::chrono::nanoseconds SHORT_CHUNK = std::chrono::milliseconds(1);
  static constexpr std::size_t WINDOW_GROWTH = 16;

  Stream(Stream&&) noexcept = default;
  Stream& operator=(Stream&&) noexcept = default;
  ~Stream() {
    if (call_ && outstanding_ != 0) call_->discardQueued();
  }

  // The next result, or nullopt at the end of the input. Throws the item's error.
  std::optional<T> next() {
    for (;;) {
      if (pos_ < buffer_.size()) {
        Item& item = buffer_[pos_++];
        if (item.error) std::rethrow_exception(item.error);
        return std::move(item.value);
      }
      topUp();
      if (outstanding_ == 0) {
        if (closed_ && !inputDone_ && skipClosed()) continue;
        if (!inputError_) return std::nullopt;
        // Every item before the failing one has been delivered: now its error, once.
        buffer_.clear();
        buffer_.emplace_back(Item{std::nullopt, std::exchange(inputError_, nullptr)});
        bufferStart_ = inputErrorAt_;
        pos_ = 0;
        continue;
      }
      std::size_t index = ordered_ ? nextIndex_++ : *call_->takeAny();
      const detail::ChunkOutcome& outcome = *call_->wait(index);
      auto size = sizes_.find(index);
      unsigned items = size->second.items;
      bufferStart_ = size->second.first;
      sizes_.erase(size);
      buffer_.clear();
      pos_ = 0;
      decode_(outcome, items, buffer_);
      if (outcome.elapsedNs != 0 && items != 0) observe(outcome.elapsedNs / items);
      call_->release(index);
      --outstanding_;
    }
  }

  class iterator {
   public:
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(Stream* owner) : owner_(owner) { ++*this; }
    T& operator*() const { return *owner_->current_; }
    T* operator->() const { return &*owner_->current_; }
    iterator& operator++() {
      owner_->current_ = owner_->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return !owner_->current_; }

   private:
    Stream* owner_ = nullptr;
  };
  // One pass only: begin() starts reading.
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

  // The input position (0 for the first element of the input) of the item the last next()
  // returned or threw; for unordered streams, which input a result or error belongs to.
  // Meaningless before the first next().
  std::uint64_t index() const { return bufferStart_ + pos_ - 1; }

  // The chunk size the next chunk would have (for tests and tuning).
  std::size_t nextChunkSize() const {
    if (fixedChunk_ != 0) return fixedChunk_;
    if (perItemNs_ == 0) return rampChunk_;
    auto n = static_cast<std::size_t>(TARGET_CHUNK.count()) / perItemNs_;
    return std::clamp<std::size_t>(n, 1, MAX_ADAPTIVE_CHUNK);
  }

 private:
  friend class Pool;
  friend struct detail::PoolImpl;
  struct Item {
    std::optional<T> value;
    std::exception_ptr error;
  };
  // What a Feed read: a chunk of the items read and encoded (none if there were none), and the
  // input's error if it failed after them. Neither: the input has ended.
  struct Fed {
    std::optional<detail::ChunkRequest> chunk;
    std::exception_ptr error;
  };
  // Builds the next chunk of at most n items from the input. Never throws what the input or
  // the encoding throws: that is Fed::error.
  using Feed = std::function<Fed(std::size_t n)>;
  // What a Skip read past: how many items (0 at the end of the input), and the input's error
  // if it failed after them.
  struct Skipped {
    std::size_t items = 0;
    std::exception_ptr error;
  };
  // Reads past at most n items of the input without using them. For the input left when the
  // pool has closed. Never throws what the input throws: that is Skipped::error.
  using Skip = std::function<Skipped(std::size_t n)>;
  // Appends one Item per item of a finished chunk of `items` items.
  using Decode = std::function<void(const detail::ChunkOutcome&, unsigned, std::vector<Item>&)>;

  Stream(std::shared_ptr<detail::Call> call, Feed feed, Skip skip, Decode decode, bool ordered,
         std::size_t chunksize, std::size_t window, bool growWindow)
      : call_(std::move(call)),
        feed_(std::move(feed)),
        skip_(std::move(skip)),
        decode_(std::move(decode)),
        ordered_(ordered),
        fixedChunk_(chunksize),
        window_(std::max<std::size_t>(1, window)),
        growWindow_(growWindow) {}

  // The window now: window_, or for an automatic window, wider while chunks are short.
  std::size_t currentWindow() const {
    if (!growWindow_ || fixedChunk_ == 0 || perItemNs_ == 0) return window_;
    const std::uint64_t chunkNs = std::max<std::uint64_t>(1, perItemNs_ * nextChunkSize());
    const auto growth = std::clamp<std::uint64_t>(
        static_cast<std::uint64_t>(SHORT_CHUNK.count()) / chunkNs, 1, WINDOW_GROWTH);
    return window_ * growth;
  }

  // Sends chunks until the window is full, the input ends or fails, or the pool is closed.
  void topUp() {
    while (!inputDone_ && !closed_ && outstanding_ < currentWindow()) {
      std::size_t n = nextChunkSize();
      Fed fed = feed_(n);
      if (fed.chunk) {
        if (fixedChunk_ == 0 && perItemNs_ == 0) rampChunk_ = std::min(2 * n, MAX_ADAPTIVE_CHUNK);
        send(std::move(*fed.chunk));
      }
      if (!fed.chunk || fed.error) {
        endInput(fed.error);
        return;
      }
    }
  }

  // Submits the chunk of the next items of the input; it is outstanding until read.
  void send(detail::ChunkRequest chunk) {
    unsigned items = chunk.size();
    try {
      std::size_t index = call_->submit(std::move(chunk));
      sizes_.emplace(index, Sent{items, fed_});
    } catch (const PoolClosed&) {
      // The chunk ended with PoolClosed: its items report it, and nothing more is sent;
      // once the chunks before it are read, so does the rest of the input (skipClosed).
      sizes_.emplace(call_->chunks() - 1, Sent{items, fed_});
      closed_ = std::current_exception();
    }
    fed_ += items;
    ++outstanding_;
  }

  // Nothing more is read from the input: it has ended, or failed with `error` at the item
  // after those read so far, which next() throws once every item before it is delivered.
  void endInput(std::exception_ptr error) {
    inputDone_ = true;
    inputError_ = std::move(error);
    inputErrorAt_ = fed_;
    call_->seal();
  }

  // With the pool closed and every chunk sent before read: reads past the next items of the
  // input into buffer_, each with closed_ as its error. False if there were none: the input
  // has ended or failed.
  bool skipClosed() {
    Skipped skipped = skip_(MAX_ADAPTIVE_CHUNK);
    buffer_.clear();
    buffer_.resize(skipped.items);
    for (Item& item : buffer_) item.error = closed_;
    bufferStart_ = fed_;
    pos_ = 0;
    fed_ += skipped.items;
    if (skipped.items == 0 || skipped.error) endInput(std::move(skipped.error));
    return skipped.items != 0;
  }

  void observe(std::uint64_t perItemNs) {
    perItemNs = std::max<std::uint64_t>(perItemNs, 1);
    perItemNs_ = perItemNs_ == 0 ? perItemNs : (3 * perItemNs_ + perItemNs) / 4;
  }

  std::shared_ptr<detail::Call> call_;
  Feed feed_;
  Skip skip_;
  Decode decode_;
  bool ordered_;
  std::size_t fixedChunk_;  // 0: adaptive
  std::size_t window_;
  bool growWindow_;
  std::size_t rampChunk_ = 1;
  std::uint64_t perItemNs_ = 0;     // smoothed measure; 0 until the first chunk ends
  bool inputDone_ = false;          // the input has ended or failed: nothing more is read
  std::exception_ptr inputError_;   // how it failed, until next() has thrown it
  std::uint64_t inputErrorAt_ = 0;  // the input position of the item that failed
  std::exception_ptr closed_;       // the PoolClosed a submit met; then nothing more is sent
  std::size_t outstanding_ = 0;
  std::size_t nextIndex_ = 0;  // ordered: the next chunk to read
  struct Sent {
    unsigned items;
    std::uint64_t first;  // the input position of its first item
  };
  std::unordered_map<std::size_t, Sent> sizes_;  // outstanding chunk -> what it holds
  std::uint64_t fed_ = 0;                        // items taken from the input so far
  std::vector<Item> buffer_;                     // the chunk being read
  std::uint64_t bufferStart_ = 0;                // the input position of buffer_[0]
  std::size_t pos_ = 0;
  std::optional<T> current_;  // for iterators
};

}  // namespace plugpool
