// plugpool/pool.h — a pool of worker processes running plugin tasks.
//
// A Pool starts `Options::workers` processes (plugpool-worker, exec'd; or forked, see
// StartMethod), each of which loads every plugin in `Options::plugins`. Hosts bind tasks by
// plugin and task name into typed handles, checked against the plugins' manifests, and run
// them. Arguments and results travel as Cap'n Proto messages; nothing is pickled.
//
//   plugpool::Pool pool(4, {"examples"});
//   auto square = pool.task<int64_t(int64_t)>("examples", "square");
//   std::vector<int64_t> squares = pool.map(square, std::vector<int64_t>{1, 2, 3});
//
// The calls, by how they wait:
//   blocking   map, starmap, apply                     return the results
//   async      submit/applyAsync, mapAsync, starmapAsync  return a Future (future.h)
//   streaming  imap, imapUnordered                     return a lazy Stream (stream.h)
//
// Life of a pool: open → closed (close() or shutdown(): no new work, submitted work runs to
// the end) → stopped (join() or shutdown(wait) returns once every worker has exited).
// terminate(), terminateWorkers() and killWorkers() stop at once instead: unfinished work ends
// with Cancelled. Calls made after close throw PoolClosed.
//
// The destructor is shutdown(wait = true): it waits for all submitted work — futures and
// streams included — to finish, then stops the workers. It never silently drops work (unlike
// Python's `with Pool()`, bpo-29954); to drop it, call terminate() first.
//
// Thread safety: a Pool may be used from many threads at once (every member); calls from
// different threads interleave their chunks fairly in submission order. Destroying the Pool
// while another thread is inside one of its members is undefined. Futures and streams have
// their own contracts (future.h, stream.h).
//
// Ownership and lifetime: the Pool owns its workers, one internal dispatcher thread that does
// all process and socket work, and one callback thread (started with the first callback).
// Task handles are small values; they refer to the Pool's manifest by index and must only be
// used with the Pool that made them.
//
// Processes: workers are started with posix_spawn (or fork) and supervised through pidfds.
// The pool waits only on its own workers' pids, so it never reaps the host application's
// other children, and it never changes the host's signal dispositions (its sockets use
// MSG_NOSIGNAL, so SIGPIPE cannot kill the host). If the host has set SIGCHLD to SIG_IGN,
// exit statuses of crashed workers are reported as unknown. Each worker leads a process
// group of its own: what its tasks start dies with it (when the pool stops it, when it
// exits, when the host dies), unless it leaves the group (setsid). The pool's descriptors
// are never 0, 1 or 2, and a worker gets /dev/null for those of them the host has closed.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include <kj/exception.h>

#include "plugpool/codec.h"
#include "plugpool/detail/call.h"
#include "plugpool/dynamic.h"
#include "plugpool/errors.h"
#include "plugpool/export.h"
#include "plugpool/future.h"
#include "plugpool/manifest.h"
#include "plugpool/remote.h"
#include "plugpool/shared_bytes.h"
#include "plugpool/stream.h"

namespace plugpool {

namespace detail {
class Core;
struct PoolImpl;
struct InitializerAccess;
}  // namespace detail

// How a pool starts its worker processes.
enum class StartMethod {
  // posix_spawn of a fresh plugpool-worker: nothing of the host is inherited but stdin,
  // stdout and stderr. Safe in any host, threads or not. The default.
  SPAWN,
  // fork() of the host without exec: a worker starts with a copy of the host's memory as it
  // is at that moment, including plugins the host already loaded in-process (LocalPlugin)
  // and the state they hold, such as a large table loaded once before the pool starts.
  // Workers are forked from the pool's dispatcher thread whenever one starts (also when one
  // is replaced). HAZARD: only the forking thread exists in the child; a lock another host
  // thread held at that moment stays locked there forever, so a plugin task that takes
  // such a lock (its own, or one inside a library it shares with the host) deadlocks the
  // worker. The child closes every descriptor but its channel and stdin/out/err. Use fork
  // only when the inherited state is worth that risk.
  FORK,
};

// A task every worker runs once, before any other work (Python's initializer and initargs),
// e.g. to load a model or open a database per process. Make one with
// plugpool::initializer<Signature>(plugin, task, args...); it is bound against the manifest
// when the pool starts (a mismatch is a PluginError from the Pool constructor). If it throws
// or crashes the worker, the pool fails fast: the constructor throws StartError, or — for a
// worker started later — the pool stops taking work and every queued call ends with that
// StartError. It never respawns workers in a loop (CPython gh-87472). Its result is ignored.
class Initializer {
 public:
  Initializer() = default;
  explicit operator bool() const { return encode_ || dynamicEncode_; }
  const std::string& plugin() const { return plugin_; }
  const std::string& task() const { return task_; }

 private:
  friend class detail::Core;
  friend struct detail::InitializerAccess;
  std::string plugin_, task_;
  std::vector<std::string> argTypes_;
  std::string resultType_;
  std::uint16_t dataWords_ = 0, pointers_ = 0;
  std::function<void(capnp::AnyStruct::Builder)> encode_;  // writes the argument tuple
  // A dynamicInitializer's, until resolve() turns it into encode_ and the fields above.
  std::function<void(capnp::AnyStruct::Builder, const PluginInfo&, const TaskInfo&)> dynamicEncode_;
  PLUGPOOL_API void resolve(const PluginInfo& plugin, const TaskInfo& task);
  friend PLUGPOOL_API Initializer dynamicInitializer(
      std::string, std::string,
      std::function<void(capnp::AnyStruct::Builder, const PluginInfo&, const TaskInfo&)>);
};

template <typename Signature, typename... U>
Initializer initializer(std::string plugin, std::string task, U&&... args);

// An initializer whose arguments are written by type name, as a DynamicTask's are
// (dynamic.h): for a front end that converts its values by the task's declared types, which
// it learns only from the manifest. `encode` is called once, on the pool's dispatcher thread,
// when the first worker has reported its plugins, with the argument struct (of the task's
// argumentShape), its plugin's manifest (with the schemas of its structs) and the task's
// entry in it; what it wrote is sent to every worker. An
// exception from `encode` fails the pool's start: the Pool constructor throws it.
PLUGPOOL_API Initializer dynamicInitializer(
    std::string plugin, std::string task,
    std::function<void(capnp::AnyStruct::Builder, const PluginInfo&, const TaskInfo&)> encode);

// Resource limits every worker sets on itself (setrlimit) before it loads a plugin, so one
// task cannot take the machine down with it. 0: inherited from the host (no new limit).
// A limit the worker cannot set fails the pool's start with PluginError.
struct WorkerLimits {
  // Address space (RLIMIT_AS). Allocations past it fail: a C++ task sees std::bad_alloc and
  // its item fails with TaskError; code that does not handle the failure crashes its worker
  // (WorkerCrashed). Leave room for the worker itself (~20 MiB plus the plugins).
  std::uint64_t memoryBytes = 0;
  // CPU time of each worker process, all its tasks together (RLIMIT_CPU). Past it the kernel
  // ends the worker with SIGXCPU: the running chunk fails with WorkerCrashed and the worker is
  // replaced with a fresh budget. For a per-item wall-clock limit, use taskTimeout.
  std::chrono::seconds cpuTime{0};
  // Descriptors a worker may hold (RLIMIT_NOFILE); past it open() fails with EMFILE.
  std::uint64_t openFiles = 0;
};

struct Options {
  // Number of worker processes: 1 or more, or 0 for one per core
  // (std::thread::hardware_concurrency()); a negative count is a UsageError. At most this
  // many run tasks at once, also while one is being replaced (see maxTasksPerChild).
  int workers = 0;

  // The plugins every worker loads. Each entry is a path (if it contains a '/') or a bare name
  // such as "examples", looked for as lib<name>.so or <name>.so in each directory of
  // $PLUGPOOL_PLUGIN_PATH (colon-separated), then in the build tree's plugins/ folder (only
  // when libplugpool is that build tree's own, never an installed copy), then in the
  // installed plugin directory, and nowhere else. The first file found must be the plugin of
  // that name (PLUGPOOL_PLUGIN(name, ...)), or the pool refuses it: a path loads any plugin.
  std::vector<std::string> plugins;

  // How workers are started; see StartMethod.
  StartMethod startMethod = StartMethod::SPAWN;

  // The worker executable (SPAWN only). Empty: $PLUGPOOL_WORKER if set and not empty, else
  // plugpool-worker next to libplugpool when libplugpool is its build tree's own, else the
  // installed one. A file named here or by $PLUGPOOL_WORKER must be executable (StartError).
  std::string workerExecutable;

  // Chunks sent to one worker ahead of its replies, so it never waits for the host between
  // chunks. 0: automatic — 2, which hides one round trip, raised while the worker's chunks
  // are short to keep about 1 ms of work queued in it (at most 64): a tiny chunk is otherwise
  // mostly waiting for the host. Long chunks stay at 2, so no worker is promised more than
  // its share of slow work. A fixed number (1: strictly one chunk at a time) is kept as is.
  unsigned chunksInFlight = 0;

  // The largest message either side may send, in bytes. Checked before allocating, so a
  // misbehaving worker cannot make the host allocate more. A chunk whose encoded arguments
  // exceed it is rejected by the host before sending. 512 MiB holds a 64 MiB payload with
  // room to spare.
  std::size_t maxMessageBytes = std::size_t{512} << 20;

  // Run once in each worker before any work; see Initializer. Default: none.
  Initializer initializer;

  // Replace a worker after it has been sent this many items (0: never), to bound what a
  // leaky task can accumulate (Python's maxtasksperchild). A chunk is never split, so a
  // worker may run up to chunksize - 1 items more. The replacement starts as soon as the
  // limit is reached, but takes work only once the old worker has finished what it holds
  // (then the old one exits): never more than `workers` run tasks at once. No work is lost.
  std::uint64_t maxTasksPerChild = 0;

  // Chunks a stream (imap, imapUnordered) keeps outstanding when its call gives no window.
  // 0: automatic — 4 per worker, enough to keep every worker busy while the reader waits for
  // the slowest chunk, small enough that memory stays a few chunks; up to 16 times that while
  // chunks take under 1 ms of worker time (stream.h, WINDOW_GROWTH).
  std::size_t streamWindow = 0;

  // The longest an item may run (0: no limit). Per call: Task::withTimeout. When an item runs
  // past it, its worker is sent SIGTERM (SIGKILL after stopTimeout) and replaced at once; the
  // item fails with TaskTimeout (its item() says which); the items of its chunk that had run
  // keep their results, and the ones after it and the chunks queued behind it are sent to
  // other workers. Calls on a task with a timeout default to chunks of 1 item. A local worker
  // says when each item started (its reply log), so each item is timed alone whatever the
  // chunksize; a remote worker's chunk of n items may take n times the limit and fails as a
  // whole (as does a task made withWholeChunks()).
  std::chrono::milliseconds taskTimeout{0};

  // How many times an item whose worker crashed while running it is sent again before it
  // fails with WorkerCrashed. 0 (default): never — a crash is usually the input's fault and
  // would repeat. Raise it when crashes are transient (the OOM killer, a flaky library). A
  // local worker's crash costs only the item it was running: the items of its chunk that had
  // run keep their results and are not run again, the ones after it are sent again (they
  // never ran), as are the chunks queued behind it. A remote worker's crash, or one running a
  // task made withWholeChunks(), costs (or retries) its whole chunk.
  unsigned crashRetries = 0;

  // Resource limits of each worker; see WorkerLimits. Default: none beyond the host's own.
  WorkerLimits limits;

  // How long a starting worker may take to load its plugins, run the initializer and report
  // ready. Loading is normally milliseconds; the default leaves room for slow disks and
  // sanitizers. Raise it for a slow initializer.
  std::chrono::milliseconds startTimeout{30'000};

  // How long join(), shutdown(wait) and the destructor wait for submitted work after the pool
  // is closed (0: as long as it takes, as Python does). When it passes, the pool terminates:
  // unfinished calls end with Cancelled and the workers are stopped, so shutdown returns
  // even if a task hangs. (Per-item limits: taskTimeout.)
  std::chrono::milliseconds shutdownTimeout{0};

  // Grace period for a worker being stopped: after its channel is closed at shutdown, or
  // after SIGTERM (terminateWorkers, a task timeout), a worker still running this long later
  // is sent SIGKILL.
  std::chrono::milliseconds stopTimeout{2'000};

  // How long the memory of large messages (1 MiB or more) is kept warm after the last one: a
  // worker's shared regions keep their pages, and the host its last two freed message
  // buffers, so that the next such message writes to pages already faulted in (fresh ones
  // cost more than the copy). After this long without one they are given back to the system
  // (0: as soon as each message is done). 1 s keeps them through a steady stream of large
  // messages and returns them soon after a burst; raise it for bursts further apart, or in a
  // test that measures the pages while they are in use.
  std::chrono::milliseconds idleMemoryTimeout{1'000};

  // Where the workers run. Absent (the default): on this machine. Slurm{} or
  // LaunchCommand{...}: on other machines, each started by the cluster's engine or a launcher
  // command and connected back over TCP; everything else works as in a local pool
  // (remote.h). Needs StartMethod::SPAWN.
  std::optional<Remote> remote;
};

// Counters since the pool started. Read with Pool::stats(); a consistent snapshot.
struct Stats {
  std::uint64_t chunksSent = 0;
  std::uint64_t itemsSent = 0;
  std::uint64_t workersStarted = 0;      // including the initial ones
  std::uint64_t workersLost = 0;         // died unexpectedly (crash, kill, protocol error)
  std::uint64_t workersRetired = 0;      // replaced after maxTasksPerChild items
  std::uint64_t chunksTimedOut = 0;      // stopped by a task timeout
  std::uint64_t chunksRetried = 0;       // resent after a crash (Options::crashRetries)
  std::uint64_t sharedMessages = 0;      // messages (either way) whose large segments (1 MiB or
                                         // more) went through shared memory, not the socket
  std::uint64_t connectionsRefused = 0;  // remote pools: connections that did not prove to
                                         // be the worker expected (remote.h)
};

// Python's multiprocessing.Pool rule for map without a chunksize: ceil(n / (4 * workers)),
// at least 1. Four chunks per worker balance load without paying per-item messaging.
PLUGPOOL_API std::size_t defaultChunksize(std::size_t items, unsigned workers);

template <typename Signature>
class Task;

// A typed handle to a task: R is the result type, A... the argument types, as a host sees
// them (a Cap'n Proto struct type X stands for X::Reader arguments and Message<X> results).
template <typename R, typename... A>
class Task<R(A...)> {
 public:
  using Result = typename Codec<WireTypeOf<R>>::Value;

  const std::string& plugin() const { return ref_.pluginName; }
  const std::string& name() const { return ref_.taskName; }
  std::chrono::milliseconds timeout() const { return ref_.timeout; }

  // The same task with a per-item timeout (0: none) for the calls made with the copy,
  // instead of Options::taskTimeout. See Options::taskTimeout for what happens at expiry.
  Task withTimeout(std::chrono::milliseconds timeout) const {
    Task copy = *this;
    copy.ref_.timeout = timeout;
    return copy;
  }

  // The same task with whole-chunk failures, for calls whose items of one chunk stand or fall
  // together: a crash or a timeout fails (or, with crashRetries, resends) every item of the
  // chunk it happened in, and the chunk is timed as a whole (its items times the limit), as
  // for remote workers. By default only the item that was running fails.
  Task withWholeChunks() const {
    Task copy = *this;
    copy.ref_.wholeChunks = true;
    return copy;
  }

 private:
  friend class Pool;
  explicit Task(detail::TaskRef ref) : ref_(std::move(ref)) {}
  detail::TaskRef ref_;
};

class PLUGPOOL_API Pool {
 public:
  // Starts the workers and waits until every one has loaded every plugin (and run the
  // initializer, if any).
  // Throws UsageError if Options::workers is negative (before anything starts); PluginError
  // if a plugin cannot be loaded (missing, not a plugin, wrong ABI, an undefined symbol, two
  // plugins with one name, a file found by bare name that is another plugin) or the
  // initializer does not match its task; StartError if the workers cannot be started (the
  // worker executable named by Options::workerExecutable or $PLUGPOOL_WORKER is not one, or
  // none is found) or the initializer fails.
  explicit Pool(Options options = {});
  // Shorthand for the common case: `workers` processes (0: one per core; negative: UsageError)
  // loading `plugins`, everything else as in Options.
  Pool(int workers, std::vector<std::string> plugins);

  // shutdown(true): waits for submitted work to finish, then closes every worker's channel; a
  // worker exits when it sees its channel close, and one still running after
  // Options::stopTimeout is killed. Returns only when every worker has been reaped and every
  // queued callback has run. A stream with input not yet sent gets PoolClosed for each item
  // of it, and may be read to its end after the pool is gone (stream.h).
  ~Pool();

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // How many workers the pool keeps: Options::workers, with 0 resolved to the number of cores.
  unsigned workers() const;
  const std::vector<PluginInfo>& plugins() const;
  Stats stats() const;

  // Binds task `name` of plugin `plugin` with signature R(A...).
  // Throws PluginError if the plugin is not loaded in this pool, it has no such task, or the
  // task's manifest signature differs from R(A...), naming both signatures.
  template <typename Signature>
  Task<Signature> task(std::string_view plugin, std::string_view name) const;

  // --- Blocking calls --------------------------------------------------------------------

  // Calls `task` once per element of `items` (any input range) and returns the results in
  // input order. Items are sent in chunks of `chunksize` (0: defaultChunksize(size,
  // workers()); a range without a size is read into memory first, as Python does).
  // Throws the error of the first failed item in input order (TaskError, WorkerCrashed …);
  // the results of the other items are discarded. PoolClosed after close().
  template <typename R, typename A, typename Range>
  std::vector<typename Task<R(A)>::Result> map(const Task<R(A)>& task, Range&& items,
                                               std::size_t chunksize = 0);

  // Like map, for tasks of several arguments: each element of `items` is a tuple (or pair)
  // of the arguments.
  template <typename R, typename... A, typename Range>
  std::vector<typename Task<R(A...)>::Result> starmap(const Task<R(A...)>& task, Range&& items,
                                                      std::size_t chunksize = 0);

  // Calls `task` once with `args` and returns its result. Throws as map does.
  template <typename R, typename... A, typename... U>
  typename Task<R(A...)>::Result apply(const Task<R(A...)>& task, U&&... args);

  // --- Async calls: return at once with a Future (future.h) ---------------------------------

  // Sends one call of `task`. (Python: Executor.submit, Pool.apply_async.)
  template <typename R, typename... A, typename... U>
  Future<typename Task<R(A...)>::Result> submit(const Task<R(A...)>& task, U&&... args);
  template <typename R, typename... A, typename... U>
  Future<typename Task<R(A...)>::Result> applyAsync(const Task<R(A...)>& task, U&&... args) {
    return submit(task, std::forward<U>(args)...);
  }
  // map and starmap without waiting. The future's value is the whole result vector.
  template <typename R, typename A, typename Range>
  Future<std::vector<typename Task<R(A)>::Result>> mapAsync(const Task<R(A)>& task, Range&& items,
                                                            std::size_t chunksize = 0);
  template <typename R, typename... A, typename Range>
  Future<std::vector<typename Task<R(A...)>::Result>> starmapAsync(const Task<R(A...)>& task,
                                                                   Range&& items,
                                                                   std::size_t chunksize = 0);

  // --- Streams: lazy, bounded, for inputs of any length (stream.h) -------------------------

  // Results in input order, each as soon as it and those before it are in. `chunksize` 0:
  // adaptive; `window` 0: Options::streamWindow. (Python: Pool.imap, Executor.map.)
  template <typename R, typename A, typename Range>
  Stream<typename Task<R(A)>::Result> imap(const Task<R(A)>& task, Range&& items,
                                           std::size_t chunksize = 0, std::size_t window = 0);
  // Results as chunks finish, in no particular order. (Python: Pool.imap_unordered.)
  template <typename R, typename A, typename Range>
  Stream<typename Task<R(A)>::Result> imapUnordered(const Task<R(A)>& task, Range&& items,
                                                    std::size_t chunksize = 0,
                                                    std::size_t window = 0);

  // --- Untyped calls, for types known only at run time (dynamic.h) -----------------------

  // Binds task `name` of plugin `plugin` whatever its signature; its types are in info().
  // Throws PluginError if the plugin is not loaded in this pool or has no such task.
  DynamicTask dynamicTask(std::string_view plugin, std::string_view name) const;

  // Streams over `items` as imap / imapUnordered do, for a DynamicTask: `encode(args, item)`
  // writes each element's argument tuple into `args`, a struct already allocated with
  // task.argumentShape(). It runs on the reading thread, inside Stream::next(), as chunks are
  // filled; an exception it throws is an input error (stream.h): the items before that one
  // are sent, then next() throws the exception at its place and the stream ends. Results are
  // the calls' result tuples.
  template <typename Range, typename Encode>
  Stream<DynamicResult> imap(const DynamicTask& task, Range&& items, Encode encode,
                             std::size_t chunksize = 0, std::size_t window = 0);
  template <typename Range, typename Encode>
  Stream<DynamicResult> imapUnordered(const DynamicTask& task, Range&& items, Encode encode,
                                      std::size_t chunksize = 0, std::size_t window = 0);
  // mapAsync and submit for a DynamicTask: `encode(args, item)` (submit: `encode(args)`)
  // writes each call's argument tuple, as for imap, but all of them on the calling thread
  // before anything is sent, so an exception it throws propagates from here and nothing was
  // sent. The futures' values are the calls' result tuples, in input order.
  template <typename Range, typename Encode>
  Future<std::vector<DynamicResult>> mapAsync(const DynamicTask& task, Range&& items, Encode encode,
                                              std::size_t chunksize = 0);
  template <typename Encode>
  Future<DynamicResult> submit(const DynamicTask& task, Encode encode);

  // --- Life ------------------------------------------------------------------------------

  // No new work: later calls throw PoolClosed. Submitted work still runs; then the workers
  // exit. Returns at once. Idempotent. (Python: Pool.close.)
  void close();
  // Waits until every worker has exited (after all submitted work has finished). Throws
  // UsageError unless close(), shutdown() or terminate() came first. (Python: Pool.join.)
  void join();
  // close(); with `cancelPending`, work not yet sent to a worker ends with Cancelled (work
  // running in workers finishes); with `wait`, join(). (Python: Executor.shutdown(wait,
  // cancel_futures).)
  void shutdown(bool wait = true, bool cancelPending = false);
  // Stops now: no new work, every unfinished call ends with Cancelled, every worker is sent
  // SIGTERM (SIGKILL after Options::stopTimeout if it ignores it); returns once all are
  // reaped. The pool is unusable afterwards. (Python 3.14: Executor.terminate_workers;
  // Pool.terminate is the same thing.)
  void terminateWorkers();
  void terminate() { terminateWorkers(); }
  // Like terminateWorkers, with SIGKILL. (Python 3.14: Executor.kill_workers.)
  void killWorkers();
  // True after close(), shutdown() or terminate().
  bool closed() const;

 private:
  detail::TaskRef bind(std::string_view plugin, std::string_view name,
                       const std::vector<std::string>& argTypes,
                       const std::string& resultType) const;
  std::shared_ptr<detail::Call> newCall(const detail::TaskRef& task) const;
  std::size_t streamWindow(std::size_t asked) const;
  bool streamWindowGrows(std::size_t asked) const;  // automatic: neither call nor Options set it

  // The template helpers behind the calls above (detail/pool-inl.h).
  friend struct detail::PoolImpl;

  std::shared_ptr<detail::Core> core_;
  std::shared_ptr<detail::CallbackQueue> callbacks_;
};

}  // namespace plugpool

// The bodies of the templates above.
#define PLUGPOOL_POOL_INL_ALLOWED
#include "plugpool/detail/pool-inl.h"
#undef PLUGPOOL_POOL_INL_ALLOWED
