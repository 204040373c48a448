// scheduler.h — which chunk runs where, and what becomes of chunks when a worker is lost,
// overruns its timeout or is cancelled. Internal.
//
// The pool's policy, free of I/O, processes and clock reads: it is told what happened and
// when, and answers with what to send and which workers to stop, so every rule here is tested
// without starting a worker (tests/test_scheduler.cc). It sees workers as WorkerIds, never as
// links; the dispatcher (core.h) carries out its answers.
//
// The rules:
// - Chunks go out in submission order, each to the ready worker holding fewest, up to its
//   in-flight limit: Options::chunksInFlight, or when that is 0, AUTO_IN_FLIGHT raised while
//   the worker's chunks are short so that about QUEUED_WORK waits in it, at most
//   MAX_IN_FLIGHT. A chunk larger than maxMessageBytes fails with MessageTooLarge instead.
// - At most Options::workers workers run tasks at once (runsTasks): a worker holding no chunk
//   takes one only while fewer run. So a retiring worker's replacement takes work only once
//   the retiring one has answered all it holds.
// - A worker runs what it holds in order: only the first unanswered chunk is running. When a
//   worker is lost, the chunks behind it go out again, first. Of the running chunk:
//   - if the worker's end says how far it got (WorkerEnd::partial, from its reply log), the
//     items it had finished keep their results, the item it was running is retried alone
//     (Options::crashRetries, a crash only) or fails with the error its end calls for, and
//     the items after it go out again, first; the chunk ends once all its parts have
//     (Assembly);
//   - otherwise (no log: a remote worker, a chunk run as one call) the whole chunk is retried
//     or fails.
// - Timeouts (taskTimeout): for a worker that says which item it runs and since when
//   (addWorker's `itemProgress`), an item running past the timeout fails with TaskTimeout
//   once its worker is gone, as above; for other workers a chunk running for longer than
//   taskTimeout times its items fails with TaskTimeout at once. Either way the chunks behind
//   it go out again at once, and its worker is to be stopped.
// - Cancelling a call ends its queued chunks, and if asked its sent ones too; a worker running
//   one is to be killed.
// - A worker that has been sent maxTasksPerChild items takes no more and retires once it
//   holds nothing.
// - A worker the pool stops (stopping()) no longer counts as running tasks, and whatever it
//   still holds goes out again when it is gone: its running chunk has ended already.
//
// Threads: dispatcher thread only, except StatsCounter.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <utility>
#include <vector>

#include <capnp/message.h>

#include "plugpool/detail/call.h"
#include "plugpool/pool.h"
#include "thread_annotations.h"
#include "worker_link.h"

namespace plugpool::detail {

using WorkerId = std::uint64_t;

struct Assembly;

// One chunk of a call, or a part of one (`assembly`).
struct Job {
  std::shared_ptr<Call> call;
  std::size_t index;
  std::shared_ptr<capnp::MallocMessageBuilder> message;  // a Run; its id set per sending
  unsigned items;
  std::uint64_t firstItem;  // the call's index of its first item
  unsigned attempts = 0;    // times resent after its worker crashed running it
  unsigned unstarted = 0;   // times resent after its worker died before it began it
  // Set for a part of a chunk whose worker died part-way: the chunk's items from `offset` on.
  std::shared_ptr<Assembly> assembly = nullptr;
  unsigned offset = 0;
};

// A chunk whose worker died part-way, put back together from its parts (the items that
// worker had finished, the one it was running, the rest sent again) into one ChunkOutcome.
struct Assembly {
  struct Part {
    unsigned offset;  // in the chunk
    unsigned count;
    ChunkOutcome outcome;  // its results[0, count), or a failure of all of them
  };
  unsigned items;    // the chunk's
  unsigned missing;  // items in no part yet
  std::uint64_t firstItem;
  std::vector<Part> parts;
};

// The parts of `assembly` as one outcome of its chunk: results copied into one message, each
// failed item's error made an exception (it names its own worker). Throws std::bad_alloc.
ChunkOutcome assemble(const Assembly& assembly, const TaskRef& task);
// A Job of the `count` items of `job` from `from` on, in a Run of their own (copied).
Job slice(const Job& job, unsigned from, unsigned count);

// The pool's Stats, counted on the dispatcher thread and read from any.
class StatsCounter {
 public:
  void add(std::uint64_t Stats::*field, std::uint64_t n = 1) {
    MutexLock lock(mutex_);
    stats_.*field += n;
  }
  // A chunk of `items` items was sent (one lock for both counters: once per chunk).
  void sent(std::uint64_t items) {
    MutexLock lock(mutex_);
    ++stats_.chunksSent;
    stats_.itemsSent += items;
  }
  Stats get() const {
    MutexLock lock(mutex_);
    return stats_;
  }

 private:
  mutable Mutex mutex_;
  Stats stats_ GUARDED_BY(mutex_);
};

struct SchedulerOptions {
  unsigned workers = 1;  // at most this many run tasks at once
  unsigned chunksInFlight = 0;
  unsigned crashRetries = 0;
  std::uint64_t maxTasksPerChild = 0;
  std::uint64_t maxWords = 0;  // maxMessageBytes in words

  static SchedulerOptions of(const Options& options);
};

// A chunk to send: `run` to `worker` (its link numbers it).
struct Assignment {
  WorkerId worker;
  std::shared_ptr<capnp::MallocMessageBuilder> run;
  unsigned items;
};

class Scheduler {
 public:
  static constexpr std::size_t AUTO_IN_FLIGHT = 2;
  static constexpr std::size_t MAX_IN_FLIGHT = 64;
  static constexpr std::chrono::milliseconds QUEUED_WORK{1};
  // Times a chunk whose worker died before it began it is sent again before that death is
  // taken for a crash of the chunk.
  static constexpr unsigned MAX_UNSTARTED = 3;

  Scheduler(SchedulerOptions options, StatsCounter& stats);

  void submit(Job job);

  // `w` is ready and takes work; `pid` is what errors name it by. `itemProgress`: its link
  // says which item it runs and since when (WorkerLink::progress), so each item is timed.
  void addWorker(WorkerId w, int pid, bool itemProgress = false);
  // `w` takes no more work (its channel ended); what it holds is settled by workerLost().
  void closed(WorkerId w);
  // The pool stops `w`: closed(), and it no longer counts as running tasks.
  void stopping(WorkerId w);
  bool retiring(WorkerId w) const;
  // `w` is gone, as `end` says: its running chunk is retried or fails, the rest go out again.
  // Forgets `w`. A worker never added is ignored.
  void workerLost(WorkerId w, const WorkerEnd& end);

  // The chunks to send now; valid until the next call (its buffer is reused: this runs once
  // per dispatcher round).
  std::vector<Assignment>& assign(Clock::time_point now);
  // `w` answered its oldest unanswered chunk (HostSession checked that it did). Completes the
  // chunk's Call unless it has ended already (a reply to a cancelled chunk is dropped).
  void replied(WorkerId w, ChunkOutcome&& outcome, Clock::time_point now);
  // The workers whose running item or chunk may be past its timeout at `now`: what each says
  // of its progress is to be passed to observe() before timedOut().
  std::vector<WorkerId> due(Clock::time_point now) const;
  // What `w` says it is running: an item of its running chunk, since when (none: it does not
  // say; its chunk is then timed as a whole).
  void observe(WorkerId w, const std::optional<ItemProgress>& progress);
  // Fails the running chunks past their timeout, or marks the item past it to fail once its
  // worker is gone; returns their workers, now stopping(), to be stopped.
  std::vector<WorkerId> timedOut(Clock::time_point now);
  // Ends `call`'s queued chunks with Cancelled, and if `running` its sent ones too; returns
  // the workers that were running one, now stopping(), to be killed.
  std::vector<WorkerId> cancel(const Call* call, bool running);
  // Ends every queued chunk with `error`.
  void failQueued(const std::exception_ptr& error);
  // Ends everything unfinished: queued chunks with `queued`, the running ones with
  // `running`; every worker is now stopping(). No-throw: a Call that cannot take its outcome
  // is skipped.
  void failUnfinished(const std::exception_ptr& queued, const std::exception_ptr& running) noexcept;
  // Retiring workers that hold nothing, now stopping(): to be closed.
  std::vector<WorkerId> takeRetiring();

  // When timedOut() must run next; max() if no running chunk has a timeout.
  Clock::time_point nextDeadline() const;
  bool idle() const;       // nothing queued, nothing on a worker
  bool loneChunk() const;  // exactly one chunk is on a worker and none is queued
  bool canServe() const;   // a worker takes work
  std::size_t queued() const { return queue_.size(); }
  std::size_t held(WorkerId w) const;  // chunks on `w`, answered or not

 private:
  // Counts a chunk as on a worker for Call::running() while it lives.
  class OnWorker {
   public:
    OnWorker() = default;
    explicit OnWorker(Call* call) : call_(call) { call_->enterWorker(); }
    OnWorker(OnWorker&& other) noexcept : call_(std::exchange(other.call_, nullptr)) {}
    OnWorker& operator=(OnWorker&& other) noexcept {
      if (this != &other) {
        reset();
        call_ = std::exchange(other.call_, nullptr);
      }
      return *this;
    }
    ~OnWorker() { reset(); }
    void reset() {
      if (call_ != nullptr) call_->leaveWorker();
      call_ = nullptr;
    }

   private:
    Call* call_ = nullptr;  // kept alive by the Job beside it
  };
  struct Held {
    Job job;
    bool ended = false;  // already completed (cancelled, timed out); its reply is dropped
    std::optional<unsigned> timedOutItem;  // this item ran past its timeout; it fails at the end
    OnWorker onWorker;  // declared after `job`: ends before the Job lets go of its Call
  };
  struct Worker {
    WorkerId id;
    int pid;
    std::deque<Held> held;
    std::uint64_t itemsSent = 0;
    bool retiring = false;
    bool closed = false;
    bool stopping = false;
    Clock::time_point frontSince;  // when the first unanswered chunk started running
    std::uint64_t chunkNs = 0;     // its chunks' smoothed run time; 0 until one ends
    bool itemProgress = false;     // it says which item it runs (addWorker)
    // What it last said of its running chunk (observe()); reset when that chunk changes.
    std::optional<ItemProgress> seen;
    bool silent = false;  // asked, it said nothing of its running chunk: timed as a whole
  };

  Worker* find(WorkerId w);
  const Worker* find(WorkerId w) const;
  // Whether `w` may be running a task: it holds chunks it has not answered (even ones that
  // have ended: it still runs them), unless the pool is stopping it.
  static bool runsTasks(const Worker& w) { return !w.held.empty() && !w.stopping; }
  // Whether `w`'s running chunk is timed item by item (else as a whole).
  static bool timesItems(const Worker& w) {
    return w.itemProgress && !w.silent && !w.held.empty() &&
           !w.held.front().job.call->task().wholeChunks;
  }
  std::size_t inFlightLimit(const Worker& w) const;
  Clock::time_point timeoutAt(const Worker& w) const;
  void send(Worker& w, Job job, Clock::time_point now, std::vector<Assignment>& out);
  void requeueAfterFront(Worker& w);  // the chunks behind the running one go out again
  static void frontChanged(Worker& w, Clock::time_point now);
  // The running chunk `h` of lost worker `w`, whose end says how far it got: its parts.
  // Adds what goes out again to `again`.
  void splitLost(const Worker& w, Held& h, const WorkerEnd& e, std::deque<Job>& again);
  std::exception_ptr lostError(const Worker& w, const Job& job, const WorkerEnd& e,
                               std::optional<std::uint64_t> item) const;
  static void end(Held& h, std::exception_ptr error);
  static void fail(Job& job, std::exception_ptr error);
  // Completes `job` (its Call's chunk, or its part of an Assembly).
  static void finish(Job& job, ChunkOutcome&& outcome);
  static void completeAssembly(Job& job);

  const SchedulerOptions options_;
  StatsCounter& stats_;
  std::deque<Job> queue_;
  std::deque<Worker> workers_;        // in the order they were added
  std::vector<Assignment> assigned_;  // assign()'s answer
};

}  // namespace plugpool::detail
