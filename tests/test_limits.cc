// Timeouts, crash retries and resource limits with real workers: a task that overruns, keeps
// crashing, eats memory or descriptors costs at most its own items and its worker.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using plugpool::Pool;
using testing::Int;
using namespace std::chrono_literals;

namespace {

// True when built with a sanitizer: they reserve terabytes of address space, so RLIMIT_AS
// cannot be tested there.
constexpr bool SANITIZED =
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    true;
#else
    false;
#endif

std::string scratchFile(const char* name) {
  return "/tmp/plugpool-test-" + std::string(name) + "-" + std::to_string(::getpid());
}

}  // namespace

TEST_CASE("an item past its timeout fails with TaskTimeout; the others are unaffected") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    // 2 s: 200 times the 10 ms items, so that a loaded machine cannot time out a healthy one.
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms").withTimeout(2000ms);
    auto started = pool.stats().workersStarted;
    auto begin = std::chrono::steady_clock::now();
    std::vector<Int> items = {10, 60'000, 10, 10, 60'000, 10};
    auto stream = pool.imap(sleep, items);
    std::vector<std::string> got;
    for (std::size_t i = 0; i < items.size(); ++i) {
      try {
        got.push_back(std::to_string(*stream.next()));
      } catch (const plugpool::TaskTimeout& e) {
        REQUIRE(e.task() == "sleep_ms");
        REQUIRE(e.timeoutMs() == 2000);
        got.push_back("timeout");
      }
    }
    REQUIRE(got == std::vector<std::string>{"10", "timeout", "10", "10", "timeout", "10"});
    REQUIRE(std::chrono::steady_clock::now() - begin < 30s);  // hang guard: far below 60 s
    REQUIRE(pool.stats().chunksTimedOut == 2);
    REQUIRE(pool.stats().workersStarted == started + 2);  // each stopped worker replaced
    REQUIRE(pool.apply(sleep, 1) == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("the pool's default timeout applies to every task; a call can lift it") {
  testing::ProcessSnapshot before;
  {
    auto o = testing::options(1, {"examples"});
    o.taskTimeout = 200ms;
    Pool pool(o);
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    REQUIRE(sleep.timeout() == 200ms);
    REQUIRE_THROWS_AS(pool.apply(sleep, 60'000), plugpool::TaskTimeout);
    REQUIRE_THROWS_AS(pool.map(sleep, std::vector<Int>{1, 60'000, 1}), plugpool::TaskTimeout);
    REQUIRE(pool.apply(sleep.withTimeout(0ms), 400) == 400);  // no limit for this call
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a task that ignores SIGTERM is killed after the grace period") {
  testing::ProcessSnapshot before;
  {
    auto o = testing::options(1, {testing::fixture("faults")});
    o.stopTimeout = 300ms;
    Pool pool(o);
    auto stubborn = pool.task<Int(Int)>("faults", "ignore_sigterm_and_sleep").withTimeout(200ms);
    REQUIRE_THROWS_AS(pool.apply(stubborn, 60'000), plugpool::TaskTimeout);
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    REQUIRE(pool.apply(sleep, 5) == 5);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("crashRetries resends a chunk whose worker crashed, up to the limit") {
  testing::ProcessSnapshot before;
  auto flag = scratchFile("crash-once");
  std::remove(flag.c_str());
  SECTION("a transient crash is retried and succeeds") {
    auto o = testing::options(2, {testing::fixture("faults")});
    o.crashRetries = 1;
    Pool pool(o);
    auto crashOnce = pool.task<Int(std::string)>("faults", "crash_once");
    REQUIRE(pool.apply(crashOnce, flag) == 1);
    REQUIRE(pool.stats().chunksRetried == 1);
    REQUIRE(pool.stats().workersLost == 1);
  }
  SECTION("without retries the crash is reported") {
    Pool pool(2, {testing::fixture("faults")});
    auto crashOnce = pool.task<Int(std::string)>("faults", "crash_once");
    REQUIRE_THROWS_AS(pool.apply(crashOnce, flag), plugpool::WorkerCrashed);
  }
  SECTION("a crash that repeats fails after the last retry") {
    auto o = testing::options(2, {testing::fixture("faults")});
    o.crashRetries = 2;
    Pool pool(o);
    auto segv = pool.task<Int(Int)>("faults", "segfault_if_negative");
    REQUIRE_THROWS_AS(pool.apply(segv, -1), plugpool::WorkerCrashed);
    REQUIRE(pool.stats().chunksRetried == 2);
    REQUIRE(pool.stats().workersLost == 3);
    REQUIRE(pool.apply(segv, 4) == 4);
  }
  std::remove(flag.c_str());
  testing::requireCleanShutdown(before);
}

TEST_CASE("a task past the memory limit fails on its own; the host is unaffected") {
  if (SANITIZED) return;  // see SANITIZED
  testing::ProcessSnapshot before;
  {
    auto o = testing::options(1, {testing::fixture("faults")});
    o.limits.memoryBytes = std::uint64_t{256} << 20;
    Pool pool(o);
    auto hog = pool.task<Int(Int)>("faults", "hog_mib");
    REQUIRE(pool.apply(hog, 16) == 16);
    try {
      pool.apply(hog, 1024);
      FAIL("a 1 GiB allocation under a 256 MiB limit succeeded");
    } catch (const plugpool::TaskError& e) {
      REQUIRE(e.remoteType() == "std::bad_alloc");
    }
    REQUIRE(pool.apply(hog, 16) == 16);  // the same worker goes on
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("open-file and CPU limits apply to each worker") {
  testing::ProcessSnapshot before;
  {
    auto o = testing::options(1, {testing::fixture("faults")});
    o.limits.openFiles = 32;
    o.limits.cpuTime = 1s;
    Pool pool(o);
    auto openFiles = pool.task<Int(Int)>("faults", "open_files");
    auto spin = pool.task<Int(Int)>("faults", "spin_ms");
    REQUIRE(pool.apply(openFiles, 100) < 32);
    auto crash = testing::crashOf([&] { pool.apply(spin, 20'000); });
    REQUIRE(crash.signal() == SIGXCPU);
    REQUIRE(pool.apply(openFiles, 10) == 10);  // the replacement has its own budget
  }
  testing::requireCleanShutdown(before);
}
