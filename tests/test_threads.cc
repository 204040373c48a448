// One Pool used from many host threads at once: every kind of call, interleaved, with results
// checked. Also built and run under ThreadSanitizer (the tsan suite; see setup.sh).
#include <atomic>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "support.h"

using plugpool::Pool;
using Int = std::int64_t;

TEST_CASE("many threads share one pool") {
  testing::ProcessSnapshot before;
  constexpr int THREADS = 6;
  std::atomic<Int> callbackSum{0};
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto fail = pool.task<Int(Int)>("examples", "fail");
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < THREADS; ++t) {
      threads.emplace_back([&, t] {
        try {
          std::vector<Int> items(300);
          std::iota(items.begin(), items.end(), Int{t} * 1000);
          for (int round = 0; round < 3; ++round) {
            auto squares = pool.map(square, items, 1 + t);
            for (std::size_t i = 0; i < items.size(); ++i) {
              if (squares[i] != items[i] * items[i]) ++failures;
            }
            std::vector<plugpool::Future<Int>> futures;
            for (Int x = 0; x < 20; ++x) {
              futures.push_back(pool.submit(square, x));
              futures.back().then([&](const Int& v) { callbackSum += v; });
            }
            for (Int x = 0; x < 20; ++x) {
              if (futures[static_cast<std::size_t>(x)].get() != x * x) ++failures;
            }
            Int n = 0;
            for (Int v : pool.imapUnordered(square, items, 0, 3)) n += v >= 0;
            if (n != 300) ++failures;
            try {
              pool.apply(fail, Int{t});
              ++failures;
            } catch (const plugpool::TaskError&) {
            }
            (void)pool.stats();
          }
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    REQUIRE(failures == 0);
  }
  // The destructor ran every callback: 20 per round of each thread, of 0², 1², ... 19².
  REQUIRE(callbackSum == THREADS * 3 * 2470);
  testing::requireCleanShutdown(before);
}
