// Worker life and pool shutdown with real workers: initializer, maxTasksPerChild, close/join,
// shutdown, terminateWorkers/killWorkers, and what the destructor does with pending work.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using testing::range;

using plugpool::Options;
using plugpool::Pool;
using Int = std::int64_t;
using namespace std::chrono_literals;

TEST_CASE("the initializer runs in every worker before any work") {
  testing::ProcessSnapshot before;
  {
    auto o = testing::options(3, {"examples"});
    o.initializer = plugpool::initializer<Int(Int)>("examples", "set_offset", Int{1000});
    o.maxTasksPerChild = 50;  // replacements run it too
    Pool pool(o);
    auto addOffset = pool.task<Int(Int)>("examples", "add_offset");
    auto results = pool.map(addOffset, range(500), 1);
    for (Int i = 0; i < 500; ++i) REQUIRE(results[static_cast<std::size_t>(i)] == 1000 + i);
    REQUIRE(pool.stats().workersRetired >= 5);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a failing initializer fails the pool at once instead of respawning") {
  testing::ProcessSnapshot before;
  SECTION("it throws") {
    auto o = testing::options(2, {"examples"});
    o.initializer = plugpool::initializer<Int(Int)>("examples", "set_offset", Int{-1});
    REQUIRE_THROWS_MATCHES(Pool(o), plugpool::StartError,
                           Catch::Matchers::Predicate<plugpool::StartError>([](const auto& e) {
                             std::string what = e.what();
                             return what.find("examples.set_offset") != std::string::npos &&
                                    what.find("std::invalid_argument") != std::string::npos &&
                                    what.find("negative offset -1") != std::string::npos;
                           }));
  }
  SECTION("it crashes the worker") {
    auto o = testing::options(2, {testing::fixture("faults")});
    o.initializer = plugpool::initializer<Int(Int)>("faults", "crash_in_init", Int{0});
    REQUIRE_THROWS_WITH(Pool(o), Catch::Contains("SIGSEGV"));
  }
  SECTION("its signature does not match") {
    auto o = testing::options(2, {"examples"});
    o.initializer = plugpool::initializer<Int(std::string)>("examples", "set_offset", "x");
    REQUIRE_THROWS_AS(Pool(o), plugpool::PluginError);
  }
  SECTION("it fails only in a worker started later") {
    std::string flag = "/tmp/plugpool-test-init-" + std::to_string(::getpid());
    std::remove(flag.c_str());
    auto o = testing::options(2, {"examples", testing::fixture("faults")});
    o.initializer = plugpool::initializer<Int(std::string)>("faults", "fail_if_exists", flag);
    Pool pool(o);
    auto pid = pool.task<Int()>("examples", "worker_pid");
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE(pool.apply(square, 3) == 9);
    std::ofstream(flag) << "x";
    ::kill(static_cast<pid_t>(pool.apply(pid)), SIGKILL);  // its replacement's init fails
    // The other worker serves on: no call fails for the replacement's sake (test_survive
    // covers a pool left with no worker that can serve).
    for (int i = 0; i < 100; ++i) {
      Int got = 0;
      try {
        got = pool.apply(square, i);
      } catch (const plugpool::WorkerCrashed&) {
        continue;  // sent to the killed worker before its death was seen
      }
      REQUIRE(got == i * i);
      std::this_thread::sleep_for(10ms);
    }
    std::remove(flag.c_str());
    // Started again after a pause that doubles (0.1 s to 10 s), never in a loop.
    REQUIRE(pool.stats().workersStarted >= 3);
    REQUIRE(pool.stats().workersStarted <= 14);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("maxTasksPerChild replaces workers without losing work") {
  testing::ProcessSnapshot before;
  {
    auto o = testing::options(2, {testing::fixture("faults")});
    o.maxTasksPerChild = 10;
    Pool pool(o);
    auto pid = pool.task<Int(Int)>("faults", "pid");
    auto pids = pool.map(pid, range(200), 1);
    REQUIRE(pids.size() == 200);
    std::map<Int, int> perWorker;
    for (Int p : pids) ++perWorker[p];
    REQUIRE(perWorker.size() >= 20);
    for (auto& [p, n] : perWorker) REQUIRE(n <= 10);
    REQUIRE(pool.stats().workersRetired >= 19);
    REQUIRE(pool.stats().workersLost == 0);
    // Chunks are never split: with chunks of 7, a worker runs at most 10 + 6 items.
    perWorker.clear();
    for (Int p : pool.map(pid, range(200), 7)) ++perWorker[p];
    for (auto& [p, n] : perWorker) REQUIRE(n <= 16);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("close and join: submitted work finishes, new work is refused") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE_THROWS_AS(pool.join(), plugpool::UsageError);
    std::vector<plugpool::Future<Int>> futures;
    for (Int i = 0; i < 6; ++i) futures.push_back(pool.submit(sleep, 50));
    pool.close();
    REQUIRE(pool.closed());
    REQUIRE_THROWS_AS(pool.submit(square, 1), plugpool::PoolClosed);
    REQUIRE_THROWS_AS(pool.map(square, range(3)), plugpool::PoolClosed);
    pool.join();
    REQUIRE(testing::childProcesses().empty());  // join returned: every worker is reaped
    for (auto& f : futures) REQUIRE(f.get() == 50);
    pool.join();  // again: returns at once
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("shutdown without waiting returns at once; the work still finishes") {
  testing::ProcessSnapshot before;
  plugpool::Future<Int> future;
  testing::Gate gate;  // the task runs until the gate opens, however slow the machine
  {
    Pool pool(1, {testing::fixture("faults")});
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    future = pool.submit(waiting, gate.path());
    pool.shutdown(/*wait=*/false);
    REQUIRE_FALSE(future.ready());
    gate.open();
  }  // the destructor waits for it
  REQUIRE(future.ready());
  REQUIRE(future.get() == 1);
  testing::requireCleanShutdown(before);
}

TEST_CASE("shutdown with cancelPending cancels queued work, lets running work finish") {
  testing::ProcessSnapshot before;
  testing::Gate gate;  // `running` runs until the queued calls are cancelled
  {
    auto o = testing::options(1, {"examples", testing::fixture("faults")});
    o.chunksInFlight = 1;
    Pool pool(o);
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    auto running = pool.submit(waiting, gate.path());
    std::vector<plugpool::Future<Int>> queued;
    for (int i = 0; i < 5; ++i) queued.push_back(pool.submit(sleep, 1));
    // `running` is with the worker (however long it took to start); the rest wait in the host.
    REQUIRE(testing::eventually([&] { return pool.stats().chunksSent >= 1; }));
    std::thread opener([&] {
      testing::eventually([&] { return queued.back().cancelled(); });
      gate.open();
    });
    pool.shutdown(/*wait=*/true, /*cancelPending=*/true);
    opener.join();
    REQUIRE(running.get() == 1);
    for (auto& f : queued) REQUIRE(f.cancelled());
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("terminateWorkers and killWorkers end every unfinished call with Cancelled") {
  testing::ProcessSnapshot before;
  for (bool kill : {false, true}) {
    {
      auto o = testing::options(2, {"examples", testing::fixture("faults")});
      o.stopTimeout = 200ms;
      Pool pool(o);
      auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
      auto stubborn = pool.task<Int(Int)>("faults", "ignore_sigterm_and_sleep");
      auto square = pool.task<Int(Int)>("examples", "square");
      auto done = pool.submit(square, 3);
      REQUIRE(done.get() == 9);
      std::vector<plugpool::Future<Int>> futures;
      futures.push_back(pool.submit(stubborn, 60'000));  // SIGTERM alone does not stop it
      for (int i = 0; i < 5; ++i) futures.push_back(pool.submit(sleep, 60'000));
      std::this_thread::sleep_for(200ms);
      auto start = std::chrono::steady_clock::now();
      if (kill) {
        pool.killWorkers();
      } else {
        pool.terminateWorkers();
      }
      REQUIRE(std::chrono::steady_clock::now() - start < 30s);  // hang guard, not a benchmark
      REQUIRE(testing::childProcesses().empty());
      for (auto& f : futures) {
        REQUIRE(f.ready());
        REQUIRE(f.cancelled());
        REQUIRE_THROWS_AS(f.get(), plugpool::Cancelled);
      }
      REQUIRE(done.get() == 9);  // finished before: untouched
      REQUIRE(pool.closed());
      REQUIRE_THROWS_AS(pool.submit(square, 1), plugpool::PoolClosed);
    }
    testing::requireCleanShutdown(before);
  }
}

TEST_CASE("the destructor finishes submitted work; terminate first to drop it") {
  testing::ProcessSnapshot before;
  std::vector<plugpool::Future<Int>> futures;
  {
    Pool pool(2, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    for (int i = 0; i < 4; ++i) futures.push_back(pool.submit(sleep, 100));
  }
  for (auto& f : futures) REQUIRE(f.get() == 100);
  testing::requireCleanShutdown(before);
}

TEST_CASE("shutdownTimeout bounds join and the destructor when a task hangs") {
  testing::ProcessSnapshot before;
  std::vector<plugpool::Future<Int>> futures;
  auto begin = std::chrono::steady_clock::now();
  {
    auto o = testing::options(2, {"examples", testing::fixture("faults")});
    o.shutdownTimeout = 300ms;
    o.stopTimeout = 200ms;
    Pool pool(o);
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto stubborn = pool.task<Int(Int)>("faults", "ignore_sigterm_and_sleep");
    futures.push_back(pool.submit(sleep, 10));
    futures.push_back(pool.submit(stubborn, 60'000));  // hangs, and ignores SIGTERM
    futures.push_back(pool.submit(sleep, 60'000));
    REQUIRE(futures[0].get() == 10);
  }  // the destructor: waits 300 ms for the rest, then terminates it
  REQUIRE(std::chrono::steady_clock::now() - begin < 30s);  // hang guard, far below 60 s
  REQUIRE(futures[1].cancelled());
  REQUIRE(futures[2].cancelled());
  REQUIRE_THROWS_WITH(futures[1].get(), Catch::Contains("shutdownTimeout"));
  testing::requireCleanShutdown(before);
}
