// pool_speedup — the seed lesson: 100 calls of a 100 ms task, first one after another in this
// process, then on a pool of 4 workers.
//
//   $ build/examples/pool_speedup
//   Serial: 10.01s
//   Parallel: 2.81s
//
// The serial run calls the very same plugin function in-process (plugpool::LocalPlugin);
// the pool sends it to worker processes with the default chunksize, ceil(100 / (4 * 4)) = 7.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <vector>

#include <plugpool/local_plugin.h>
#include <plugpool/pool.h>

namespace {

template <typename F>
double seconds(F&& f) {
  auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main() {
  std::vector<std::int64_t> items(100);
  std::iota(items.begin(), items.end(), 0);

  plugpool::LocalPlugin local("examples");
  auto slowHere = local.task<std::int64_t(std::int64_t)>("slow_task");
  std::vector<std::int64_t> serial;
  double serialTime = seconds([&] {
    for (auto x : items) serial.push_back(slowHere(x));
  });
  std::printf("Serial: %.2fs\n", serialTime);

  std::vector<std::int64_t> parallel;
  double parallelTime = seconds([&] {
    plugpool::Pool pool(4, {"examples"});
    auto slow = pool.task<std::int64_t(std::int64_t)>("examples", "slow_task");
    parallel = pool.map(slow, items);
  });
  std::printf("Parallel: %.2fs\n", parallelTime);

  if (parallel != serial) {
    std::fprintf(stderr, "pool_speedup: the pool's results differ from the serial ones\n");
    return 1;
  }
}
