// chunking — why map sends items in chunks: 10 000 calls of a trivial task (square) cost
// almost nothing to run, so the time goes to messaging. One item per message pays a round
// trip per item; a hundred per message pays it a hundred times less often.
//
//   $ build/examples/chunking
//   chunksize=1: 0.047s
//   chunksize=100: 0.001s
//   default (625): 0.000s
//
// (2 cores, load average 1.1; the README's "Chunking" gives the range, 0.03-0.05 s at 1.)
//
// The default is Python's rule, ceil(items / (4 * workers)): plugpool::defaultChunksize.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <vector>

#include <plugpool/pool.h>

namespace {

using Int = std::int64_t;

template <typename F>
double seconds(F&& f) {
  auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main() {
  plugpool::Pool pool(4, {"examples"});
  auto square = pool.task<Int(Int)>("examples", "square");

  std::vector<Int> items(10'000);
  std::iota(items.begin(), items.end(), 0);

  // Every run must give the same results; only the time differs.
  std::vector<Int> expected(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) expected[i] = items[i] * items[i];
  bool allRight = true;

  // One run of map with `chunksize` (0: the default), timed.
  auto timedMap = [&](std::size_t chunksize) {
    std::vector<Int> results;
    double time = seconds([&] { results = pool.map(square, items, chunksize); });
    allRight = allRight && results == expected;
    return time;
  };

  std::printf("chunksize=1: %.3fs\n", timedMap(1));
  std::printf("chunksize=100: %.3fs\n", timedMap(100));
  std::size_t fallback = plugpool::defaultChunksize(items.size(), pool.workers());
  std::printf("default (%zu): %.3fs\n", fallback, timedMap(0));

  if (!allRight) {
    std::fprintf(stderr, "chunking: a map returned wrong results\n");
    return 1;
  }
}
