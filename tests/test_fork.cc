// StartMethod::FORK with real processes: forked workers serve like exec'd ones, inherit what
// the host loaded before the pool started, are replaced when they die, and take nothing of
// the host's along but its memory: no other descriptor, no signal handler, no blocked signal.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <plugpool/local_plugin.h>
#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using testing::crashOf;
using testing::range;

using plugpool::Pool;
using plugpool::StartMethod;
using Int = std::int64_t;

namespace {

plugpool::Options forkOptions(int workers, std::vector<std::string> plugins) {
  auto options = testing::options(workers, std::move(plugins));
  options.startMethod = StartMethod::FORK;
  return options;
}

// The descriptors process `pid` has open, from /proc/<pid>/fd.
std::set<int> descriptorsOf(Int pid) {
  std::set<int> fds;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    fds.insert(std::stoi(entry.path().filename().string()));
  }
  INFO("listing /proc/" << pid << "/fd: " << ec.message());
  REQUIRE(!ec);
  return fds;
}

// A signal-set line ("SigBlk", "SigIgn", "SigCgt") of /proc/<pid>/status, as a bit mask.
std::uint64_t signalSet(Int pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with(field + ":")) {
      return std::stoull(line.substr(field.size() + 1), nullptr, 16);
    }
  }
  FAIL("no " << field << " line in /proc/" << pid << "/status");
  return 0;
}

// Waits up to 10 s for `condition` to hold; true if it did.
template <typename F>
bool eventually(F&& condition) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::uint64_t bit(int signal) {
  return std::uint64_t{1} << (signal - 1);
}

}  // namespace

TEST_CASE("a FORK pool maps square correctly, on distinct workers that are our children") {
  testing::ProcessSnapshot before;
  {
    Pool pool(forkOptions(3, {"examples"}));
    auto square = pool.task<Int(Int)>("examples", "square");
    auto squares = pool.map(square, range(100));
    REQUIRE(squares.size() == 100);
    for (Int i = 0; i < 100; ++i) REQUIRE(squares[static_cast<std::size_t>(i)] == i * i);

    // One-item chunks go to the least busy worker, so every worker answers some.
    auto workerPid = pool.task<Int()>("examples", "worker_pid");
    auto pids = pool.starmap(workerPid, std::vector<std::tuple<>>(300), 1);
    std::set<Int> distinct(pids.begin(), pids.end());
    REQUIRE(distinct.size() == 3);
    REQUIRE(distinct.count(::getpid()) == 0);
    auto children = testing::childProcesses();
    REQUIRE(std::set<Int>(children.begin(), children.end()) == distinct);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a FORK pool needs no worker executable") {
  testing::ProcessSnapshot before;
  {
    auto options = forkOptions(2, {"examples"});
    options.workerExecutable = "/nonexistent/plugpool-worker";
    Pool pool(options);
    REQUIRE(pool.apply(pool.task<Int(Int)>("examples", "square"), 9) == 81);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("forked workers inherit a table the host loaded in-process; spawned workers do not") {
  // The pool finds the plugin by the same path, and dlopen in the forked worker returns the
  // instance the host loaded.
  plugpool::LocalPlugin local("examples");
  REQUIRE(local.task<Int(Int)>("load_table")(1000) == 1000);
  REQUIRE(local.task<Int(Int)>("table_entry")(7) == 21);

  const std::vector<Int> indices = {0, 1, 7, 500, 999, 1000};
  testing::ProcessSnapshot before;
  {
    Pool pool(forkOptions(2, {"examples"}));
    auto entry = pool.task<Int(Int)>("examples", "table_entry");
    REQUIRE(pool.map(entry, indices, 1) == std::vector<Int>{0, 3, 21, 1500, 2997, -1});
  }
  {
    Pool pool(2, {"examples"});
    auto entry = pool.task<Int(Int)>("examples", "table_entry");
    REQUIRE(pool.map(entry, indices, 1) == std::vector<Int>(indices.size(), -1));
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a forked worker that crashes fails only its own chunk and is replaced by a new fork") {
  plugpool::LocalPlugin local("examples");
  local.task<Int(Int)>("load_table")(100);

  testing::ProcessSnapshot before;
  {
    auto options = forkOptions(2, {"examples", testing::fixture("faults")});
    options.chunksInFlight = 1;  // a worker holds one chunk at a time: a crash loses only it
    Pool pool(options);
    auto segv = pool.task<Int(Int)>("faults", "segfault_if_negative");
    auto entry = pool.task<Int(Int)>("examples", "table_entry");
    auto workerPid = pool.task<Int()>("examples", "worker_pid");

    // Healthy items keep flowing on the other worker while one crashes.
    auto healthy = std::async(std::launch::async, [&] { return pool.map(entry, range(100), 1); });
    auto e = crashOf([&] { pool.apply(segv, -1); });
    REQUIRE(e.signal() == SIGSEGV);
    REQUIRE(e.plugin() == "faults");
    REQUIRE(e.task() == "segfault_if_negative");
    REQUIRE(healthy.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
    auto entries = healthy.get();
    for (Int i = 0; i < 100; ++i) REQUIRE(entries[static_cast<std::size_t>(i)] == 3 * i);

    SECTION("killed from outside while idle") {
      Int victim = pool.apply(workerPid);
      REQUIRE(::kill(static_cast<pid_t>(victim), SIGKILL) == 0);
      // Once the pool has seen the death it replaces the worker; calls go to live workers.
      REQUIRE(eventually([&] { return pool.stats().workersLost == 2; }));
      for (int i = 0; i < 20; ++i) REQUIRE(pool.apply(segv, i) == i);
      REQUIRE(pool.stats().workersLost == 2);
      REQUIRE(pool.stats().workersStarted == 4);
    }
    SECTION("crashing again") {
      REQUIRE(crashOf([&] { pool.apply(segv, -2); }).signal() == SIGSEGV);
      REQUIRE(pool.stats().workersLost == 2);
      REQUIRE(pool.stats().workersStarted == 4);
    }
    // The replacements are forks of the host as it is now: the table is still there.
    entries = pool.map(entry, range(100), 1);
    for (Int i = 0; i < 100; ++i) REQUIRE(entries[static_cast<std::size_t>(i)] == 3 * i);
    REQUIRE(testing::childProcesses().size() == 2);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("forked workers hold only stdin, stdout, stderr and their channel") {
  testing::ProcessSnapshot before;
  // Descriptors of the host's that a plain fork would hand down, close-on-exec or not.
  int pipe[2];
  REQUIRE(::pipe(pipe) == 0);
  int file = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  REQUIRE(file >= 0);
  {
    Pool pool(forkOptions(2, {"examples"}));
    std::set<int> expected = {3};
    for (int fd : {0, 1, 2}) {
      if (::fcntl(fd, F_GETFD) >= 0) expected.insert(fd);
    }
    Int pid = pool.apply(pool.task<Int()>("examples", "worker_pid"));
    REQUIRE(descriptorsOf(pid) == expected);
    auto children = testing::childProcesses();
    REQUIRE(children.size() == 2);
    for (int child : children) REQUIRE(descriptorsOf(child) == expected);
  }
  ::close(pipe[0]);
  ::close(pipe[1]);
  ::close(file);
  testing::requireCleanShutdown(before);
}

TEST_CASE("forked workers start with default signal handling, whatever the host set") {
  // The host ignores SIGUSR1, handles SIGTERM and blocks SIGUSR2 in the thread that makes
  // the pool (its dispatcher thread, which forks, inherits that mask).
  struct sigaction ignore = {}, handle = {}, oldUsr1, oldTerm;
  ignore.sa_handler = SIG_IGN;
  handle.sa_handler = [](int) {};
  REQUIRE(::sigaction(SIGUSR1, &ignore, &oldUsr1) == 0);
  REQUIRE(::sigaction(SIGTERM, &handle, &oldTerm) == 0);
  sigset_t usr2, oldMask;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  REQUIRE(::pthread_sigmask(SIG_BLOCK, &usr2, &oldMask) == 0);

  testing::ProcessSnapshot before;
  {
    Pool pool(forkOptions(2, {"examples"}));
    // glibc handles its own signals between 32 and SIGRTMIN in every threaded process.
    std::uint64_t glibcInternal = 0;
    for (int sig = 32; sig < SIGRTMIN; ++sig) glibcInternal |= bit(sig);
    auto children = testing::childProcesses();
    REQUIRE(children.size() == 2);
    for (int child : children) {
      INFO("worker " << child);
      REQUIRE(signalSet(child, "SigBlk") == 0);
      REQUIRE(signalSet(child, "SigIgn") == bit(SIGPIPE));  // the worker's own choice
      // The worker's own choices: its death signal (worker.h, hostGoneSignal) and the fatal
      // signals its crash report comes from (crash_handler.h), caught.
      const std::uint64_t fatal =
          bit(SIGSEGV) | bit(SIGBUS) | bit(SIGFPE) | bit(SIGILL) | bit(SIGABRT);
      REQUIRE((signalSet(child, "SigCgt") & ~glibcInternal) == (bit(SIGRTMIN + 3) | fatal));
    }
    // And the host's settings are untouched.
    REQUIRE((signalSet(::getpid(), "SigIgn") & bit(SIGUSR1)) != 0);
    REQUIRE((signalSet(::getpid(), "SigCgt") & bit(SIGTERM)) != 0);
  }
  ::pthread_sigmask(SIG_SETMASK, &oldMask, nullptr);
  ::sigaction(SIGUSR1, &oldUsr1, nullptr);
  ::sigaction(SIGTERM, &oldTerm, nullptr);
  testing::requireCleanShutdown(before);
}

TEST_CASE("forking works while other host threads allocate and take locks") {
  plugpool::LocalPlugin local("examples");
  local.task<Int(Int)>("load_table")(1000);

  std::atomic<bool> stop{false};
  std::mutex shared;
  std::vector<std::string> sink;
  std::vector<std::thread> busy;
  for (int t = 0; t < 4; ++t) {
    busy.emplace_back([&, t] {
      for (std::size_t n = 0; !stop.load(); ++n) {
        std::vector<std::string> garbage(16, std::string(64 + n % 4096, char('a' + t)));
        std::lock_guard lock(shared);
        sink.push_back(std::move(garbage.back()));
        if (sink.size() > 1000) sink.clear();
      }
    });
  }

  testing::ProcessSnapshot before;
  {
    Pool pool(forkOptions(4, {"examples"}));
    auto entry = pool.task<Int(Int)>("examples", "table_entry");
    auto workerPid = pool.task<Int()>("examples", "worker_pid");
    std::vector<Int> expected;
    for (Int i = 0; i < 1000; ++i) expected.push_back(3 * i);
    REQUIRE(pool.map(entry, range(1000)) == expected);
    // Each kill makes the dispatcher fork a replacement while the threads churn.
    for (int k = 0; k < 8; ++k) {
      ::kill(static_cast<pid_t>(pool.apply(workerPid)), SIGKILL);
      std::vector<Int> results;
      try {
        results = pool.map(entry, range(1000), 10);
      } catch (const plugpool::WorkerCrashed&) {
        results = pool.map(entry, range(1000), 10);  // a chunk sat on the killed worker
      }
      REQUIRE(results == expected);
    }
    REQUIRE(eventually([&] { return pool.stats().workersLost == 8; }));
    REQUIRE(pool.map(entry, range(1000), 10) == expected);
    REQUIRE(pool.stats().workersStarted == 12);
  }
  stop = true;
  for (auto& t : busy) t.join();
  testing::requireCleanShutdown(before);
}

TEST_CASE("forked workers exit by themselves when the pool closes their channels") {
  testing::ProcessSnapshot before;
  auto options = forkOptions(4, {"examples"});
  options.stopTimeout = std::chrono::seconds(30);  // a worker that had to be killed would show
  auto start = std::chrono::steady_clock::now();
  {
    Pool pool(options);
    REQUIRE(pool.apply(pool.task<Int(Int)>("examples", "square"), 5) == 25);
  }
  REQUIRE(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  testing::requireCleanShutdown(before);
}

TEST_CASE("destroying a FORK pool right after starting it leaves nothing behind") {
  testing::ProcessSnapshot before;
  for (int i = 0; i < 20; ++i) {
    Pool pool(forkOptions(3, {"examples"}));
  }
  testing::requireCleanShutdown(before);
}
