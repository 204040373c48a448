// core.h — the pool's dispatcher: workers, channels, scheduling. Internal.
//
// One dispatcher thread owns every worker process and socket. Callers hand it chunks through
// submit(); it keeps up to Options::chunksInFlight chunks on each ready worker, reads replies
// as they arrive, and completes each chunk's Call exactly once: with the worker's results, or
// with an error if the chunk was lost (worker died, protocol error, pool broken).
//
// Supervision: each worker is watched through its pidfd, so a death is seen even while the
// worker is silent, and it is reaped with waitpid on its own pid only. The pool keeps
// Options::workers workers: one that dies, times out or retires is replaced. Options::workers
// also bounds the workers running tasks at once (runsTasks): a retiring worker's replacement
// starts at once, warm, but takes work only once the retiring one has answered all it holds.
// A worker stopped on purpose no longer counts: its running chunk has ended (timed out,
// cancelled) and it has been signalled, so its replacement takes work at once, even while a
// task that ignores SIGTERM runs on until the SIGKILL after stopTimeout. A start that
// fails (the launcher fails, the worker dies before it is ready, its plugins do not load, its
// initializer fails) is tried again after a backoff, START_BACKOFF doubling to
// MAX_START_BACKOFF, never in a loop; once MAX_START_FAILURES have failed in a row (or one
// that cannot succeed by trying again: plugins, initializer), work that no ready worker can
// take fails at once with the last start error. The first start that succeeds heals the pool.
//
// Nothing the dispatcher thread meets ends the host. A reply that cannot be allocated fails
// its chunk and costs its worker; any other error escaping the loop breaks the pool: every
// worker is killed and reaped, and every pending and later call ends with PoolBroken.
//
// Work that was sent to a worker that then died is not all lost: the worker runs its chunks in
// order, so only the first unanswered chunk was running. That one fails (WorkerCrashed,
// ProtocolError, or Cancelled if the caller killed it); the chunks queued behind it are sent
// again to another worker.
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

#include "big_buffers.h"
#include "decode.h"
#include "fd.h"
#include "framing.h"
#include "launcher.h"
#include "plugpool/detail/call.h"
#include "plugpool/manifest.h"
#include "plugpool/pool.h"
#include "shared_memory.h"
#include "wire.capnp.h"

namespace plugpool::detail {

class Core {
 public:
  // Starts the dispatcher and the workers; returns once all are ready.
  // REQUIRES: options.workers >= 1 (Pool::Pool refuses a negative count and resolves 0).
  // Throws PluginError or StartError (see Pool::Pool).
  Core(Options options, std::vector<std::string> pluginPaths, std::string workerExecutable,
       std::unique_ptr<Launcher> launcher);
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
  // close(), end every unfinished chunk with Cancelled and send `signal` to every worker
  // (SIGKILL after stopTimeout if one survives). Returns once every worker is reaped.
  void terminate(int signal);
  // Waits until every worker has exited and been reaped. Throws UsageError before close().
  void join();
  bool closed() const;
  // Throws PoolBroken if the pool broke, PoolClosed if it is closed; else nothing.
  void checkOpen() const;

  static constexpr int MAX_START_FAILURES = 3;
  static constexpr std::chrono::milliseconds START_BACKOFF{100};
  static constexpr std::chrono::milliseconds MAX_START_BACKOFF{10'000};

 private:
  using Clock = std::chrono::steady_clock;

  struct Job {
    std::shared_ptr<Call> call;
    std::size_t index;
    std::shared_ptr<capnp::MallocMessageBuilder> message;  // a Run; its id set per sending
    unsigned items;
    std::uint64_t firstItem;  // the call's index of its first item
    unsigned attempts = 0;    // times resent after its worker crashed running it
  };
  // Counts a chunk as on a worker for Call::running() while it lives (in a worker's inFlight).
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
  struct InFlight {
    std::uint64_t id;
    Job job;
    bool ended = false;  // already completed (cancelled); its reply is dropped
    OnWorker onWorker;   // declared after `job`: ends before the Job lets go of its Call
  };
  struct Control {
    enum Kind { CANCEL, DISCARD, CANCEL_QUEUED, TERMINATE } kind;
    std::shared_ptr<Call> call;
    int signal = 0;
    std::shared_ptr<std::promise<void>> done;
  };
  enum class State { STARTING, READY, CLOSING };
  struct Worker {
    explicit Worker(std::uint64_t maxWords) : reader(maxWords) {}
    SpawnedProcess process;
    FrameReader reader;
    FrameWriter writer;
    State state = State::STARTING;
    std::deque<InFlight> inFlight;
    Clock::time_point deadline;  // STARTING: ready by; CLOSING: exit by
    std::string violation;       // why we killed it, if we did
    bool channelOpen = true;
    std::uint64_t initId = 0;       // STARTING: the initializer's Run, if one was sent
    std::uint64_t itemsSent = 0;    // for maxTasksPerChild
    bool retiring = false;          // takes no more work; closed once idle
    bool stoppedOnPurpose = false;  // killed by cancel/terminate/timeout: not counted as lost
    // Its stream ended inside a message (TruncatedStream): until `endBy`, its own death (it
    // was killed while it wrote) is a crash; if it has not ended by then, it is a violation.
    std::string truncated;
    std::optional<Clock::time_point> endBy;
    std::exception_ptr runningError;  // set: how its running chunk fails when it is reaped
    std::optional<CrashContent> crash;  // what it said as it died of a fatal signal
    Clock::time_point frontSince;     // when the first unanswered chunk started running
    std::uint64_t chunkNs = 0;        // its chunks' smoothed run time; 0 until one ends
    // Shared segments (shared_memory.h): our region and the worker's, passed with Setup; used
    // once its Hello agrees. `sharedSince` is when they last carried a message, while they
    // may hold pages worth giving back (see trimShared).
    std::shared_ptr<SharedRegion> toWorker, toHost;
    bool shared = false;
    std::optional<Clock::time_point> sharedSince;
  };

  void run(std::promise<void>& started);
  bool startUp();  // the startup phase; false if the pool could not start
  void loop();
  // After an error escaped the loop (or startUp): kills and reaps every worker without the
  // event loop, ends every unfinished chunk and every later submit with `error`. No-throw.
  void abandon(std::exception_ptr error) noexcept;
  // Starts workers while fewer than Options::workers serve and no start backoff runs.
  void supervise();
  // Counts a failed start (after the startup phase) and sets the backoff before the next.
  // `final`: trying again soon cannot help (plugins, initializer): fail waiting work now.
  void startFailed(std::exception_ptr error, bool final = false);
  bool startsFailing() const { return startFailures_ >= MAX_START_FAILURES; }
  std::size_t serving() const;  // workers not stopping or retiring
  // Whether `w` may be running a task: it holds chunks it has not answered (even ones that
  // have ended, e.g. cancelled while queued in it: it still runs them), unless the pool is
  // stopping it on purpose (timeout, cancel, terminate). A worker that crashed counts until it
  // is reaped. At most Options::workers workers run tasks; see dispatch().
  static bool runsTasks(const Worker& w);
  bool canServe() const;        // a ready worker takes work
  bool loneChunk() const;       // exactly one chunk is out and none waits
  void pollOnce();
  void takeIncoming();
  void takeControls();
  void runControl(Control& control);
  // Ends everything unfinished with Cancelled ("<why> before/while it ran") and sends `signal`
  // to every worker (SIGKILL after stopTimeout). The pool then only winds down.
  void terminateNow(int signal, const std::string& why);
  void retireIdle();
  void dispatch();
  std::size_t inFlightLimit(const Worker& w) const;  // chunks w may hold (Options::chunksInFlight)
  void send(Worker& w, Job job);                     // queues the chunk on w; dispatch() writes it
  void sendInitializer(Worker& w);
  void becomeReady(Worker& w);
  // When the chunk `w` is running overruns its timeout, or max() if it has none.
  Clock::time_point timeoutAt(const Worker& w) const;
  void timeOut(Worker& w);  // stops `w`, fails its running chunk, resends the others
  void beginClosing();
  bool spawnWorker();          // false if the launcher failed (counted by startFailed)
  void noteShared(Worker& w);  // a message went through w's shared regions
  void trimShared();           // gives back the pages of regions idle for idleMemoryTimeout

  // Reads everything available; handles messages. False if the channel ended or broke.
  bool drain(Worker& w);
  void handleMessage(Worker& w, kj::Array<capnp::word> words);
  void handleHello(Worker& w, wire::Hello::Reader hello);
  void handleChunkDone(Worker& w, wire::ChunkDone::Reader done, std::shared_ptr<const void> keep);
  void flush(Worker& w);
  void closeChannel(Worker& w);
  // The channel ended or broke, or the worker broke the protocol: it can answer no more.
  void channelEnded(Worker& w);
  // A reply of `bytes` could not be allocated: its chunk fails, the worker is replaced.
  void replyUnallocatable(Worker& w, std::uint64_t bytes);
  // Sends `signal` to the worker's process group: the worker and what its tasks started.
  // The only place the dispatcher signals a worker process.
  void signalWorker(Worker& w, int signal);
  void violate(Worker& w, const std::string& why);  // kills the worker for a protocol error
  void reap(std::size_t slot);                      // the worker's pidfd fired

  void failAll(std::exception_ptr error);  // pending and incoming work
  void fail(InFlight& f, std::exception_ptr error);
  void post(Control control);  // queues for the dispatcher and waits until it has run
  static void fail(Job& job, std::exception_ptr error);
  void countStats(const Job& job);

  KeepFreedBuffers keepBuffers_;  // large message buffers are reused while the pool lives
  Options options_;
  const unsigned workers_;  // options_.workers: the workers kept, and at most running tasks
  std::vector<std::string> pluginPaths_;
  std::string workerExecutable_;
  std::unique_ptr<Launcher> launcher_;
  const std::uint64_t maxWords_;
  std::vector<PluginInfo> plugins_;

  // Dispatcher thread only.
  std::vector<std::unique_ptr<Worker>> slots_;
  std::deque<Job> pending_;
  std::uint64_t nextId_ = 1;
  std::optional<TaskRef> initializer_;              // bound at the first Hello
  std::optional<Clock::time_point> closeDeadline_;  // closed: when shutdownTimeout runs out
  int startFailures_ = 0;              // consecutive starts that failed (after startup)
  std::exception_ptr lastStartError_;  // the last of them
  Clock::time_point nextStartAt_{};    // no start before this (backoff)
  std::exception_ptr startError_;      // startup phase: why the pool could not start
  bool starting_ = true;
  bool closing_ = false;

  // Shared with callers.
  mutable std::mutex mutex_;
  std::deque<Job> incoming_;       // GUARDED_BY(mutex_)
  std::vector<Control> controls_;  // GUARDED_BY(mutex_)
  bool closeRequested_ = false;    // GUARDED_BY(mutex_)
  bool exited_ = false;            // GUARDED_BY(mutex_)
  std::exception_ptr broken_;      // GUARDED_BY(mutex_); PoolBroken, once abandoned
  Stats stats_;                    // GUARDED_BY(mutex_)
  std::promise<void> exitedPromise_;
  std::shared_future<void> exitedFuture_;
  std::once_flag joined_;

  UniqueFd wake_;  // eventfd: submit() and ~Core() wake the dispatcher
  std::thread thread_;
};

}  // namespace plugpool::detail
