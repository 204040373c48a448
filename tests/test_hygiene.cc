// Host hygiene with real workers: the pool survives the host's signals (EINTR), never dies of
// SIGPIPE, and never reaps the host application's own children.
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using plugpool::Pool;
using testing::Int;

namespace {

std::atomic<int> ticks{0};
void onAlarm(int) {
  ticks.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

TEST_CASE("a host signal every millisecond interrupts nothing (EINTR is retried)") {
  testing::ProcessSnapshot before;
  struct sigaction action {};
  action.sa_handler = onAlarm;  // no SA_RESTART: every blocking call sees EINTR
  struct sigaction old {};
  REQUIRE(::sigaction(SIGALRM, &action, &old) == 0);
  itimerval every{{0, 1000}, {0, 1000}}, off{};
  REQUIRE(::setitimer(ITIMER_REAL, &every, nullptr) == 0);
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto items = testing::range(50'000);
    auto squares = pool.map(square, items, 100);
    for (std::size_t i = 0; i < items.size(); ++i) REQUIRE(squares[i] == items[i] * items[i]);
    Int n = 0;
    for (Int v : pool.imapUnordered(square, items)) n += v >= 0;
    REQUIRE(n == 50'000);
    REQUIRE(pool.submit(sleep, 200).get() == 200);
  }
  ::setitimer(ITIMER_REAL, &off, nullptr);
  ::sigaction(SIGALRM, &old, nullptr);
  REQUIRE(ticks > 50);  // the signals did arrive
  testing::requireCleanShutdown(before);
}

TEST_CASE("a worker that dies while the host writes to it does not raise SIGPIPE in the host") {
  testing::ProcessSnapshot before;
  struct sigaction old {};
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;  // SIGPIPE would kill this test process
  REQUIRE(::sigaction(SIGPIPE, &dfl, &old) == 0);
  {
    Pool pool(1, {"examples", testing::fixture("faults")});
    auto exitWith = pool.task<Int(Int)>("faults", "exit_with");
    auto echo = pool.task<plugpool::Bytes(plugpool::Bytes)>("examples", "echo_bytes");
    plugpool::Bytes big(std::size_t{16} << 20, std::byte{7});  // far more than a socket buffer
    for (int round = 0; round < 3; ++round) {
      auto dies = pool.submit(exitWith, 3);
      auto payload = pool.submit(echo, big);  // written while the worker exits
      REQUIRE_THROWS_AS(dies.get(), plugpool::WorkerCrashed);
      try {
        REQUIRE(payload.get().size() == big.size());  // resent to the replacement
      } catch (const plugpool::WorkerCrashed&) {
        // or lost with the worker, if it had started reading it: either way, no SIGPIPE
      }
    }
  }
  ::sigaction(SIGPIPE, &old, nullptr);
  testing::requireCleanShutdown(before);
}

TEST_CASE("the pool never reaps the host application's own children") {
  testing::ProcessSnapshot before;
  pid_t mine = ::fork();
  REQUIRE(mine >= 0);
  if (mine == 0) {
    ::usleep(500'000);
    ::_exit(42);
  }
  {
    Pool pool(2, {testing::fixture("faults")});
    auto segv = pool.task<Int(Int)>("faults", "segfault_if_negative");
    for (int i = 0; i < 5; ++i) {  // crashes make the pool reap and respawn workers
      REQUIRE_THROWS_AS(pool.apply(segv, -1), plugpool::WorkerCrashed);
    }
    REQUIRE(pool.apply(segv, 1) == 1);
  }
  int status = 0;
  REQUIRE(::waitpid(mine, &status, 0) == mine);  // still ours to reap
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 42);
  testing::requireCleanShutdown(before);
}
