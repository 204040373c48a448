// Behaviours of Python's pools and futures that plugpool keeps (CPython's test suites for
// multiprocessing.Pool and concurrent.futures, ported case by case), named after them.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using namespace std::chrono_literals;
using plugpool::Future;
using plugpool::Pool;
using Int = std::int64_t;

TEST_CASE("asCompleted yields each future once, even if the list names it several times") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto a = pool.submit(sleep, 50);
    auto b = pool.submit(sleep, 10);
    std::vector<Future<Int>> futures{a, b, a, a, b};
    std::vector<std::size_t> yielded;
    for (std::size_t i : plugpool::asCompleted(futures)) yielded.push_back(i);
    std::sort(yielded.begin(), yielded.end());
    REQUIRE(yielded == std::vector<std::size_t>{0, 1});  // each at its first index
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a WaitTimeout from asCompleted says how many futures are unfinished") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    std::vector<Future<Int>> futures{pool.submit(sleep, 0), pool.submit(sleep, 0),
                                     pool.submit(sleep, 3000), pool.submit(sleep, 3000)};
    REQUIRE(futures[0].wait(60s));
    REQUIRE(futures[1].wait(60s));
    std::size_t seen = 0;
    try {
      for (std::size_t i : plugpool::asCompleted(futures, 100ms)) {
        (void)i;
        ++seen;
      }
      FAIL("no WaitTimeout");
    } catch (const plugpool::WaitTimeout& e) {
      REQUIRE_THAT(e.what(), Catch::Contains("2 (of 4) futures unfinished"));
    }
    REQUIRE(seen == 2);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("Future::running() is true while a chunk of the call is on a worker") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto f = pool.submit(sleep, 500);
    // The dispatcher sends it at once; poll for that without assuming how fast it is.
    bool sawRunning = false;
    for (int i = 0; i < 5000 && !sawRunning && !f.ready(); ++i) {
      sawRunning = f.running();
      std::this_thread::sleep_for(1ms);
    }
    REQUIRE(sawRunning);
    REQUIRE(f.get() == 500);
    REQUIRE_FALSE(f.running());
    // Queued behind a long call in a pool of one worker with one chunk in flight: not running.
    auto o = testing::options(1, {"examples"});
    o.chunksInFlight = 1;
    Pool one(o);
    auto sleepOne = one.task<Int(Int)>("examples", "sleep_ms");
    auto first = one.submit(sleepOne, 400);
    auto second = one.submit(sleepOne, 0);
    REQUIRE_FALSE(second.running());
    REQUIRE(second.get() == 0);
    REQUIRE_FALSE(second.running());
    REQUIRE(first.get() == 400);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("get() on a temporary future returns the value, so a reference to it never dangles") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    static_assert(!std::is_reference_v<decltype(pool.mapAsync(square, testing::range(3)).get())>);
    static_assert(std::is_reference_v<decltype(std::declval<Future<Int>&>().get())>);
    const auto& squares = pool.mapAsync(square, testing::range(1000)).get();
    REQUIRE(squares.size() == 1000);
    for (Int i = 0; i < 1000; ++i) REQUIRE(squares[static_cast<std::size_t>(i)] == i * i);
    // A future kept, and a copy of it: both still read the value after one was moved from.
    auto kept = pool.mapAsync(square, testing::range(10));
    auto copy = kept;
    std::vector<Int> taken = std::move(copy).get();
    REQUIRE(taken.size() == 10);
    REQUIRE(kept.get().size() == 10);
  }
  testing::requireCleanShutdown(before);
}
