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
// Threads: submit(), stats(), plugins() and workers() may be called from any thread.
// Everything else runs on the dispatcher thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fd.h"
#include "framing.h"
#include "launcher.h"
#include "plugpool/detail/call.h"
#include "plugpool/manifest.h"
#include "plugpool/pool.h"
#include "wire.capnp.h"

namespace plugpool::detail {

class Core {
 public:
  // Starts the dispatcher and the workers; returns once all are ready.
  // Throws PluginError or StartError (see Pool::Pool).
  Core(Options options, std::vector<std::string> pluginPaths, std::string workerExecutable,
       std::unique_ptr<Launcher> launcher);
  // Finishes submitted work, stops the workers and reaps them (see Pool::~Pool).
  ~Core();

  unsigned workers() const { return options_.workers; }
  // Immutable once the constructor has returned.
  const std::vector<PluginInfo>& plugins() const { return plugins_; }
  Stats stats() const;

  // Queues chunk `index` of `call`. Never blocks on workers.
  void submit(std::shared_ptr<Call> call, std::size_t index, ChunkRequest chunk);

  static constexpr int MAX_START_FAILURES = 3;

 private:
  using Clock = std::chrono::steady_clock;

  struct Job {
    std::shared_ptr<Call> call;
    std::size_t index;
    ChunkRequest request;
    unsigned items;
  };
  struct InFlight {
    std::uint64_t id;
    Job job;
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
  };

  void run(std::promise<void>& started);
  bool startUp();  // the startup phase; false if the pool could not start
  void loop();
  void pollOnce();
  void takeIncoming();
  void dispatch();
  void beginClosing();
  void spawnWorker();

  // Reads everything available; handles messages. False if the channel ended or broke.
  bool drain(Worker& w);
  void handleMessage(Worker& w, kj::Array<capnp::word> words);
  void handleHello(Worker& w, wire::Hello::Reader hello);
  void handleChunkDone(Worker& w, wire::ChunkDone::Reader done, std::shared_ptr<const void> keep);
  void flush(Worker& w);
  void closeChannel(Worker& w);
  void violate(Worker& w, const std::string& why);  // kills the worker for a protocol error
  void reap(std::size_t slot);                      // the worker's pidfd fired

  void failAll(std::exception_ptr error);  // pending and incoming work
  void breakPool(std::exception_ptr error);
  static void fail(Job& job, std::exception_ptr error);
  void countStats(const Job& job);

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
  int startFailures_ = 0;      // consecutive workers that died before ready
  std::exception_ptr broken_;  // set once the pool cannot serve any more
  std::exception_ptr startError_;
  bool starting_ = true;
  bool closing_ = false;

  // Shared with callers.
  mutable std::mutex mutex_;
  std::deque<Job> incoming_;    // GUARDED_BY(mutex_)
  bool stopRequested_ = false;  // GUARDED_BY(mutex_)
  Stats stats_;                 // GUARDED_BY(mutex_)

  UniqueFd wake_;  // eventfd: submit() and ~Core() wake the dispatcher
  std::thread thread_;
};

}  // namespace plugpool::detail
