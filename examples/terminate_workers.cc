// terminate_workers — stopping a pool now instead of waiting for its work. Eight 10-second
// tasks go to two workers; a moment later terminateWorkers() (SIGTERM) ends them all, and
// every unfinished future ends with plugpool::Cancelled. killWorkers() does the same with
// SIGKILL. Either way the pool is closed for good afterwards. The program takes well under a
// second, not 40.
//
//   $ build/examples/terminate_workers
//   terminateWorkers(): returned in 0.003s
//   task 0: Cancelled (cancelled: the pool was terminated while it ran)
//   ...
//   task 7: Cancelled (cancelled: the pool was terminated before it ran)
//   killWorkers(): returned in 0.002s
//   task 0: Cancelled (cancelled: the pool was terminated while it ran)
//   ...
//   after killWorkers(): submit throws PoolClosed (the pool is closed; it takes no new work)
//
// (Python: Pool.terminate(); concurrent.futures' terminate_workers() and kill_workers().)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include <plugpool/pool.h>

namespace {

using Int = std::int64_t;
using namespace std::chrono_literals;

// Submits eight 10-second tasks, then gives the workers a moment to start on the first ones.
std::vector<plugpool::Future<Int>> submitLongTasks(plugpool::Pool& pool) {
  auto sleepMs = pool.task<Int(Int)>("examples", "sleep_ms");
  std::vector<plugpool::Future<Int>> futures;
  for (int i = 0; i < 8; ++i) futures.push_back(pool.submit(sleepMs, 10'000));
  std::this_thread::sleep_for(200ms);
  return futures;
}

// Calls stop() and prints how long it took.
template <typename F>
void timed(const char* label, F&& stop) {
  auto start = std::chrono::steady_clock::now();
  stop();
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("%s: returned in %.3fs\n", label, took.count());
}

// Prints how each future ended. After a terminate every one is ready, so get() does not wait.
void printOutcomes(const std::vector<plugpool::Future<Int>>& futures) {
  for (std::size_t i = 0; i < futures.size(); ++i) {
    try {
      std::printf("task %zu: finished with %lld\n", i, static_cast<long long>(futures[i].get()));
    } catch (const plugpool::Cancelled& e) {
      std::printf("task %zu: Cancelled (%s)\n", i, e.what());
    } catch (const plugpool::Error& e) {
      std::printf("task %zu: failed (%s)\n", i, e.what());
    }
  }
}

}  // namespace

int main() {
  // terminateWorkers: SIGTERM to every worker; returns once all have been reaped.
  {
    plugpool::Pool pool(2, {"examples"});
    auto futures = submitLongTasks(pool);
    timed("terminateWorkers()", [&] { pool.terminateWorkers(); });
    printOutcomes(futures);
  }

  // killWorkers: the same with SIGKILL, for workers that might ignore SIGTERM.
  {
    plugpool::Pool pool(2, {"examples"});
    auto futures = submitLongTasks(pool);
    timed("killWorkers()", [&] { pool.killWorkers(); });
    printOutcomes(futures);

    // The pool is closed now: new work is refused.
    auto square = pool.task<Int(Int)>("examples", "square");
    try {
      pool.submit(square, 2);
      std::printf("after killWorkers(): submit was accepted?\n");
    } catch (const plugpool::PoolClosed& e) {
      std::printf("after killWorkers(): submit throws PoolClosed (%s)\n", e.what());
    }
  }
}
