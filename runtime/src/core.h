// core.h — the pool's dispatcher: one thread that carries out the pool's decisions. Internal.
//
// Callers hand it chunks and controls through its Mailbox (mailbox.h). It keeps no policy and
// makes no system call on a worker itself: the Scheduler (scheduler.h) says which chunk goes
// where and what becomes of chunks when a worker is lost, times out or is cancelled; each
// worker is a WorkerLink (worker_link.h) started by the pool's Transport, whose HostSession
// checks every message. Each round of its loop is the same phases in order: take the mailbox,
// expire (task timeouts, start and stop deadlines, the links' timers), supervise (retire idle
// workers, start missing ones), assign, flush, wind down, poll (the links report in here).
// It completes each chunk's Call exactly once: with the worker's results, or with an error if
// the chunk was lost (worker died, protocol error, pool broken).
//
// Supervision: the pool keeps Options::workers workers: one that dies, times out or retires is
// replaced. A worker is stopped in one way only, stop(): `Stop` now, then SIGKILL if it is
// still there after stopTimeout; a worker the pool stops is no loss, and its replacement takes
// work at once, even while a task that ignores SIGTERM runs on until that SIGKILL. A start that
// fails (the transport fails, the worker dies before it is ready, its plugins do not load, its
// initializer fails) is tried again after a backoff, START_BACKOFF doubling to
// MAX_START_BACKOFF, never in a loop; once MAX_START_FAILURES have failed in a row (or one
// that cannot succeed by trying again: plugins, initializer), work that no ready worker can
// take fails at once with the last start error. The first start that succeeds heals the pool.
//
// Nothing the dispatcher thread meets ends the host. A reply that cannot be allocated fails
// its chunk and costs its worker; any other error escaping the loop breaks the pool: every
// worker is killed and reaped, and every pending and later call ends with PoolBroken.
//
// Life: open → closed (close(): no new work; queued work still runs) → closing (idle or
// terminated: channels closed, workers exit or are killed after stopTimeout) → exited (the
// dispatcher thread has reaped every worker and returned). join() waits for exited.
//
// Threads: the public members may be called from any thread. Everything else runs on the
// dispatcher thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>

#include "big_buffers.h"
#include "fd.h"
#include "host_session.h"
#include "mailbox.h"
#include "plugpool/detail/call.h"
#include "plugpool/manifest.h"
#include "plugpool/pool.h"
#include "scheduler.h"
#include "thread_annotations.h"
#include "worker_link.h"

namespace plugpool::detail {

class Core final : private LinkEvents {
 public:
  // Starts the dispatcher and the workers; returns once all are ready.
  // REQUIRES: options.workers >= 1 (Pool::Pool refuses a negative count and resolves 0).
  // Throws PluginError or StartError (see Pool::Pool).
  Core(Options options, std::vector<std::string> pluginPaths, std::unique_ptr<Transport> transport);
  // close(), then join().
  ~Core();

  unsigned workers() const { return workers_; }
  const Options& options() const { return options_; }
  // Immutable once the constructor has returned.
  const std::vector<PluginInfo>& plugins() const { return plugins_; }
  Stats stats() const;

  // Queues chunk `index` of `call`, whose first item is item `firstItem` of the call. Never
  // blocks on workers. Throws PoolClosed after close().
  void submit(std::shared_ptr<Call> call, std::size_t index, std::uint64_t firstItem,
              ChunkRequest chunk);
  // Ends `call`'s chunks with Cancelled: the queued ones, and if `running`, the ones sent to
  // workers too (a worker running one is killed and replaced). Returns once done.
  void cancel(std::shared_ptr<Call> call, bool running);

  // No new work; what was submitted still runs, then the workers stop. Idempotent.
  void close();
  // close(), and end every chunk not yet sent to a worker with Cancelled.
  void cancelQueued();
  // close(), end every unfinished chunk with Cancelled and stop every worker `how` (SIGKILL
  // after stopTimeout if one survives). Returns once every worker is reaped.
  void terminate(Stop how);
  // Waits until every worker has exited and been reaped. Throws UsageError before close().
  void join();
  bool closed() const;
  // Throws PoolBroken if the pool broke, PoolClosed if it is closed; else nothing.
  void checkOpen() const;

  static constexpr int MAX_START_FAILURES = 3;
  static constexpr std::chrono::milliseconds START_BACKOFF{100};
  static constexpr std::chrono::milliseconds MAX_START_BACKOFF{10'000};

 private:
  enum class State { STARTING, READY, CLOSING };
  // One worker, as supervision sees it; the scheduler holds its chunks.
  struct Worker {
    WorkerId id;
    std::unique_ptr<WorkerLink> link;
    State state = State::STARTING;
    Clock::time_point deadline;    // STARTING: ready by; CLOSING: killed by
    bool onPurpose = false;        // the pool stopped it: its end is no loss
    std::optional<WorkerEnd> end;  // it ended; settled after the poll round
  };

  void run(std::promise<void>& started);
  bool startUp();  // the startup phase; false if the pool could not start
  void loop();
  // After an error escaped the loop (or startUp): kills and reaps every worker without the
  // event loop, ends every unfinished chunk and every later submit with `error`. No-throw.
  void abandon(std::exception_ptr error) noexcept;

  // The loop's phases, in order.
  void takeMailbox();                  // submitted chunks and controls
  void takeIncoming();                 // submitted chunks: to the scheduler (or failed if closing)
  void expire(Clock::time_point now);  // task timeouts, start and stop deadlines, link timers
  void supervise();                    // retire idle workers, replace()
  void replace();                      // start workers while fewer than Options::workers serve
  void assign();                       // the scheduler's chunks to their links
  void flushAll();
  bool windDown();  // shutdownTimeout, closing; true once every worker is gone
  void poll();      // waits; links report their events in here

  // LinkEvents.
  void received(WorkerLink& link, HostSession::Incoming&& message) override;
  void closed(WorkerLink& link) override;
  void ended(WorkerLink& link, WorkerEnd end) override;
  void sharedMessage() override { stats_.add(&Stats::sharedMessages); }
  void refused(const std::string&) override { stats_.add(&Stats::connectionsRefused); }

  // Supervision.
  bool startWorker();  // false if no worker could be started (counted by startFailed)
  // Counts a failed start (after the startup phase) and sets the backoff before the next.
  // `final`: trying again soon cannot help (plugins, initializer): fail waiting work now.
  void startFailed(std::exception_ptr error, bool final = false);
  bool startsFailing() const { return startFailures_ >= MAX_START_FAILURES; }
  void hello(Worker& w, HelloContent hello);
  void initialized(Worker& w, const ChunkOutcome& outcome);
  void becomeReady(Worker& w);
  // The one way the pool stops a worker: `how` now, SIGKILL if it is still there after
  // stopTimeout. It takes no more work, and its end is no loss.
  void stop(Worker& w, Stop how);
  void settle(std::size_t slot);  // its link ended: count it, replace it, settle its chunks
  std::size_t serving() const;    // workers not stopping or retiring
  Worker* find(const WorkerLink& link);
  Worker* find(WorkerId id);
  void runControl(Control& control);
  // Ends everything unfinished with Cancelled ("<why> before/while it ran") and stops every
  // worker `how`. The pool then only winds down.
  void terminateNow(Stop how, const std::string& why);

  KeepFreedBuffers keepBuffers_;  // large message buffers are reused while the pool lives
  Options options_;
  const unsigned workers_;  // options_.workers: the workers kept, and at most running tasks
  std::shared_ptr<const SessionConfig> session_;
  std::unique_ptr<Transport> transport_;
  std::vector<PluginInfo> plugins_;
  StatsCounter stats_;

  // Dispatcher thread only.
  Scheduler scheduler_;
  std::vector<Worker> slots_;
  WorkerId nextWorker_ = 1;
  std::optional<TaskRef> initializer_;              // bound at the first Hello
  std::optional<Clock::time_point> closeDeadline_;  // closed: when shutdownTimeout runs out
  int startFailures_ = 0;              // consecutive starts that failed (after startup)
  std::exception_ptr lastStartError_;  // the last of them
  Clock::time_point nextStartAt_{};    // no start before this (backoff)
  std::exception_ptr startError_;      // startup phase: why the pool could not start
  bool starting_ = true;
  bool closing_ = false;
  std::vector<pollfd> fds_;           // poll()'s, reused
  std::vector<std::size_t> watched_;  // where each slot's entries start in fds_

  // Shared with callers.
  Mailbox mailbox_;
  std::promise<void> exitedPromise_;
  std::shared_future<void> exitedFuture_;
  std::once_flag joined_;
  std::thread thread_;
};

}  // namespace plugpool::detail
