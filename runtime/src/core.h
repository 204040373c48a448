// core.h — the pool's dispatcher: workers, channels, scheduling. Internal.
//
// One dispatcher thread owns every worker process and socket. Callers hand it chunks through
// submit(); it keeps up to Options::chunksInFlight chunks on each ready worker, reads replies
// as they arrive, and completes each chunk's Call exactly once: with the worker's results, or
// with an error if the chunk was lost (worker died, protocol error, pool broken).
//
// Supervision: each worker is watched through its pidfd, so a death is seen even while the
// worker is silent, and it is reaped with waitpid on its own pid only. A worker that dies
// while serving is replaced. Workers that keep dying before they are ready
// (MAX_START_FAILURES in a row) break the pool: everything pending and submitted later fails
// with StartError instead of respawning forever.
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
#include <vector>

#include "big_buffers.h"
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
  // Throws PluginError or StartError (see Pool::Pool).
  Core(Options options, std::vector<std::string> pluginPaths, std::string workerExecutable,
       std::unique_ptr<Launcher> launcher);
  // close(), then join().
  ~Core();

  unsigned workers() const { return options_.workers; }
  const Options& options() const { return options_; }
  // Immutable once the constructor has returned.
  const std::vector<PluginInfo>& plugins() const { return plugins_; }
  Stats stats() const;

  // Queues chunk `index` of `call`. Never blocks on workers. Throws PoolClosed after close().
  void submit(std::shared_ptr<Call> call, std::size_t index, ChunkRequest chunk);
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

  static constexpr int MAX_START_FAILURES = 3;

 private:
  using Clock = std::chrono::steady_clock;

  struct Job {
    std::shared_ptr<Call> call;
    std::size_t index;
    std::shared_ptr<capnp::MallocMessageBuilder> message;  // a Run; its id set per sending
    unsigned items;
    unsigned attempts = 0;  // times resent after its worker crashed running it
  };
  struct InFlight {
    std::uint64_t id;
    Job job;
    bool ended = false;  // already completed (cancelled); its reply is dropped
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
    Clock::time_point frontSince;   // when the first unanswered chunk started running
    std::uint64_t chunkNs = 0;      // its chunks' smoothed run time; 0 until one ends
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
  bool loneChunk() const;  // exactly one chunk is out and none waits
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
  void spawnWorker();
  void noteShared(Worker& w);  // a message went through w's shared regions
  void trimShared();           // gives back the pages of regions idle for idleMemoryTimeout

  // Reads everything available; handles messages. False if the channel ended or broke.
  bool drain(Worker& w);
  void handleMessage(Worker& w, kj::Array<capnp::word> words);
  void handleHello(Worker& w, wire::Hello::Reader hello);
  void handleChunkDone(Worker& w, wire::ChunkDone::Reader done, std::shared_ptr<const void> keep);
  void flush(Worker& w);
  void closeChannel(Worker& w);
  // Sends `signal` to the worker. The only place the dispatcher signals a worker process.
  void signalWorker(Worker& w, int signal);
  void violate(Worker& w, const std::string& why);  // kills the worker for a protocol error
  void reap(std::size_t slot);                      // the worker's pidfd fired

  void failAll(std::exception_ptr error);  // pending and incoming work
  void fail(InFlight& f, std::exception_ptr error);
  void post(Control control);  // queues for the dispatcher and waits until it has run
  void breakPool(std::exception_ptr error);
  static void fail(Job& job, std::exception_ptr error);
  void countStats(const Job& job);

  KeepFreedBuffers keepBuffers_;  // large message buffers are reused while the pool lives
  Options options_;
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
  int startFailures_ = 0;                           // consecutive workers that died before ready
  std::exception_ptr broken_;                       // set once the pool cannot serve any more
  std::exception_ptr startError_;
  bool starting_ = true;
  bool closing_ = false;

  // Shared with callers.
  mutable std::mutex mutex_;
  std::deque<Job> incoming_;       // GUARDED_BY(mutex_)
  std::vector<Control> controls_;  // GUARDED_BY(mutex_)
  bool closeRequested_ = false;    // GUARDED_BY(mutex_)
  bool exited_ = false;            // GUARDED_BY(mutex_)
  Stats stats_;                    // GUARDED_BY(mutex_)
  std::promise<void> exitedPromise_;
  std::shared_future<void> exitedFuture_;
  std::once_flag joined_;

  UniqueFd wake_;  // eventfd: submit() and ~Core() wake the dispatcher
  std::thread thread_;
};

}  // namespace plugpool::detail
