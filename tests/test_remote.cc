// Remote workers on this machine: a LaunchCommand pool whose launcher is `env`, so every worker
// is a real plugpool-worker --connect process that reaches its host over loopback TCP, proves
// itself with its secret and speaks the protocol over the connection. Everything a local pool
// promises must hold (plugpool/remote.h); the Slurm and network-namespace cases are in
// test_slurm.cc and test_partition.cc.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using plugpool::LaunchCommand;
using plugpool::Options;
using plugpool::Pool;
using testing::crashOf;
using testing::Int;

namespace {

using namespace std::chrono_literals;

// A pool of `workers` remote workers on this machine.
Options remote(int workers, std::vector<std::string> plugins,
               std::vector<std::vector<std::string>> prefixes = {{"env"}}) {
  Options o = testing::options(workers, std::move(plugins));
  plugpool::Remote r = LaunchCommand::spread(std::move(prefixes));
  r.address = "127.0.0.1";
  o.remote = r;
  return o;
}

std::string faults() {
  return testing::fixture("faults");
}

// Whether `f` throws an exception of type E whose message contains `words`.
template <typename E, typename F>
std::string messageOf(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("the expected exception was not thrown");
  return {};
}

}  // namespace

TEST_CASE("a remote pool gives what a local one gives, through a connection per worker") {
  testing::ProcessSnapshot before;
  {
    Pool pool(remote(2, {"examples", faults()}));
    auto square = pool.task<Int(Int)>("examples", "square");
    const auto items = testing::range(20'000);
    std::vector<Int> expected;
    for (Int x : items) expected.push_back(x * x);
    CHECK(pool.map(square, items) == expected);
    CHECK(pool.map(square, items, 1) == expected);
    std::vector<Int> unordered;
    for (Int v : pool.imapUnordered(square, items, 7)) unordered.push_back(v);
    std::sort(unordered.begin(), unordered.end());
    CHECK(unordered == expected);
    CHECK(pool.submit(pool.task<double(double, double)>("examples", "add"), 2, 3).get() == 5);

    // Each worker was started as `plugpool-worker --connect 127.0.0.1:PORT`, its secret not
    // on its command line and gone from its environment before any task ran.
    auto commandLine = pool.task<std::string(Int)>("faults", "command_line");
    auto environment = pool.task<std::string(std::string)>("faults", "environment");
    const std::string line = pool.apply(commandLine, 0);
    CHECK_THAT(line, Catch::Contains("plugpool-worker --connect 127.0.0.1:"));
    CHECK_THAT(line, Catch::Contains(" --liveness=1,1,3,4000"));
    CHECK(pool.apply(environment, std::string("PLUGPOOL_WORKER_SECRET")) == "(unset)");

    const auto stats = pool.stats();
    CHECK(stats.workersStarted == 2);
    CHECK(stats.workersLost == 0);
    CHECK(stats.sharedMessages == 0);  // shared memory is for local workers only
    CHECK(stats.connectionsRefused == 0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("large payloads go through the connection; SharedBytes works, with a copy") {
  testing::ProcessSnapshot before;
  {
    Pool pool(remote(1, {"examples"}));
    auto echo = pool.task<plugpool::Bytes(plugpool::Bytes)>("examples", "echo_bytes");
    plugpool::Bytes big(std::size_t{64} << 20);
    for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<std::byte>(i / 4096);
    CHECK(pool.apply(echo, big) == big);
    auto echoShared = pool.task<plugpool::SharedBytes(plugpool::Bytes)>("examples", "echo_bytes");
    const plugpool::SharedBytes back = pool.apply(echoShared, big);
    CHECK(back == std::span<const std::byte>(big));
    // ... and passed on as another task's argument.
    auto again = pool.task<plugpool::Bytes(plugpool::SharedBytes)>("examples", "echo_bytes");
    CHECK(pool.apply(again, back) == big);
    CHECK(pool.stats().sharedMessages == 0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a remote worker killed in a task fails only its chunk, and is replaced") {
  testing::ProcessSnapshot before;
  {
    Pool pool(remote(1, {faults()}));
    auto busy = testing::busyWorker(pool, 60'000);
    auto pid = pool.task<Int(Int)>("faults", "pid");
    auto behind = pool.submit(pid, 0);  // sent to the same worker, behind the running chunk
    REQUIRE(testing::eventually([&] { return pool.stats().chunksSent >= 3; }));
    const Int worker = busy.pid;
    ::kill(static_cast<pid_t>(worker), SIGKILL);
    auto e = crashOf([&] { busy.call.get(); });
    CHECK(e.signal() == SIGKILL);
    CHECK_THAT(e.what(), Catch::Contains("was killed by signal 9 (SIGKILL)"));
    // The chunk behind it never ran: it went to the replacement.
    const Int replacement = behind.get();
    CHECK(replacement != worker);
    CHECK(pool.stats().workersLost == 1);
    CHECK(pool.stats().workersStarted == 2);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a task that crashes a remote worker is reported with its signal; crashRetries applies") {
  testing::ProcessSnapshot before;
  {
    Options o = remote(2, {faults()});
    Pool pool(o);
    auto segv = pool.task<Int(Int)>("faults", "segfault_if_negative");
    auto e = crashOf([&] { pool.map(segv, std::vector<Int>{1, 2, -1, 4}, 1); });
    CHECK(e.signal() == SIGSEGV);
    CHECK_THAT(e.what(), Catch::Contains("was killed by signal 11 (SIGSEGV) while running "
                                         "faults.segfault_if_negative"));
    CHECK(pool.map(segv, std::vector<Int>{5, 6}, 1) == std::vector<Int>{5, 6});
  }
  {
    testing::TempPath marker("crashed");
    Options o = remote(1, {faults()});
    o.crashRetries = 1;
    Pool pool(o);
    auto once = pool.task<Int(std::string)>("faults", "crash_once");
    CHECK(pool.apply(once, marker.path()) == 1);  // crashed once, then ran again and passed
    CHECK(pool.stats().chunksRetried == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("taskTimeout, cancel, terminateWorkers and killWorkers stop remote workers") {
  testing::ProcessSnapshot before;
  {
    Options o = remote(2, {faults()});
    o.taskTimeout = 300ms;
    Pool pool(o);
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    CHECK_THROWS_AS(pool.apply(sleep, 60'000), plugpool::TaskTimeout);
    CHECK(pool.apply(sleep, 1) == 1);
    CHECK(pool.stats().chunksTimedOut == 1);
  }
  {
    Pool pool(remote(2, {faults()}));
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    auto slow = pool.submit(sleep, 60'000);
    REQUIRE(testing::eventually([&] { return pool.stats().chunksSent >= 1; }));
    std::this_thread::sleep_for(100ms);
    slow.cancel();
    CHECK_THROWS_AS(slow.get(), plugpool::Cancelled);
    CHECK(pool.apply(sleep, 1) == 1);
  }
  for (bool kill : {false, true}) {
    INFO((kill ? "killWorkers" : "terminateWorkers"));
    Pool pool(remote(2, {faults()}));
    auto sleep = pool.task<Int(Int)>("faults", "ignore_sigterm_and_sleep");
    auto a = pool.submit(sleep, 60'000), b = pool.submit(sleep, 60'000);
    REQUIRE(testing::eventually([&] { return pool.stats().chunksSent >= 2; }));
    const auto t0 = std::chrono::steady_clock::now();
    if (kill) {
      pool.killWorkers();
    } else {
      pool.terminateWorkers();
    }
    // A worker that ignores SIGTERM still leaves at once: its connection ended.
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);
    CHECK_THROWS_AS(a.get(), plugpool::Cancelled);
    CHECK_THROWS_AS(b.get(), plugpool::Cancelled);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("worker limits apply where the worker runs") {
  testing::ProcessSnapshot before;
  {
    Options o = remote(1, {faults()});
    o.limits.openFiles = 64;
    Pool pool(o);
    const Int opened = pool.apply(pool.task<Int(Int)>("faults", "open_files"), 500);
    CHECK(opened > 0);
    CHECK(opened < 64);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("connections without the worker's secret are refused and counted; its worker gets in") {
  testing::ProcessSnapshot before;
  {
    const std::string strangers = std::string(FIXTURES_SOURCE_DIR) + "/strangers_first.sh";
    Pool pool(remote(1, {"examples"}, {{strangers}}));
    CHECK(pool.apply(pool.task<Int(Int)>("examples", "square"), 9) == 81);
    // Not a worker, a wrong secret, a wrong version, a preamble cut short.
    CHECK(testing::eventually([&] { return pool.stats().connectionsRefused == 4; }));
    CHECK(pool.stats().workersStarted == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("workers spread over several launch commands, the least busy first") {
  testing::ProcessSnapshot before;
  {
    Pool pool(
        remote(4, {"examples"}, {{"env", "SLURMD_NODENAME=a"}, {"env", "SLURMD_NODENAME=b"}}));
    auto node = pool.task<std::string()>("examples", "node");
    std::set<std::string> seen;
    for (int round = 0; round < 50 && seen.size() < 2; ++round) {
      std::vector<plugpool::Future<std::string>> calls;
      for (int i = 0; i < 16; ++i) calls.push_back(pool.submit(node));
      for (auto& c : calls) seen.insert(c.get());
    }
    CHECK(seen == std::set<std::string>{"a", "b"});
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a node that lacks a plugin fails the pool's start with PluginError") {
  testing::ProcessSnapshot before;
  // The worker runs where the fixtures' folder is empty (a private mount namespace).
  const std::vector<std::string> blind = {
      "unshare", "-m", "sh", "-c", "mount -t tmpfs none \"$0\" && exec \"$@\"", FIXTURES_DIR};
  const std::string why =
      messageOf<plugpool::PluginError>([&] { Pool pool(remote(1, {faults()}, {blind})); });
  CHECK_THAT(why, Catch::Contains("libfaults.so"));
  testing::requireCleanShutdown(before);
}

TEST_CASE("a remote pool that cannot start says why") {
  testing::ProcessSnapshot before;
  CHECK_THAT(messageOf<plugpool::StartError>(
                 [] { Pool pool(remote(1, {"examples"}, {{"/nonexistent/launcher"}})); }),
             Catch::Contains("cannot start a remote worker with /nonexistent/launcher"));
  CHECK_THAT(
      messageOf<plugpool::StartError>([] { Pool pool(remote(1, {"examples"}, {{"false"}})); }),
      Catch::Contains("exited with status 1 (its launcher, before the worker connected)"));
  {
    Options o = remote(1, {"examples"});
    o.remote->address = "no-such-host.invalid";
    CHECK_THROWS_AS(Pool(o), plugpool::StartError);
  }
  {
    Options o = remote(1, {"examples"});
    o.remote->address = "0.0.0.0";
    CHECK_THAT(messageOf<plugpool::UsageError>([&] { Pool pool(o); }),
               Catch::Contains("is a wildcard"));
  }
  {
    Options o = testing::options(1, {"examples"});
    o.remote = plugpool::Slurm{};
    ::unsetenv("SLURM_JOB_ID");
    CHECK_THAT(messageOf<plugpool::StartError>([&] { Pool pool(o); }),
               Catch::Contains("run the host inside salloc or sbatch"));
  }
  {
    Options o = remote(1, {"examples"});
    o.startMethod = plugpool::StartMethod::FORK;
    CHECK_THROWS_AS(Pool(o), plugpool::UsageError);
    CHECK_THROWS_AS(Pool(remote(1, {"examples"}, std::vector<std::vector<std::string>>(1))),
                    plugpool::UsageError);
  }
  testing::requireCleanShutdown(before);
}
