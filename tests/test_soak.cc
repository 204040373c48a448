// Soak: 200 000 items through one pool while the task throws, crashes, aborts and hangs at
// random (seeded) places. Every item must end exactly once with its result or the right
// error, and the pool must end with its N workers.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
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

enum How : Int { NORMAL = 0, THROW = 1, CRASH = 2, HANG = 3, ABORT = 4 };

// One item per input: x with a misbehaviour drawn at the given rates (per million items).
std::vector<Int> chaosItems(std::size_t n, std::uint64_t seed, int throwPpm, int crashPpm,
                            int hangPpm) {
  std::mt19937_64 random(seed);
  std::uniform_int_distribution<int> ppm(0, 999'999);
  std::vector<Int> items(n);
  for (std::size_t i = 0; i < n; ++i) {
    int r = ppm(random);
    Int how = r < throwPpm                        ? THROW
              : r < throwPpm + crashPpm           ? (r % 2 == 0 ? CRASH : ABORT)
              : r < throwPpm + crashPpm + hangPpm ? HANG
                                                  : NORMAL;
    items[i] = (static_cast<Int>(i) << 3) | how;
  }
  return items;
}

enum class Ended { RESULT, TASK_ERROR, CRASHED, TIMED_OUT, OTHER };

// Reads every item of `stream` exactly once, recording how each ended.
template <typename Stream>
std::vector<Ended> drain(Stream& stream, std::size_t n, const std::vector<Int>& items) {
  std::vector<Ended> ended;
  ended.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    try {
      auto v = stream.next();
      if (!v) break;
      ended.push_back(*v == 2 * (items[i] >> 3) + 1 ? Ended::RESULT : Ended::OTHER);
    } catch (const plugpool::TaskError&) {
      ended.push_back(Ended::TASK_ERROR);
    } catch (const plugpool::WorkerCrashed&) {
      ended.push_back(Ended::CRASHED);
    } catch (const plugpool::TaskTimeout&) {
      ended.push_back(Ended::TIMED_OUT);
    } catch (...) {
      ended.push_back(Ended::OTHER);
    }
  }
  return ended;
}

// Waits (up to a minute) until exactly `n` workers are running.
bool workersReturnTo(std::size_t n) {
  for (int i = 0; i < 600; ++i) {
    if (testing::childProcesses().size() == n) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

}  // namespace

TEST_CASE("soak: every item ends exactly once, with its result or the right error") {
  testing::ProcessSnapshot before;
  constexpr std::uint64_t SEED = 20261125;
  constexpr unsigned WORKERS = 2;
  {
    auto o = testing::options(WORKERS, {testing::fixture("faults")});
    o.stopTimeout = 200ms;
    Pool pool(o);
    auto chaos = pool.task<Int(Int)>("faults", "chaos");

    SECTION("single-item chunks with a timeout: crashes, aborts, hangs and throws") {
      constexpr std::size_t N = 100'000;
      auto items = chaosItems(N, SEED, 2000, 400, 40);
      // 2 s: far past what a normal item takes even on a loaded machine under a sanitizer,
      // where a worker descheduled for a quarter of a second would time out a healthy item.
      auto stream = pool.imap(chaos.withTimeout(2s), items);
      auto ended = drain(stream, N, items);
      REQUIRE(stream.next() == std::nullopt);  // nothing more than the input
      REQUIRE(ended.size() == N);
      std::size_t counts[5] = {};
      for (std::size_t i = 0; i < N; ++i) {
        Int how = items[i] & 7;
        Ended want = how == THROW                   ? Ended::TASK_ERROR
                     : how == CRASH || how == ABORT ? Ended::CRASHED
                     : how == HANG                  ? Ended::TIMED_OUT
                                                    : Ended::RESULT;
        INFO("item " << i << " how " << how);
        REQUIRE(ended[i] == want);
        ++counts[static_cast<int>(ended[i])];
      }
      std::printf("soak (chunks of 1): %zu results, %zu thrown, %zu crashed, %zu timed out\n",
                  counts[0], counts[1], counts[2], counts[3]);
      REQUIRE(counts[3] > 0);
      REQUIRE(pool.stats().chunksTimedOut == counts[3]);
    }
    SECTION("chunks of 50 without a timeout: a crash fails exactly its item") {
      constexpr std::size_t N = 100'000, CHUNK = 50;
      auto items = chaosItems(N, SEED + 1, 2000, 200, 0);
      auto stream = pool.imap(chaos, items, CHUNK);
      auto ended = drain(stream, N, items);
      REQUIRE(stream.next() == std::nullopt);
      REQUIRE(ended.size() == N);
      std::size_t crashes = 0;
      for (std::size_t i = 0; i < N; ++i) {
        const Int how = items[i] & 7;
        crashes += how == CRASH || how == ABORT;
        // The items of its chunk before and after it keep their results (reply_log.h).
        Ended want = how == CRASH || how == ABORT ? Ended::CRASHED
                     : how == THROW               ? Ended::TASK_ERROR
                                                  : Ended::RESULT;
        INFO("item " << i);
        REQUIRE(ended[i] == want);
      }
      // Each crashing item ran once: one worker lost per crash, not more.
      REQUIRE(crashes > 0);
      REQUIRE(pool.stats().workersLost == crashes);
    }
    REQUIRE(workersReturnTo(WORKERS));
  }
  testing::requireCleanShutdown(before);
}
