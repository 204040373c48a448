// Behaviours of Python's pools and futures that plugpool keeps (CPython's test suites for
// multiprocessing.Pool and concurrent.futures, ported case by case), named after them.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using namespace std::chrono_literals;
using plugpool::Future;
using plugpool::Pool;
using Int = std::int64_t;

namespace {

// A file that faults.sleep_logged tasks append to: when each ran.
class RunLog : public testing::TempPath {
 public:
  RunLog() : TempPath("runs") {}
  // How many runs were logged.
  std::size_t runs() const { return read().size(); }
  // The most tasks that ran at one moment. A run that started after another ended did not
  // overlap it, however close the two are.
  std::size_t mostAtOnce() const {
    std::vector<std::pair<long long, int>> events;  // (time, +1 start or -1 end)
    for (auto [start, end] : read()) {
      events.emplace_back(start, +1);
      events.emplace_back(end, -1);
    }
    std::sort(events.begin(), events.end());  // at one time, ends (-1) before starts
    std::size_t running = 0, most = 0;
    for (auto [time, change] : events) {
      running = change > 0 ? running + 1 : running - 1;
      most = std::max(most, running);
    }
    return most;
  }

 private:
  std::vector<std::pair<long long, long long>> read() const {
    std::vector<std::pair<long long, long long>> runs;
    std::ifstream in(path());
    long long start, end;
    while (in >> start >> end) runs.emplace_back(start, end);
    return runs;
  }
};

}  // namespace

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

TEST_CASE("maxTasksPerChild never runs more tasks at once than there are workers") {
  // Python's maxtasksperchild replaces a worker once it has finished its tasks; the pool's
  // size bounds what runs at once all along.
  testing::ProcessSnapshot before;
  for (unsigned workers : {1u, 2u}) {
    INFO(workers << " workers");
    const std::size_t tasks = 4 * workers;
    RunLog log;
    {
      auto o = testing::options(workers, {testing::fixture("faults")});
      o.maxTasksPerChild = 1;
      Pool pool(o);
      auto sleep = pool.task<Int(std::string, Int)>("faults", "sleep_logged");
      std::vector<std::tuple<std::string, Int>> args(tasks, {log.path(), 300});
      const auto start = std::chrono::steady_clock::now();
      auto slept = pool.starmap(sleep, args, 1);
      const auto elapsed = std::chrono::steady_clock::now() - start;
      REQUIRE(slept == std::vector<Int>(tasks, 300));
      REQUIRE(log.runs() == tasks);
      REQUIRE(log.mostAtOnce() <= workers);
      // Four tasks per worker, one after the other.
      REQUIRE(elapsed >= 4 * 300ms);
      // One worker per task (each retires after its first), and at most one warm replacement
      // for each of those.
      REQUIRE(pool.stats().workersRetired == tasks);
      REQUIRE(pool.stats().workersStarted <= workers + tasks);
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a negative worker count is a UsageError, thrown before any worker starts") {
  // Python: Pool(processes=-1) raises ValueError. The count is signed, so -1 is refused
  // instead of being taken for 4294967295 workers.
  static_assert(std::is_same_v<decltype(plugpool::Options::workers), int>);
  testing::ProcessSnapshot before;
  REQUIRE_THROWS_MATCHES(
      Pool(-1, {"examples"}), plugpool::UsageError,
      Catch::Matchers::Message("workers must be 1 or more, or 0 for one per core; got -1"));
  auto o = testing::options(1, {"examples"});
  o.workers = -3;
  REQUIRE_THROWS_MATCHES(
      Pool(o), plugpool::UsageError,
      Catch::Matchers::Message("workers must be 1 or more, or 0 for one per core; got -3"));
  REQUIRE(testing::childProcesses().empty());
  testing::requireCleanShutdown(before);
}

TEST_CASE("a TaskError says which item threw and which worker ran it") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    // Chunks of 2: item 3 is the second of the second chunk; its square overflows.
    try {
      pool.map(square, std::vector<Int>{1, 2, 3, 4'000'000'000, 5}, 2);
      FAIL("no TaskError");
    } catch (const plugpool::TaskError& e) {
      REQUIRE(e.item() == 3u);
      REQUIRE(e.remoteType() == "std::overflow_error");
      auto workers = testing::childProcesses();
      REQUIRE(std::find(workers.begin(), workers.end(), e.workerPid()) != workers.end());
    }
    // Each item of a stream that fails names its own index.
    auto fail = pool.task<Int(Int)>("examples", "fail");
    auto stream = pool.imap(fail, std::vector<Int>{10, 11, 12, 13, 14}, 2);
    for (std::uint64_t i = 0; i < 5; ++i) {
      try {
        stream.next();
        FAIL("no TaskError");
      } catch (const plugpool::TaskError& e) {
        REQUIRE(e.item() == i);
        REQUIRE(e.remoteMessage() == "fail called with " + std::to_string(10 + i));
      }
    }
  }
  testing::requireCleanShutdown(before);
}
