// plugpool/detail/call.h — the type-erased machinery under Pool's typed calls.
//
// Not part of the stable API: the templates in pool.h, future.h and stream.h are built on
// these. A Call is one user-level operation (a map, an apply, one imap stream); it is sent as
// chunks, each one Run message holding many items of one task, and each chunk ends with
// exactly one ChunkOutcome.
//
// Threads: a ChunkRequest is built by the calling thread and then owned by the pool's
// dispatcher. ChunkOutcomes are filled by the dispatcher and read by whoever waits on the
// Call; both sides synchronize through the Call's mutex. Every Call member is thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>

#include "plugpool/export.h"

namespace plugpool::detail {

class Core;
struct PoolImpl;  // pool.h's template helpers (detail/pool-inl.h)
using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;  // nullopt: wait forever

// A deadline `timeout` from now, or none.
inline Deadline deadlineAfter(std::optional<std::chrono::milliseconds> timeout) {
  if (!timeout) return std::nullopt;
  return Clock::now() + *timeout;
}

// A bound task: where it lives in the manifest, and its names for error messages.
struct TaskRef {
  std::uint32_t plugin = 0;
  std::uint32_t task = 0;
  std::string pluginName;
  std::string taskName;
  std::chrono::milliseconds timeout{0};  // per item; 0: none
  bool wholeChunks = false;              // a lost worker fails or retries its whole chunk
};

// One Run message under construction: the typed layer fills items(), the dispatcher sends it.
class PLUGPOOL_API ChunkRequest {
 public:
  // Allocates `count` argument tuple structs of the given layout.
  ChunkRequest(const TaskRef& task, unsigned count, std::uint16_t dataWords,
               std::uint16_t pointers);
  ChunkRequest(ChunkRequest&&) noexcept;
  ChunkRequest& operator=(ChunkRequest&&) noexcept;
  ~ChunkRequest();

  capnp::List<capnp::AnyStruct>::Builder items() { return items_; }
  unsigned size() const { return items_.size(); }

  // For the dispatcher: gives up the message, whose Run.id it then sets per sending.
  std::shared_ptr<capnp::MallocMessageBuilder> release() { return std::move(message_); }

 private:
  std::shared_ptr<capnp::MallocMessageBuilder> message_;
  capnp::List<capnp::AnyStruct>::Builder items_;
};

struct ItemFailure {
  unsigned index;
  std::string type;  // what the task threw, if it threw
  std::string message;
  std::exception_ptr error;  // set instead if the item failed otherwise (its worker crashed)
};

// How one chunk ended: either `failure` (the whole chunk was lost: crash, protocol error,
// cancelled, pool stopped) or one result per item, with the failed items listed in `errors`.
struct ChunkOutcome {
  std::exception_ptr failure;
  capnp::List<capnp::AnyStruct>::Reader results;  // valid while keepAlive lives
  std::vector<ItemFailure> errors;                // increasing index
  std::shared_ptr<const void> keepAlive;          // the received message behind `results`
  std::uint64_t elapsedNs = 0;                    // the worker's time for the chunk
  std::uint64_t firstItem = 0;                    // the call's index of the chunk's first item
  int workerPid = 0;                              // the worker that ran it
};

// The pool's callback thread: runs posted functions one at a time, in posting order, on one
// thread of its own that starts with the first post. After stop(), post() runs the function
// at once on the posting thread. An exception escaping a callback is swallowed. post() never
// throws: if the thread cannot be created (no memory, a thread limit), the functions wait in
// the queue and each later post() tries again; stop() runs whatever no thread ran, on the
// stopping thread, in order. Nothing posted is ever dropped.
class PLUGPOOL_API CallbackQueue {
 public:
  CallbackQueue() = default;
  ~CallbackQueue();
  CallbackQueue(const CallbackQueue&) = delete;
  CallbackQueue& operator=(const CallbackQueue&) = delete;

  void post(std::function<void()> fn) noexcept;
  // Runs what is queued, then ends the thread. Must not be called from a callback.
  void stop();

 private:
  void run();
  bool enqueue(std::function<void()>& fn) noexcept;  // REQUIRES: mutex_ held

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;  // GUARDED_BY(mutex_)
  bool stopped_ = false;                     // GUARDED_BY(mutex_)
  std::thread thread_;                       // started under mutex_ by the first post
};

// One user-level call's chunks, in submission order. Shared by the caller and the dispatcher.
class PLUGPOOL_API Call : public std::enable_shared_from_this<Call> {
 public:
  Call(TaskRef task, std::weak_ptr<Core> core, std::shared_ptr<CallbackQueue> callbacks);
  virtual ~Call();
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  const TaskRef& task() const { return task_; }

  // Sends one more chunk; returns its index. Throws PoolClosed if the pool no longer takes
  // work (or is gone).
  std::size_t submit(ChunkRequest chunk);
  // submit()'s first step: registers one more chunk of `items` items, without sending it, so
  // that complete() can end it. For code that hands chunks to a dispatcher itself (the
  // scheduler's tests).
  struct Added {
    std::size_t index;
    std::uint64_t firstItem;  // the call's index of the chunk's first item
  };
  Added add(unsigned items);
  // No more chunks will be submitted: the call finishes once every chunk has ended.
  void seal();

  // Records how chunk `index` ended. Dispatcher thread. The first outcome of a chunk counts;
  // a later one (a reply to a chunk already cancelled) is ignored.
  void complete(std::size_t index, ChunkOutcome outcome);

  // Blocks until chunk `index` has ended or `deadline` passes; null on timeout. The outcome
  // stays valid until release(index).
  const ChunkOutcome* wait(std::size_t index, Deadline deadline = std::nullopt);
  // For unordered readers: blocks until a chunk not yet taken has ended; returns its index.
  std::optional<std::size_t> takeAny(Deadline deadline = std::nullopt);
  // Frees chunk `index`'s outcome (and the message behind it). Its reference dies.
  void release(std::size_t index);
  std::size_t chunks() const;

  // Sealed and every chunk ended.
  bool finished() const;
  // Not finished, and a chunk of it is on a worker (sent, not yet answered or requeued).
  bool running() const;
  // For the dispatcher's OnWorker marks.
  void enterWorker() { onWorkers_.fetch_add(1, std::memory_order_relaxed); }
  void leaveWorker() { onWorkers_.fetch_sub(1, std::memory_order_relaxed); }
  bool waitFinished(Deadline deadline = std::nullopt) const;
  // Runs `fn` once the call has finished: at once on this thread if it has, else on the
  // thread that finishes it (the dispatcher). Must be quick and must not throw.
  void whenFinished(std::function<void()> fn);
  // Runs `fn` on the pool's callback thread once the call has finished.
  void thenOnCallbackThread(std::function<void()> fn);

  // Ends every chunk not yet ended with Cancelled: queued chunks are dropped, a running
  // chunk's worker is killed and replaced. Returns once done. No-op if the pool is gone.
  void cancel();
  // Drops the chunks not yet sent to a worker (they end with Cancelled); chunks already sent
  // run to completion. For streams abandoned by their reader.
  void discardQueued();

 private:
  struct Slot {
    std::optional<ChunkOutcome> outcome;
    bool ended = false;
    bool released = false;
  };
  void finishIfDone(std::unique_lock<std::mutex>& lock);  // releases the lock
  // What a waiter watches before it sleeps: changes_ for a call of one chunk, else nothing.
  // REQUIRES: mutex_ held.
  const std::atomic<std::uint64_t>* spinFor() const;

  TaskRef task_;
  std::weak_ptr<Core> core_;
  std::shared_ptr<CallbackQueue> callbacks_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::atomic<std::uint64_t> changes_{0};        // bumped with every changed_ notification
  std::atomic<int> onWorkers_{0};                // chunks on workers (running())
  std::deque<Slot> slots_;                       // GUARDED_BY(mutex_); chunk base_ + i
  std::size_t base_ = 0;                         // GUARDED_BY(mutex_)
  std::size_t count_ = 0;                        // GUARDED_BY(mutex_); chunks submitted
  std::uint64_t items_ = 0;                      // GUARDED_BY(mutex_); their items
  std::size_t ended_ = 0;                        // GUARDED_BY(mutex_)
  std::deque<std::size_t> arrived_;              // GUARDED_BY(mutex_); ended, not taken
  bool sealed_ = false;                          // GUARDED_BY(mutex_)
  bool finished_ = false;                        // GUARDED_BY(mutex_)
  std::vector<std::function<void()>> watchers_;  // GUARDED_BY(mutex_)
};

// The right plugpool error for item failure `f` of a chunk of `task` that ended as `outcome`,
// and throwing it.
PLUGPOOL_API std::exception_ptr itemError(const TaskRef& task, const ChunkOutcome& outcome,
                                          const ItemFailure& f);
[[noreturn]] PLUGPOOL_API void throwItemFailure(const TaskRef& task, const ChunkOutcome& outcome,
                                                const ItemFailure& f);
// Throws ProtocolError: the results of `task` from a worker could not be decoded.
[[noreturn]] PLUGPOOL_API void throwUndecodable(const TaskRef& task, const char* why);
// Throws UsageError(what).
[[noreturn]] PLUGPOOL_API void throwUsage(const char* what);
// Throws WaitTimeout(what).
[[noreturn]] PLUGPOOL_API void throwWaitTimeout(const char* what);

// Blocks until any of `calls` has finished (returns its index) or `deadline` passes.
PLUGPOOL_API std::optional<std::size_t> waitAny(const std::vector<Call*>& calls, Deadline deadline);

// The finishing order of a set of calls, for asCompleted: each distinct call once, by the
// index of its first occurrence. Thread-safe.
class PLUGPOOL_API CompletionOrder {
 public:
  explicit CompletionOrder(const std::vector<Call*>& calls);
  // The index of the next call to finish, nullopt when all have been returned, or throws
  // WaitTimeout once `deadline` has passed.
  std::optional<std::size_t> next(Deadline deadline);

 private:
  struct Shared {
    std::mutex mutex;
    std::condition_variable ready;
    std::deque<std::size_t> done;
  };
  std::shared_ptr<Shared> shared_;
  std::size_t remaining_;  // distinct calls not yet returned
  std::size_t total_;      // distinct calls
};

}  // namespace plugpool::detail
