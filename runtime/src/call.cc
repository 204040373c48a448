#include "plugpool/detail/call.h"

#include <algorithm>
#include <atomic>
#include <system_error>

#include "big_buffers.h"
#include "core.h"
#include "plugpool/errors.h"
#include "spin.h"
#include "wire.capnp.h"

namespace plugpool::detail {

namespace {

// Waits on `cv` until `done()` or the deadline; true if done. `changes`, if given, is bumped
// with every notification of `cv`: the waiter watches it briefly before it sleeps (spin.h).
// Only waiters on a call of one chunk (apply, submit) pass it: a stream's or a map's reader
// waits again and again, and its watching takes a core the workers need (plugpool-bench
// imap_c1 on 2 cores: half the items/s; bench/PERFORMANCE.md).
template <typename Pred>
bool waitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Deadline deadline,
               Pred done, const std::atomic<std::uint64_t>* changes = nullptr) {
  if (changes != nullptr && !done()) {
    const std::uint64_t seen = changes->load(std::memory_order_acquire);
    lock.unlock();
    watchBriefly([&] { return changes->load(std::memory_order_acquire) != seen; });
    lock.lock();
  }
  if (!deadline) {
    cv.wait(lock, done);
    return true;
  }
  return cv.wait_until(lock, *deadline, done);
}

}  // namespace

ChunkRequest::ChunkRequest(const TaskRef& task, unsigned count, std::uint16_t dataWords,
                           std::uint16_t pointers)
    : message_(std::make_shared<BigSegmentBuilder>(
          // One first segment that fits the whole chunk of fixed-size tuples, so building it
          // is one allocation: 2 words of list tag and envelope, 1 word per data word or
          // pointer of each item, plus room for whatever the pointers point at.
          std::max<unsigned>(128, 16 + count * (dataWords + pointers * 3u)))),
      items_(nullptr) {
  auto run = message_->initRoot<wire::HostMessage>().initRun();
  run.setPlugin(task.plugin);
  run.setTask(task.task);
  run.setItemStartTimes(task.timeout.count() != 0);  // so that each item is timed
  items_ = run.initItems().initAsListOfAnyStruct(dataWords, pointers, count);
}

ChunkRequest::ChunkRequest(ChunkRequest&&) noexcept = default;
ChunkRequest& ChunkRequest::operator=(ChunkRequest&&) noexcept = default;
ChunkRequest::~ChunkRequest() = default;

// --- CallbackQueue ------------------------------------------------------------------------

CallbackQueue::~CallbackQueue() {
  stop();
}

void CallbackQueue::post(std::function<void()> fn) noexcept {
  {
    std::lock_guard lock(mutex_);
    if (!stopped_ && enqueue(fn)) {
      if (!thread_.joinable()) {
        try {
          thread_ = std::thread([this] { run(); });
        } catch (const std::system_error&) {
          // No thread now (out of memory or threads): the callbacks wait in the queue, and
          // the next post() or stop() tries again; stop() runs them itself if it must.
          return;
        }
      }
      ready_.notify_one();
      return;
    }
  }
  // Stopped, or no memory for one more entry: run it here rather than lose it.
  try {
    fn();
  } catch (...) {
  }
}

bool CallbackQueue::enqueue(std::function<void()>& fn) noexcept {
  try {
    queue_.push_back(std::move(fn));
    return true;
  } catch (...) {
    return false;
  }
}

void CallbackQueue::stop() {
  std::thread thread;
  std::deque<std::function<void()>> orphans;  // queued, and no thread ever ran them
  {
    std::lock_guard lock(mutex_);
    stopped_ = true;
    thread = std::move(thread_);
    if (!thread.joinable()) orphans.swap(queue_);
  }
  ready_.notify_one();
  if (thread.joinable()) thread.join();
  for (auto& fn : orphans) {
    try {
      fn();
    } catch (...) {
    }
  }
}

void CallbackQueue::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    ready_.wait(lock, [&] { return stopped_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopped and drained
    auto fn = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    try {
      fn();
    } catch (...) {
    }
    fn = nullptr;  // whatever it captured dies outside the lock
    lock.lock();
  }
}

// --- Call ---------------------------------------------------------------------------------

Call::Call(TaskRef task, std::weak_ptr<Core> core, std::shared_ptr<CallbackQueue> callbacks)
    : task_(std::move(task)), core_(std::move(core)), callbacks_(std::move(callbacks)) {}

Call::~Call() = default;

Call::Added Call::add(unsigned items) {
  std::lock_guard lock(mutex_);
  if (sealed_) throwUsage("submit after seal");
  Added added{count_++, items_};
  items_ += items;
  slots_.emplace_back();
  return added;
}

std::size_t Call::submit(ChunkRequest chunk) {
  const auto [index, firstItem] = add(chunk.size());
  try {
    auto core = core_.lock();
    if (!core) throw PoolClosed("the pool is gone; no more work can be submitted");
    core->submit(shared_from_this(), index, firstItem, std::move(chunk));
  } catch (...) {
    // Not sent: the chunk ends here, so a reader waiting for it is not left hanging.
    ChunkOutcome outcome;
    outcome.failure = std::current_exception();
    complete(index, std::move(outcome));
    throw;
  }
  return index;
}

void Call::seal() {
  std::unique_lock lock(mutex_);
  sealed_ = true;
  finishIfDone(lock);
}

void Call::complete(std::size_t index, ChunkOutcome outcome) {
  std::unique_lock lock(mutex_);
  if (index < base_) return;
  Slot& slot = slots_[index - base_];
  if (slot.ended) return;
  slot.ended = true;
  if (!slot.released) slot.outcome = std::move(outcome);
  ++ended_;
  arrived_.push_back(index);
  changes_.fetch_add(1, std::memory_order_release);
  changed_.notify_all();
  finishIfDone(lock);
}

void Call::finishIfDone(std::unique_lock<std::mutex>& lock) {
  if (finished_ || !sealed_ || ended_ != count_) {
    lock.unlock();
    return;
  }
  finished_ = true;
  auto watchers = std::move(watchers_);
  changes_.fetch_add(1, std::memory_order_release);
  changed_.notify_all();
  lock.unlock();
  for (auto& fn : watchers) fn();
}

const ChunkOutcome* Call::wait(std::size_t index, Deadline deadline) {
  std::unique_lock lock(mutex_);
  if (index < base_ || index >= count_) throwUsage("waiting for a chunk that does not exist");
  bool ended = waitUntil(
      changed_, lock, deadline, [&] { return slots_[index - base_].ended; }, spinFor());
  if (!ended) return nullptr;
  Slot& slot = slots_[index - base_];
  if (slot.released) throwUsage("waiting for a chunk already released");
  return &*slot.outcome;
}

std::optional<std::size_t> Call::takeAny(Deadline deadline) {
  std::unique_lock lock(mutex_);
  if (!waitUntil(
          changed_, lock, deadline, [&] { return !arrived_.empty(); }, spinFor())) {
    return std::nullopt;
  }
  std::size_t index = arrived_.front();
  arrived_.pop_front();
  return index;
}

void Call::release(std::size_t index) {
  std::optional<ChunkOutcome> dying;  // freed outside the lock
  std::lock_guard lock(mutex_);
  if (index < base_ || index >= count_) return;
  Slot& slot = slots_[index - base_];
  slot.released = true;
  dying = std::move(slot.outcome);
  slot.outcome.reset();
  while (!slots_.empty() && slots_.front().released && slots_.front().ended) {
    slots_.pop_front();
    ++base_;
  }
}

std::size_t Call::chunks() const {
  std::lock_guard lock(mutex_);
  return count_;
}

bool Call::finished() const {
  std::lock_guard lock(mutex_);
  return finished_;
}

bool Call::running() const {
  return onWorkers_.load(std::memory_order_relaxed) > 0 && !finished();
}

bool Call::waitFinished(Deadline deadline) const {
  std::unique_lock lock(mutex_);
  return waitUntil(
      changed_, lock, deadline, [&] { return finished_; }, spinFor());
}

const std::atomic<std::uint64_t>* Call::spinFor() const {
  return count_ == 1 ? &changes_ : nullptr;
}

void Call::whenFinished(std::function<void()> fn) {
  {
    std::lock_guard lock(mutex_);
    if (!finished_) {
      watchers_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

void Call::thenOnCallbackThread(std::function<void()> fn) {
  whenFinished([callbacks = callbacks_, fn = std::move(fn)]() mutable {
    if (callbacks) {
      callbacks->post(std::move(fn));
    } else {
      fn();
    }
  });
}

void Call::cancel() {
  if (auto core = core_.lock()) core->cancel(shared_from_this(), /*running too=*/true);
}

void Call::discardQueued() {
  if (auto core = core_.lock()) core->cancel(shared_from_this(), /*running too=*/false);
}

// --- waiting on many calls ----------------------------------------------------------------

std::optional<std::size_t> waitAny(const std::vector<Call*>& calls, Deadline deadline) {
  CompletionOrder order(calls);
  try {
    return order.next(deadline);
  } catch (const WaitTimeout&) {
    return std::nullopt;
  }
}

CompletionOrder::CompletionOrder(const std::vector<Call*>& calls)
    : shared_(std::make_shared<Shared>()), remaining_(0), total_(0) {
  std::vector<Call*> seen;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    // A call named twice is returned once, at its first index (Python's as_completed takes
    // a set of futures).
    if (std::find(seen.begin(), seen.end(), calls[i]) != seen.end()) continue;
    seen.push_back(calls[i]);
    ++remaining_;
    // The watcher holds the shared queue, not this object, so it may outlive it.
    calls[i]->whenFinished([shared = shared_, i] {
      std::lock_guard lock(shared->mutex);
      shared->done.push_back(i);
      shared->ready.notify_all();
    });
  }
  total_ = remaining_;
}

std::optional<std::size_t> CompletionOrder::next(Deadline deadline) {
  if (remaining_ == 0) return std::nullopt;
  std::unique_lock lock(shared_->mutex);
  if (!waitUntil(shared_->ready, lock, deadline, [&] { return !shared_->done.empty(); })) {
    const std::string what =
        "timed out waiting for results to complete: " + std::to_string(remaining_) + " (of " +
        std::to_string(total_) + ") futures unfinished";
    throwWaitTimeout(what.c_str());
  }
  std::size_t index = shared_->done.front();
  shared_->done.pop_front();
  --remaining_;
  return index;
}

// --- errors -------------------------------------------------------------------------------

std::exception_ptr itemError(const TaskRef& task, const ChunkOutcome& outcome,
                             const ItemFailure& f) {
  if (f.error) return f.error;
  return std::make_exception_ptr(TaskError(task.pluginName, task.taskName, f.type, f.message,
                                           outcome.firstItem + f.index, outcome.workerPid));
}

void throwItemFailure(const TaskRef& task, const ChunkOutcome& outcome, const ItemFailure& f) {
  std::rethrow_exception(itemError(task, outcome, f));
}

void throwUndecodable(const TaskRef& task, const char* why) {
  throw ProtocolError("the results of " + task.pluginName + "." + task.taskName +
                      " could not be decoded: " + why);
}

void throwUsage(const char* what) {
  throw UsageError(what);
}

void throwWaitTimeout(const char* what) {
  throw WaitTimeout(what);
}

}  // namespace plugpool::detail
