// The host survives whatever happens in the dispatcher and its workers, and nothing is lost:
// an allocation that fails, a poll() the kernel refuses, a callback thread that cannot start,
// a worker killed while it writes, starts that fail for a while, a host that forks.
//
// Several cases lower this process's own limits (RLIMIT_AS, RLIMIT_NOFILE) for a moment, with
// Limit below, which restores them on every path. The sanitizers reserve terabytes of address
// space and abort when an allocation fails, so the address-space cases run in plain builds only.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using namespace std::chrono_literals;
using plugpool::Bytes;
using plugpool::Pool;
using Int = std::int64_t;

extern char** environ;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool SANITIZED = true;
#else
constexpr bool SANITIZED = false;
#endif

// Lowers one of this process's soft limits until destroyed.
class Limit {
 public:
  Limit(int resource, rlim_t soft) : resource_(resource) {
    REQUIRE(::getrlimit(resource, &saved_) == 0);
    rlimit lowered = saved_;
    lowered.rlim_cur = soft;
    REQUIRE(::setrlimit(resource, &lowered) == 0);
  }
  ~Limit() { ::setrlimit(resource_, &saved_); }
  Limit(const Limit&) = delete;
  Limit& operator=(const Limit&) = delete;

 private:
  int resource_;
  rlimit saved_{};
};

// This process's address space now, in bytes.
rlim_t addressSpace() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmSize:") {
      rlim_t kib = 0;
      status >> kib;
      return kib * 1024;
    }
  }
  FAIL("no VmSize in /proc/self/status");
  return 0;
}

// Holds /dev/null on every free descriptor below `end` (from 3) until destroyed.
class Placeholders {
 public:
  explicit Placeholders(int end) {
    for (int fd = 3; fd < end; ++fd) {
      if (::fcntl(fd, F_GETFD) >= 0) continue;
      int opened = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      REQUIRE(opened >= 0);
      if (opened != fd) {
        REQUIRE(::dup3(opened, fd, O_CLOEXEC) == fd);
        ::close(opened);
      }
      held_.push_back(fd);
    }
  }
  ~Placeholders() {
    for (int fd : held_) ::close(fd);
  }
  Placeholders(const Placeholders&) = delete;
  Placeholders& operator=(const Placeholders&) = delete;

 private:
  std::vector<int> held_;
};

// Whether `bytes` is what sizes.pattern(size, seed) returns.
bool isPattern(const Bytes& bytes, std::size_t size, Int seed) {
  if (bytes.size() != size) return false;
  for (std::size_t k : {std::size_t{0}, size / 2, size - 1}) {
    if (bytes[k] != static_cast<std::byte>((static_cast<std::uint64_t>(seed) + k) % 251)) {
      return false;
    }
  }
  return true;
}

// Runs this test program again, in a new process, with `args`; returns its exit status, or
// -1 if it did not end within two minutes (it is killed then).
int runFresh(std::vector<std::string> args) {
  std::vector<char*> argv;
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  REQUIRE(::posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) == 0);
  int status = 0;
  const bool ended =
      testing::eventually([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 120s);
  if (!ended) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("a reply the host cannot allocate fails its chunk, costing only its worker") {
  if (SANITIZED) {
    WARN("skipped under the sanitizers: their allocators abort instead of failing");
    return;
  }
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {testing::fixture("sizes")});
    auto shared = pool.task<plugpool::SharedBytes(Int, Int)>("sizes", "pattern");
    auto copied = pool.task<Bytes(Int, Int)>("sizes", "pattern");
    constexpr Int BIG = Int{200} << 20;
    // The first big result stays where it arrived, in the worker's region, so the second must
    // come through the socket into a buffer of the host's.
    plugpool::SharedBytes held = pool.apply(shared, BIG, 1);
    REQUIRE(held.size() == static_cast<std::size_t>(BIG));
    {
      Limit limit(RLIMIT_AS, addressSpace() + (rlim_t{100} << 20));
      try {
        pool.apply(copied, BIG, 2);
        FAIL("the reply was allocated after all");
      } catch (const plugpool::TaskError& e) {
        REQUIRE(e.remoteType() == "std::bad_alloc");
        REQUIRE_THAT(e.remoteMessage(), Catch::Contains("could not allocate 200.0 MiB") &&
                                            Catch::Contains("that worker was replaced"));
      }
    }
    // The held result is intact, the pool goes on with a new worker.
    REQUIRE(static_cast<int>(held.data()[BIG - 1]) == (1 + BIG - 1) % 251);
    REQUIRE(isPattern(pool.apply(copied, 1000, 3), 1000, 3));
    REQUIRE(pool.stats().workersStarted == 2);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("an error in the dispatcher breaks the pool cleanly; every call says why") {
  testing::ProcessSnapshot before;
  {
    Pool pool(4, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE(pool.apply(square, 3) == 9);
    {
      // Fewer descriptors than the pool polls (an eventfd, and a channel and a pidfd per
      // worker). The submit wakes the dispatcher, which must poll again before any reply can
      // reach it, and that poll fails with EINVAL.
      Limit limit(RLIMIT_NOFILE, 5);
      auto running = pool.submit(sleep, 300);
      REQUIRE_THROWS_MATCHES(running.get(), plugpool::PoolBroken,
                             Catch::Matchers::Predicate<plugpool::PoolBroken>([](const auto& e) {
                               return std::string(e.what()).find("poll") != std::string::npos;
                             }));
    }
    // Later calls fail the same way, at once; a PoolBroken is a PoolClosed.
    REQUIRE_THROWS_WITH(pool.apply(square, 2),
                        Catch::Contains("the pool broke") && Catch::Contains("Invalid argument"));
    REQUIRE_THROWS_AS(pool.map(square, testing::range(10)), plugpool::PoolClosed);
    REQUIRE(pool.closed());
  }
  // ~Pool returned: its workers were killed and reaped, its descriptors closed.
  testing::requireCleanShutdown(before);
}

// Run only in a fresh process, by the test below: in this one, glibc may start a thread on the
// cached stack of one that ended, and then needs no new memory.
TEST_CASE("callbacks whose thread cannot start (a fresh process)", "[.fresh]") {
  std::mutex mutex;
  std::vector<int> ran;
  std::set<std::thread::id> threads;
  auto record = [&](int which) {
    std::lock_guard lock(mutex);
    ran.push_back(which);
    threads.insert(std::this_thread::get_id());
  };
  // The dispatcher completes `f` with the limit in place: no room for a thread's stack when
  // it posts the callback. The apply after it proves the dispatcher has got past that.
  auto completeUnderLimit = [&](Pool& pool, plugpool::Future<Int>& f) {
    auto square = pool.task<Int(Int)>("examples", "square");
    Limit limit(RLIMIT_AS, addressSpace() + (rlim_t{1} << 20));
    REQUIRE(f.get() == 300);
    REQUIRE(pool.apply(square, 2) == 4);
  };
  SECTION("the next callback starts the thread, and both run in order") {
    Pool pool(1, {"examples"});
    auto f = pool.submit(pool.task<Int(Int)>("examples", "sleep_ms"), 300);
    f.then([&](const Int&) { record(1); });
    completeUnderLimit(pool, f);
    {
      std::lock_guard lock(mutex);
      REQUIRE(ran.empty());  // it waits for a thread
    }
    f.then([&](const Int&) { record(2); });
    REQUIRE(testing::eventually([&] {
      std::lock_guard lock(mutex);
      return ran.size() == 2;
    }));
    REQUIRE(ran == std::vector<int>{1, 2});
    REQUIRE(threads.size() == 1);
    REQUIRE(threads.count(std::this_thread::get_id()) == 0);
  }
  SECTION("without another callback, destroying the pool runs it") {
    {
      Pool pool(1, {"examples"});
      auto f = pool.submit(pool.task<Int(Int)>("examples", "sleep_ms"), 300);
      f.then([&](const Int&) { record(1); });
      completeUnderLimit(pool, f);
    }
    REQUIRE(ran == std::vector<int>{1});
    REQUIRE(threads.count(std::this_thread::get_id()) == 1);
  }
}

TEST_CASE("a callback whose thread cannot start still runs, never on the dispatcher") {
  if (SANITIZED) {
    WARN("skipped under the sanitizers: their allocators abort instead of failing");
    return;
  }
  testing::ProcessSnapshot before;
  for (const char* section : {"the next callback starts the thread, and both run in order",
                              "without another callback, destroying the pool runs it"}) {
    INFO(section);
    REQUIRE(runFresh({"callbacks whose thread cannot start (a fresh process)", "-c", section}) ==
            0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a worker killed while it writes a large reply crashed; crashRetries applies") {
  testing::ProcessSnapshot before;
  // 900 KB results travel through the socket (shared segments start at 1 MiB), so a random
  // SIGKILL often lands while a worker is in the middle of writing one.
  const Int items = SANITIZED ? 600 : 4000;
  constexpr Int SIZE = 900'000;
  std::atomic<int> kills{0};
  {
    auto o = testing::options(2, {testing::fixture("sizes")});
    o.crashRetries = 5;
    Pool pool(o);
    auto pattern = pool.task<Bytes(Int, Int)>("sizes", "pattern");
    std::vector<std::tuple<Int, Int>> args;
    for (Int i = 0; i < items; ++i) args.emplace_back(SIZE, i);
    std::atomic<bool> stop{false};
    std::thread killer([&] {
      std::mt19937 random(12345);
      while (!stop) {
        std::this_thread::sleep_for(SANITIZED ? 200ms : 40ms);
        // Workers that have run a while, so ready ones: a storm on starting workers is
        // another case (workers that cannot start fail work fast).
        std::vector<int> workers;
        for (int child : testing::childProcesses()) {
          if (testing::ageOf(child) > (SANITIZED ? 2s : 300ms)) workers.push_back(child);
        }
        if (workers.empty()) continue;
        ::kill(workers[random() % workers.size()], SIGKILL);
        ++kills;
      }
    });
    // However fast the machine, the storm lasts until it has killed enough workers: the map
    // runs again (all of it checked each time) until then, at most 20 times.
    const int enough = SANITIZED ? 3 : 10;
    int maps = 0;
    try {
      do {
        std::vector<Bytes> results = pool.starmap(pattern, args, 1);
        REQUIRE(results.size() == static_cast<std::size_t>(items));
        for (Int i = 0; i < items; ++i) REQUIRE(isPattern(results[i], SIZE, i));
      } while (++maps < 20 && kills < enough);
    } catch (...) {
      stop = true;
      killer.join();
      throw;
    }
    stop = true;
    killer.join();
    INFO(kills << " workers killed over " << maps << " maps of " << items << " items");
    REQUIRE(kills >= enough);
    REQUIRE(pool.stats().workersLost > 0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a start that fails for a moment does not break the pool; it heals") {
  testing::ProcessSnapshot before;
  SECTION("no descriptor for the replacement of a crashed worker") {
    // Descriptors 3-9 are taken first, so the pool's own are all above them, and a limit of
    // 10 leaves no number free for a new one while the pool's stay valid.
    Placeholders placeholders(10);
    Pool pool(2, {"examples"});
    auto pid = pool.task<Int()>("examples", "worker_pid");
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE(pool.map(square, testing::range(100), 1).size() == 100);
    {
      // Not one descriptor more: the replacement's socketpair fails with EMFILE.
      Limit limit(RLIMIT_NOFILE, 10);
      ::kill(static_cast<pid_t>(pool.apply(pid)), SIGKILL);
      std::this_thread::sleep_for(500ms);  // a few tries, each failing
      // The other worker serves on, whatever happens to the replacement.
      for (int i = 0; i < 50; ++i) {
        Int got = 0;
        try {
          got = pool.apply(square, i);
        } catch (const plugpool::WorkerCrashed&) {
          continue;  // sent to the killed worker before its death was seen
        }
        REQUIRE(got == i * i);
      }
    }
    // Descriptors are free again: a later try starts the replacement.
    REQUIRE(testing::eventually([&] { return pool.stats().workersStarted >= 3; }));
    REQUIRE(testing::eventually([&] { return testing::childProcesses().size() == 2; }));
    REQUIRE(pool.map(square, testing::range(100), 1).size() == 100);
  }
  SECTION("starting workers killed from outside in a burst") {
    // A slow initializer keeps each new worker starting for a while.
    auto o = testing::options(3, {"examples"});
    o.initializer = plugpool::initializer<Int(Int)>("examples", "sleep_ms", Int{400});
    Pool pool(o);
    auto pid = pool.task<Int()>("examples", "worker_pid");
    auto square = pool.task<Int(Int)>("examples", "square");
    const auto survivor = static_cast<int>(pool.apply(pid));
    int killed = 0;
    std::set<int> seen{survivor};
    // Kill every worker but one, and then each replacement while it starts, several times.
    for (int round = 0; round < 40 && killed < 8; ++round) {
      for (int child : testing::childProcesses()) {
        if (child == survivor) continue;
        if (seen.insert(child).second && round > 0) ++killed;
        ::kill(child, SIGKILL);
      }
      std::this_thread::sleep_for(50ms);
    }
    REQUIRE(killed >= 3);
    // The survivor serves on; no call fails with StartError.
    REQUIRE(pool.map(square, testing::range(20), 1).size() == 20);
    // And the pool has its three workers again.
    REQUIRE(testing::eventually([&] { return testing::childProcesses().size() == 3; }));
    REQUIRE(pool.map(square, testing::range(20), 1).size() == 20);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("workers that cannot start fail work fast, and the pool heals once one can") {
  testing::ProcessSnapshot before;
  {
    const std::string flag = "/tmp/plugpool-test-heal-" + std::to_string(::getpid());
    std::remove(flag.c_str());
    auto o = testing::options(1, {"examples", testing::fixture("faults")});
    o.initializer = plugpool::initializer<Int(std::string)>("faults", "fail_if_exists", flag);
    Pool pool(o);
    auto pid = pool.task<Int()>("examples", "worker_pid");
    auto square = pool.task<Int(Int)>("examples", "square");
    std::ofstream(flag) << "x";
    ::kill(static_cast<pid_t>(pool.apply(pid)), SIGKILL);  // its replacement's init fails
    // With no worker to serve, work fails at once with the start's error; it does not hang.
    bool failed = false;
    REQUIRE(testing::eventually([&] {
      try {
        pool.apply(square, 3);
      } catch (const plugpool::StartError& e) {
        failed = std::string(e.what()).find("refusing to start") != std::string::npos;
      } catch (const plugpool::WorkerCrashed&) {
      }
      return failed;
    }));
    const auto started = pool.stats().workersStarted;
    std::this_thread::sleep_for(500ms);
    // Retried with backoff, not in a loop (CPython gh-87472): a few starts in half a second.
    REQUIRE(pool.stats().workersStarted - started <= 4);
    std::remove(flag.c_str());
    // The next start succeeds (within the backoff, at most 10 s) and the pool serves again.
    REQUIRE(testing::eventually([&] {
      try {
        return pool.apply(square, 4) == 16;
      } catch (const plugpool::StartError&) {
        return false;
      }
    }));
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a host that forks a long-lived helper still stops its pool at once") {
  testing::ProcessSnapshot before;
  {
    pid_t helper = -1;
    auto o = testing::options(2, {"examples"});
    o.stopTimeout = 60s;  // were the workers to wait for it, ~Pool would take a minute
    Pool pool(o);
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE(pool.map(square, testing::range(10)).size() == 10);
    // The helper holds copies of the pool's socket ends (fork without exec) and lives on.
    helper = ::fork();
    REQUIRE(helper >= 0);
    if (helper == 0) {
      ::pause();
      ::_exit(0);
    }
    struct Reap {  // on every path, failures included
      pid_t pid;
      ~Reap() {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    } reap{helper};
    const auto start = std::chrono::steady_clock::now();
    pool.shutdown(/*wait=*/true);
    const auto took = std::chrono::steady_clock::now() - start;
    // Well under the minute it would take if the workers never saw their channel end.
    REQUIRE(took < 20s);
  }
  testing::requireCleanShutdown(before);
}
