// plugpool/future.h — the result of work submitted without waiting: Future<T>, and waiting on
// many of them (waitAll, waitAny, asCompleted).
//
// A Future is what Pool::submit, applyAsync, mapAsync and starmapAsync return: Python's
// AsyncResult and concurrent.futures.Future in one type. It is a small handle to shared state;
// copies refer to the same result.
//
// Waiting with a timeout only stops the wait: the work goes on, and the result can be waited
// for again. get() throws the call's error (TaskError, WorkerCrashed, Cancelled, ...) every
// time it is called.
//
// Callbacks (then) run on the pool's callback thread, one at a time, in the order their
// results arrived: never on the dispatcher, so a slow callback delays only later callbacks,
// never the delivery of results to get(), wait(), streams or other threads. A callback
// attached after the result is in runs on that thread too. Once the pool is destroyed, a
// callback attached later runs at once on the attaching thread. Exceptions thrown by a
// callback are swallowed; handle them inside it. If the callback thread cannot be created
// (no memory, a thread limit), callbacks wait, in order, until a later callback starts it,
// and at the latest run on the thread that destroys the pool: none is ever dropped, and none
// runs on the dispatcher.
//
// Thread safety: every member may be called from any thread, on the same Future or copies.
// Lifetime: a Future may outlive its Pool; the pool's destructor finishes submitted work, so
// the result is there.
#pragma once

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "plugpool/detail/call.h"
#include "plugpool/errors.h"

namespace plugpool {

namespace detail {

// The decoded result of a Call, computed once by whichever thread first needs it.
template <typename T>
class FutureState {
 public:
  FutureState(std::shared_ptr<Call> call, std::function<T(Call&)> decode)
      : call_(std::move(call)), decode_(std::move(decode)) {}

  Call& call() const { return *call_; }

  // REQUIRES: the call has finished.
  const T& value() {
    decodeOnce();
    if (error_) std::rethrow_exception(error_);
    return *value_;
  }
  std::exception_ptr error() {
    decodeOnce();
    return error_;
  }

 private:
  void decodeOnce() {
    std::call_once(once_, [&] {
      try {
        value_.emplace(decode_(*call_));
      } catch (...) {
        error_ = std::current_exception();
      }
      decode_ = nullptr;
    });
  }

  std::shared_ptr<Call> call_;
  std::function<T(Call&)> decode_;
  std::once_flag once_;
  std::optional<T> value_;
  std::exception_ptr error_;
};

}  // namespace detail

template <typename T>
class Future {
 public:
  using Value = T;

  Future() = default;  // refers to nothing: valid() is false, everything else is undefined
  bool valid() const { return state_ != nullptr; }

  // True once the result (or error) is in. Never blocks. (Python: ready(), done().)
  bool ready() const { return state_->call().finished(); }

  // Waits until ready, or until `timeout` passes; true if ready. (Python: wait().)
  bool wait(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const {
    return state_->call().waitFinished(detail::deadlineAfter(timeout));
  }

  // Waits, then returns the result or throws the call's error. With a timeout, throws
  // WaitTimeout if the result is not in by then; the work goes on. (Python: get(), result().)
  const T& get(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const {
    if (!wait(timeout)) detail::throwWaitTimeout("the result was not ready within the timeout");
    return state_->value();
  }

  // Waits, then returns the call's error, or null if it succeeded. (Python: exception().)
  std::exception_ptr error(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const {
    if (!wait(timeout)) detail::throwWaitTimeout("the result was not ready within the timeout");
    return state_->error();
  }

  // Whether the call succeeded. Throws UsageError if it is not ready yet. (Python:
  // successful(), which raises ValueError then.)
  bool successful() const {
    if (!ready()) detail::throwUsage("successful() called before the result is ready");
    return state_->error() == nullptr;
  }

  // Stops the call if it has not ended: queued work is dropped; work running in a worker is
  // stopped by killing that worker, which the pool replaces. Returns true if the call ended
  // as Cancelled, false if it had already ended otherwise. (Python's Future.cancel() cannot
  // stop running work; this can.)
  bool cancel() {
    if (!ready()) state_->call().cancel();
    state_->call().waitFinished();
    return cancelled();
  }

  // True if the call ended with Cancelled (cancel(), terminate, shutdown with cancelPending).
  bool cancelled() const {
    if (!ready()) return false;
    auto e = state_->error();
    if (!e) return false;
    try {
      std::rethrow_exception(e);
    } catch (const Cancelled&) {
      return true;
    } catch (...) {
      return false;
    }
  }

  // Runs onResult(value) or onError(error) on the pool's callback thread once the result is
  // in (see the top of this file). Either may be empty. Returns *this for chaining.
  // (Python: apply_async(callback=, error_callback=), add_done_callback().)
  const Future& then(std::function<void(const T&)> onResult,
                     std::function<void(std::exception_ptr)> onError = {}) const {
    state_->call().thenOnCallbackThread(
        [state = state_, onResult = std::move(onResult), onError = std::move(onError)] {
          if (auto e = state->error()) {
            if (onError) onError(e);
          } else if (onResult) {
            onResult(state->value());
          }
        });
    return *this;
  }

  // For waitAll / waitAny / asCompleted.
  detail::Call& call() const { return state_->call(); }

 private:
  friend class Pool;
  explicit Future(std::shared_ptr<detail::FutureState<T>> state) : state_(std::move(state)) {}
  std::shared_ptr<detail::FutureState<T>> state_;
};

namespace detail {
template <typename Futures>
std::vector<Call*> callsOf(const Futures& futures) {
  std::vector<Call*> calls;
  for (const auto& f : futures) calls.push_back(&f.call());
  return calls;
}
}  // namespace detail

// Waits until every future is ready, or `timeout` passes; true if all are ready.
// (Python: concurrent.futures.wait(fs, return_when=ALL_COMPLETED).)
template <typename Futures>
bool waitAll(const Futures& futures,
             std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  auto deadline = detail::deadlineAfter(timeout);
  for (const auto& f : futures) {
    if (!f.call().waitFinished(deadline)) return false;
  }
  return true;
}

// Waits until any future is ready; returns its index (the lowest index if several already
// are), or nullopt if `timeout` passed first. (Python: wait(fs, return_when=FIRST_COMPLETED).)
template <typename Futures>
std::optional<std::size_t> waitAny(
    const Futures& futures, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  return detail::waitAny(detail::callsOf(futures), detail::deadlineAfter(timeout));
}

// The indices of `futures` in the order they become ready (those already ready first), as a
// range for a for loop. With a timeout, iterating throws WaitTimeout once it passes with
// futures still not ready. The futures must outlive the iteration only if you use them.
// (Python: concurrent.futures.as_completed(fs, timeout).)
class AsCompleted {
 public:
  template <typename Futures>
  AsCompleted(const Futures& futures, std::optional<std::chrono::milliseconds> timeout)
      : order_(std::make_shared<detail::CompletionOrder>(detail::callsOf(futures))),
        deadline_(detail::deadlineAfter(timeout)) {}

  // The next index, or nullopt when every future has been returned.
  std::optional<std::size_t> next() { return order_->next(deadline_); }

  class iterator {
   public:
    using value_type = std::size_t;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(AsCompleted* owner) : owner_(owner) { ++*this; }
    std::size_t operator*() const { return *current_; }
    iterator& operator++() {
      current_ = owner_->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return !current_; }

   private:
    AsCompleted* owner_ = nullptr;
    std::optional<std::size_t> current_;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  std::shared_ptr<detail::CompletionOrder> order_;
  detail::Deadline deadline_;
};

template <typename Futures>
AsCompleted asCompleted(const Futures& futures,
                        std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  return AsCompleted(futures, timeout);
}

}  // namespace plugpool
