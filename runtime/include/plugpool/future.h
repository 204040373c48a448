// plugpool/future.h — the result of work submitted without waiting: Future<T>, and waiting on
// many of them (wait, waitAll, waitAny, asCompleted).
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
#include <ranges>
#include <type_traits>
#include <unordered_set>
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
  // The value for a Future that is going away: moved out if `sole` (nothing else can read
  // this state again), else copied. REQUIRES: the call has finished.
  T take(bool sole) {
    const T& v = value();
    if constexpr (std::is_copy_constructible_v<T>) {
      if (!sole) return v;
    }
    return std::move(*value_);
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

  // True while part of the call is on a worker: sent to it and not yet answered (a worker may
  // hold a chunk briefly behind the one it runs). False once ready. (Python: running().)
  bool running() const { return state_->call().running(); }

  // Waits until ready, or until `timeout` passes; true if ready. (Python: wait().)
  bool wait(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const {
    return state_->call().waitFinished(detail::deadlineAfter(timeout));
  }

  // Waits, then returns the result or throws the call's error. With a timeout, throws
  // WaitTimeout if the result is not in by then; the work goes on. (Python: get(), result().)
  // Ownership: on a Future you keep, get() returns a reference into the shared state, valid
  // while this Future or a copy of it lives. On a temporary (`pool.mapAsync(t, xs).get()`)
  // it returns the value itself, moved out when no copy of the Future is left, so a
  // `const auto&` bound to it lives as long as the reference and never dangles.
  const T& get(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const& {
    if (!wait(timeout)) detail::throwWaitTimeout("the result was not ready within the timeout");
    return state_->value();
  }
  T get(std::optional<std::chrono::milliseconds> timeout = std::nullopt) && {
    if (!wait(timeout)) detail::throwWaitTimeout("the result was not ready within the timeout");
    return state_->take(state_.use_count() == 1);
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

  // For wait / waitAll / waitAny / asCompleted: copies of one Future have the same call.
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

// When wait() returns. (Python: concurrent.futures.FIRST_COMPLETED, ...)
enum class ReturnWhen {
  FIRST_COMPLETED,  // once any future is ready
  FIRST_EXCEPTION,  // once any has ended with an error other than Cancelled; if none does, as
                    // ALL_COMPLETED (Python: not cancelled and exception() is not None)
  ALL_COMPLETED,    // once every future is ready
};

// What wait() found: indices into its list, ascending. A future named several times (copies
// of one Future) is listed once, at its first index.
struct DoneAndNotDone {
  std::vector<std::size_t> done;     // ready when wait() returned
  std::vector<std::size_t> notDone;  // not ready then
};

// Waits until `when` holds for `futures`, or `timeout` passes, then says which are ready:
// `done` holds every future ready by then, not only the one that ended the wait. A timeout is
// no error (the futures not ready are in notDone); the work goes on. Blocks without polling.
// (Python: concurrent.futures.wait(fs, timeout, return_when). waitAll and waitAny below are
// shorthands for ALL_COMPLETED and FIRST_COMPLETED.) Only ranges match, so under `using
// namespace plugpool` POSIX ::wait(int*) is still the one other arguments call.
template <std::ranges::input_range Futures>
DoneAndNotDone wait(const Futures& futures, ReturnWhen when = ReturnWhen::ALL_COMPLETED,
                    std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  const detail::Deadline deadline = detail::deadlineAfter(timeout);
  // Copies, which are handles: the range may make its elements as it is iterated.
  std::vector<std::remove_cvref_t<std::ranges::range_reference_t<const Futures&>>> all;
  for (const auto& f : futures) all.push_back(f);
  detail::CompletionOrder order(detail::callsOf(all));
  try {
    while (std::optional<std::size_t> i = order.next(deadline)) {
      if (when == ReturnWhen::FIRST_COMPLETED) break;
      if (when == ReturnWhen::FIRST_EXCEPTION && all[*i].error() && !all[*i].cancelled()) break;
    }
  } catch (const WaitTimeout&) {
    // Time is up: what is ready now is the answer.
  }
  DoneAndNotDone result;
  std::unordered_set<const detail::Call*> seen;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (!seen.insert(&all[i].call()).second) continue;
    (all[i].ready() ? result.done : result.notDone).push_back(i);
  }
  return result;
}

// Waits until every future is ready, or `timeout` passes; true if all are ready. A shorthand
// for wait(futures, ReturnWhen::ALL_COMPLETED, timeout).notDone.empty().
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
// are), or nullopt if `timeout` passed first. A shorthand for wait(futures,
// ReturnWhen::FIRST_COMPLETED, timeout) when one index is enough.
// (Python: wait(fs, return_when=FIRST_COMPLETED).)
template <typename Futures>
std::optional<std::size_t> waitAny(
    const Futures& futures, std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  return detail::waitAny(detail::callsOf(futures), detail::deadlineAfter(timeout));
}

// The indices of `futures` in the order they become ready (those already ready first), as a
// range for a for loop; a future named several times (copies of one Future) comes once, at
// its first index. With a timeout, iterating throws WaitTimeout once it passes with futures
// still not ready, saying how many ("2 (of 4) futures unfinished"). The futures must outlive the
// iteration only if you use them. (Python: concurrent.futures.as_completed(fs, timeout).)
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
