// A worker's death costs only the item it was running (reply_log.h): the items of its chunk
// it had finished keep their results and are not run again, the ones after it run once more,
// elsewhere; with crashRetries the running item alone is retried. The same for a timeout.
// Real workers, real crashes, real kills; faults.logged_chaos records where each item ran.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using plugpool::Pool;
using testing::Int;
using namespace std::chrono_literals;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool SANITIZED = true;
#else
constexpr bool SANITIZED = false;
#endif

enum How : Int { NORMAL = 0, THROW = 1, CRASH = 2, HANG = 3, CRASH_ONCE = 5 };

Int item(Int x, How how = NORMAL) {
  return (x << 3) | how;
}

// How many times each item ran, from logged_chaos's file.
std::map<Int, int> runsIn(const std::string& path) {
  std::map<Int, int> runs;
  std::ifstream in(path);
  for (Int x; in >> x;) ++runs[x];
  return runs;
}

// What each item of a stream ended with: its result, or the error's type and item().
struct Ended {
  std::string result;
  std::string error;  // "crashed", "timeout", "task" or ""
  std::optional<std::uint64_t> item;
};

template <typename Stream>
std::vector<Ended> drain(Stream& stream) {
  std::vector<Ended> out;
  for (;;) {
    try {
      auto v = stream.next();
      if (!v) break;
      out.push_back({*v, "", std::nullopt});
    } catch (const plugpool::WorkerCrashed& e) {
      out.push_back({"", "crashed", e.item()});
    } catch (const plugpool::TaskTimeout& e) {
      out.push_back({"", "timeout", e.item()});
    } catch (const plugpool::TaskError& e) {
      out.push_back({"", "task", e.item()});
    }
  }
  return out;
}

// The file faults.logged_chaos records its runs in, named to the workers through their
// environment (they inherit the host's) while it lives.
class RunLog : public testing::TempPath {
 public:
  RunLog() : TempPath("runs") {
    ::setenv("PLUGPOOL_TEST_RUNS", path().c_str(), 1);
    std::remove((path() + ".crashed").c_str());
  }
  ~RunLog() {
    ::unsetenv("PLUGPOOL_TEST_RUNS");
    std::remove((path() + ".crashed").c_str());
  }
};

}  // namespace

TEST_CASE("a crash fails only the item that was running; the others run exactly once") {
  testing::ProcessSnapshot before;
  RunLog log;
  {
    Pool pool(testing::options(2, {testing::fixture("faults")}));
    auto chaos = pool.task<std::string(Int)>("faults", "logged_chaos");
    // One chunk of 10: item 4 crashes its worker, item 7 throws.
    std::vector<Int> items;
    for (Int x = 0; x < 10; ++x) items.push_back(item(x, x == 4 ? CRASH : x == 7 ? THROW : NORMAL));
    auto stream = pool.imap(chaos, items, 10);
    auto ended = drain(stream);
    REQUIRE(ended.size() == 10);
    for (Int x = 0; x < 10; ++x) {
      INFO("item " << x);
      if (x == 4) {
        REQUIRE(ended[x].error == "crashed");
        REQUIRE(ended[x].item == 4u);
      } else if (x == 7) {
        REQUIRE(ended[x].error == "task");
        REQUIRE(ended[x].item == 7u);
      } else {
        REQUIRE(ended[x].result == "r" + std::to_string(x));
      }
    }
    // Items 0-3 kept their results from the dead worker's log: not run again.
    auto runs = runsIn(log.path());
    for (Int x = 0; x < 10; ++x) {
      INFO("item " << x);
      REQUIRE(runs[x] == 1);
    }
    REQUIRE(pool.stats().workersLost == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("with crashRetries the crashed item alone is run again") {
  testing::ProcessSnapshot before;
  RunLog log;
  {
    auto o = testing::options(1, {testing::fixture("faults")});
    o.crashRetries = 1;
    Pool pool(o);
    auto chaos = pool.task<std::string(Int)>("faults", "logged_chaos");
    std::vector<Int> items;
    for (Int x = 0; x < 8; ++x) items.push_back(item(x, x == 5 ? CRASH_ONCE : NORMAL));
    const auto results = pool.map(chaos, items, 8);
    REQUIRE(results.size() == 8);
    for (Int x = 0; x < 8; ++x) REQUIRE(results[x] == "r" + std::to_string(x));
    auto runs = runsIn(log.path());
    for (Int x = 0; x < 8; ++x) {
      INFO("item " << x);
      REQUIRE(runs[x] == (x == 5 ? 2 : 1));
    }
    REQUIRE(pool.stats().chunksRetried == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("an item past its timeout fails alone, even inside a chunk whose budget is left") {
  testing::ProcessSnapshot before;
  RunLog log;
  {
    Pool pool(testing::options(2, {testing::fixture("faults")}));
    // 2 s: far past what the other items take on a loaded machine under a sanitizer. The
    // chunk of 6 would have had 12 s if it were timed as a whole; the hanging item runs 60 s.
    auto chaos = pool.task<std::string(Int)>("faults", "logged_chaos").withTimeout(2s);
    std::vector<Int> items;
    for (Int x = 0; x < 6; ++x) items.push_back(item(x, x == 2 ? HANG : NORMAL));
    const auto started = std::chrono::steady_clock::now();
    auto stream = pool.imap(chaos, items, 6);
    auto ended = drain(stream);
    const auto took = std::chrono::steady_clock::now() - started;
    REQUIRE(ended.size() == 6);
    for (Int x = 0; x < 6; ++x) {
      INFO("item " << x);
      if (x == 2) {
        REQUIRE(ended[x].error == "timeout");
        REQUIRE(ended[x].item == 2u);
      } else {
        REQUIRE(ended[x].result == "r" + std::to_string(x));
      }
    }
    REQUIRE(took < 11s);  // stopped after its own 2 s, not the chunk's 12
    auto runs = runsIn(log.path());
    for (Int x = 0; x < 6; ++x) REQUIRE(runs[x] == 1);
    REQUIRE(pool.stats().chunksTimedOut == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("withWholeChunks keeps whole-chunk failures") {
  testing::ProcessSnapshot before;
  RunLog log;
  {
    Pool pool(testing::options(1, {testing::fixture("faults")}));
    auto chaos = pool.task<std::string(Int)>("faults", "logged_chaos").withWholeChunks();
    std::vector<Int> items;
    for (Int x = 0; x < 6; ++x) items.push_back(item(x, x == 3 ? CRASH : NORMAL));
    auto stream = pool.imap(chaos, items, 6);
    auto ended = drain(stream);
    REQUIRE(ended.size() == 6);
    for (const Ended& e : ended) REQUIRE(e.error == "crashed");
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("kill storm: a killed worker costs at most the one item it was running") {
  testing::ProcessSnapshot before;
  const bool retries = GENERATE(false, true);
  INFO((retries ? "with" : "without") << " retries");
  constexpr Int N = 2000, CHUNK = 25;
  std::atomic<int> kills{0};
  {
    auto o = testing::options(2, {testing::fixture("faults")});
    o.crashRetries = retries ? 1000 : 0;
    Pool pool(o);
    auto spin = pool.task<Int(Int)>("faults", "spin_ms");
    std::atomic<bool> stop{false};
    std::thread killer([&] {
      std::mt19937 random(4242);
      while (!stop) {
        std::this_thread::sleep_for(SANITIZED ? 300ms : 100ms);
        // Ready workers, which have run a while: a storm on starting ones is another case
        // (workers that cannot start fail work fast: test_survive.cc).
        std::vector<int> workers;
        for (int child : testing::childProcesses()) {
          if (testing::ageOf(child) > (SANITIZED ? 2s : 300ms)) workers.push_back(child);
        }
        if (workers.empty()) continue;
        ::kill(workers[random() % workers.size()], SIGKILL);
        ++kills;
      }
    });
    // Items of 1 ms of CPU each, in chunks of 25: a killed worker held up to 25 ms of them.
    // The stream runs again (each item checked) until the storm has killed enough workers,
    // however fast the machine; at most 20 times.
    const int enough = SANITIZED ? 3 : 8;
    const std::vector<Int> items(N, 1);
    std::size_t failed = 0, correct = 0, total = 0;
    int rounds = 0;
    try {
      do {
        auto stream = pool.imap(spin, items, CHUNK);
        for (Int i = 0; i < N; ++i, ++total) {
          try {
            auto v = stream.next();
            REQUIRE(v);
            correct += *v == 1;
          } catch (const plugpool::WorkerCrashed& e) {
            REQUIRE(e.item());  // it names its item: that item's failure alone
            ++failed;
          }
        }
      } while (++rounds < 20 && kills < enough);
    } catch (...) {
      stop = true;
      killer.join();
      throw;
    }
    stop = true;
    killer.join();
    INFO(kills << " kills, " << failed << " items failed, over " << rounds << " streams");
    REQUIRE(kills >= enough);
    REQUIRE(failed + correct == total);
    if (retries) {
      REQUIRE(failed == 0);
    } else {
      // Whole chunks would have cost up to 25 items a kill.
      REQUIRE(failed <= static_cast<std::size_t>(kills.load()));
    }
  }
  testing::requireCleanShutdown(before);
}
