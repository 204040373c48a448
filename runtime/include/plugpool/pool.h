// plugpool/pool.h — a pool of worker processes running plugin tasks.
//
// A Pool starts `Options::workers` processes of plugpool-worker (exec'd, never forked from the
// host), each of which loads every plugin in `Options::plugins`. Hosts bind tasks by plugin
// and task name into typed handles, checked against the plugins' manifests, and run them with
// map / starmap / apply. Arguments and results travel as Cap'n Proto messages; nothing is
// pickled and no host memory is shared.
//
//   plugpool::Pool pool(4, {"examples"});
//   auto square = pool.task<int64_t(int64_t)>("examples", "square");
//   std::vector<int64_t> squares = pool.map(square, std::vector<int64_t>{1, 2, 3});
//
// Thread safety: a Pool may be used from many threads at once (task, map, starmap, apply,
// stats, plugins); calls from different threads interleave their chunks fairly in submission
// order. Destroying the Pool while another thread is inside one of its calls is undefined.
//
// Ownership and lifetime: the Pool owns its workers and one internal dispatcher thread, which
// does all process and socket work. Task handles are small values; they refer to the Pool's
// manifest by index and must only be used with the Pool that made them.
//
// Processes: workers are started with posix_spawn and supervised through pidfds. The pool
// waits only on its own workers' pids, so it never reaps the host application's other
// children, and it never changes the host's signal dispositions (its sockets use
// MSG_NOSIGNAL, so SIGPIPE cannot kill the host). If the host has set SIGCHLD to SIG_IGN,
// exit statuses of crashed workers are reported as unknown.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <kj/exception.h>

#include "plugpool/codec.h"
#include "plugpool/detail/call.h"
#include "plugpool/errors.h"
#include "plugpool/export.h"
#include "plugpool/manifest.h"

namespace plugpool {

namespace detail {
class Core;
}

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

struct Options {
  // Number of worker processes. 0: one per core (std::thread::hardware_concurrency()).
  unsigned workers = 0;

  // The plugins every worker loads. Each entry is a path (if it contains a '/') or a bare name
  // such as "examples", looked for as lib<name>.so or <name>.so in each directory of
  // $PLUGPOOL_PLUGIN_PATH (colon-separated), then in the build tree's plugins/ folder (when
  // libplugpool runs from a build tree), then in the installed plugin directory.
  std::vector<std::string> plugins;

  // How workers are started; see StartMethod.
  StartMethod startMethod = StartMethod::SPAWN;

  // The worker executable (SPAWN only). Empty: $PLUGPOOL_WORKER if set, else plugpool-worker next to
  // libplugpool (the build tree), else the installed one.
  std::string workerExecutable;

  // Chunks sent to one worker ahead of its replies, so it never waits for the host between
  // chunks. 2 hides one round trip; more only helps when chunks are tiny.
  unsigned chunksInFlight = 2;

  // The largest message either side may send, in bytes. Checked before allocating, so a
  // misbehaving worker cannot make the host allocate more. A chunk whose encoded arguments
  // exceed it is rejected by the host before sending. 512 MiB holds a 64 MiB payload with
  // room to spare.
  std::size_t maxMessageBytes = std::size_t{512} << 20;

  // How long a starting worker may take to load its plugins and report ready. Loading is
  // normally milliseconds; the default leaves room for slow disks and sanitizers.
  std::chrono::milliseconds startTimeout{30'000};

  // Shutdown: after a worker's channel is closed it exits at once unless it is stuck in a
  // task; after this long it is sent SIGKILL.
  std::chrono::milliseconds stopTimeout{2'000};
};

// Counters since the pool started. Read with Pool::stats(); a consistent snapshot.
struct Stats {
  std::uint64_t chunksSent = 0;
  std::uint64_t itemsSent = 0;
  std::uint64_t workersStarted = 0;  // including the initial ones
  std::uint64_t workersLost = 0;     // died unexpectedly (crash, kill, protocol error)
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

 private:
  friend class Pool;
  explicit Task(detail::TaskRef ref) : ref_(std::move(ref)) {}
  detail::TaskRef ref_;
};

class PLUGPOOL_API Pool {
 public:
  // Starts the workers and waits until every one has loaded every plugin.
  // Throws PluginError if a plugin cannot be loaded (missing, not a plugin, wrong ABI, two
  // plugins with one name), StartError if the workers cannot be started.
  explicit Pool(Options options = {});
  // Shorthand for the common case: `workers` processes (0: one per core) loading `plugins`,
  // everything else as in Options.
  Pool(unsigned workers, std::vector<std::string> plugins);

  // Waits for work already submitted to finish, then closes every worker's channel; a
  // worker exits when it sees its channel close. A worker still running after
  // Options::stopTimeout is killed. Returns only when every worker has been reaped.
  ~Pool();

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  unsigned workers() const;
  const std::vector<PluginInfo>& plugins() const;
  Stats stats() const;

  // Binds task `name` of plugin `plugin` with signature R(A...).
  // Throws PluginError if the plugin is not loaded in this pool, it has no such task, or the
  // task's manifest signature differs from R(A...), naming both signatures.
  template <typename Signature>
  Task<Signature> task(std::string_view plugin, std::string_view name) const;

  // Calls `task` once per element of `items` and returns the results in input order.
  // Items are sent in chunks of `chunksize` (0: defaultChunksize(size, workers())).
  // Throws the error of the first failed item in input order (TaskError, WorkerCrashed …);
  // the results of the other items are discarded.
  template <typename R, typename A, typename Range>
  std::vector<typename Task<R(A)>::Result> map(const Task<R(A)>& task, const Range& items,
                                               std::size_t chunksize = 0);

  // Like map, for tasks of several arguments: each element of `items` is a tuple (or pair)
  // of the arguments.
  template <typename R, typename... A, typename Range>
  std::vector<typename Task<R(A...)>::Result> starmap(const Task<R(A...)>& task, const Range& items,
                                                      std::size_t chunksize = 0);

  // Calls `task` once with `args` and returns its result. Throws as map does.
  template <typename R, typename... A, typename... U>
  typename Task<R(A...)>::Result apply(const Task<R(A...)>& task, U&&... args);

 private:
  detail::TaskRef bind(std::string_view plugin, std::string_view name,
                       const std::vector<std::string>& argTypes,
                       const std::string& resultType) const;
  void submit(const std::shared_ptr<detail::Call>& call, detail::ChunkRequest chunk);

  // Sends `items` in chunks of argument tuples of types A..., encoding each element with
  // encode(tuple builder, element), and returns the results of wire type W in order.
  template <typename W, typename... A, typename Range, typename Encode>
  std::vector<typename Codec<W>::Value> run(const detail::TaskRef& task, const Range& items,
                                            std::size_t chunksize, Encode&& encode);
  template <typename W>
  static void collect(const detail::TaskRef& task, const detail::ChunkOutcome& outcome,
                      std::vector<typename Codec<W>::Value>& out);

  std::unique_ptr<detail::Core> core_;
};

// --- implementation of the templates ---------------------------------------------------------

template <typename Signature>
Task<Signature> Pool::task(std::string_view plugin, std::string_view name) const {
  return [&]<typename R, typename... A>(std::type_identity<R(A...)>) {
    return Task<R(A...)>(bind(plugin, name, {typeName<A>()...}, typeName<R>()));
  }(std::type_identity<Signature>{});
}

template <typename W>
void Pool::collect(const detail::TaskRef& task, const detail::ChunkOutcome& outcome,
                   std::vector<typename Codec<W>::Value>& out) {
  if (outcome.failure) std::rethrow_exception(outcome.failure);
  if (!outcome.errors.empty()) detail::throwItemFailure(task, outcome.errors.front());
  try {
    for (auto result : outcome.results) out.push_back(std::get<0>(codec::readTuple<W>(result)));
  } catch (const DecodeError& e) {
    detail::throwUndecodable(task, e.what());
  } catch (const kj::Exception& e) {
    detail::throwUndecodable(task, e.getDescription().cStr());
  }
}

template <typename W, typename... A, typename Range, typename Encode>
std::vector<typename Codec<W>::Value> Pool::run(const detail::TaskRef& task, const Range& items,
                                                std::size_t chunksize, Encode&& encode) {
  using Layout = codec::TupleLayout<A...>;
  const auto n = static_cast<std::size_t>(std::size(items));
  if (chunksize == 0) chunksize = defaultChunksize(n, workers());
  auto call = std::make_shared<detail::Call>(task);
  auto it = std::begin(items);
  for (std::size_t start = 0; start < n; start += chunksize) {
    auto count = static_cast<unsigned>(std::min(chunksize, n - start));
    detail::ChunkRequest chunk(task, count, Layout::dataWords, Layout::pointers);
    auto list = chunk.items();
    for (unsigned i = 0; i < count; ++i, ++it) encode(list[i], *it);
    submit(call, std::move(chunk));
  }
  std::vector<typename Codec<W>::Value> out;
  out.reserve(n);
  for (std::size_t c = 0; c < call->chunks(); ++c) collect<W>(task, call->wait(c), out);
  return out;
}

template <typename R, typename A, typename Range>
std::vector<typename Task<R(A)>::Result> Pool::map(const Task<R(A)>& task, const Range& items,
                                                   std::size_t chunksize) {
  return run<WireTypeOf<R>, WireTypeOf<A>>(task.ref_, items, chunksize,
                                           [](capnp::AnyStruct::Builder out, const auto& item) {
                                             codec::writeTuple<WireTypeOf<A>>(out, item);
                                           });
}

template <typename R, typename... A, typename Range>
std::vector<typename Task<R(A...)>::Result> Pool::starmap(const Task<R(A...)>& task,
                                                          const Range& items,
                                                          std::size_t chunksize) {
  return run<WireTypeOf<R>, WireTypeOf<A>...>(
      task.ref_, items, chunksize, [](capnp::AnyStruct::Builder out, const auto& args) {
        std::apply([&](const auto&... a) { codec::writeTuple<WireTypeOf<A>...>(out, a...); }, args);
      });
}

template <typename R, typename... A, typename... U>
typename Task<R(A...)>::Result Pool::apply(const Task<R(A...)>& task, U&&... args) {
  static_assert(sizeof...(U) == sizeof...(A), "apply takes exactly the task's arguments");
  auto one = std::forward_as_tuple(args...);
  auto results = run<WireTypeOf<R>, WireTypeOf<A>...>(
      task.ref_, std::span(&one, 1), 1, [](capnp::AnyStruct::Builder out, const auto& a) {
        std::apply([&](const auto&... v) { codec::writeTuple<WireTypeOf<A>...>(out, v...); }, a);
      });
  return std::move(results.front());
}

}  // namespace plugpool
