// Futures with real workers: submit / applyAsync / mapAsync / starmapAsync, get with timeouts,
// callbacks and the thread they run on, waiting on many results (waitAny, waitAll,
// asCompleted, wait), cancellation.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using testing::isCancelled;

using plugpool::Pool;
using Int = std::int64_t;
using namespace std::chrono_literals;

TEST_CASE("submit returns a future whose get gives the result") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto add = pool.task<double(double, double)>("examples", "add");
    auto f = pool.submit(square, 12);
    auto g = pool.applyAsync(add, 1.5, 2.25);
    REQUIRE(f.get() == 144);
    REQUIRE(g.get() == 3.75);
    REQUIRE(f.ready());
    REQUIRE(f.successful());
    REQUIRE(f.error() == nullptr);
    REQUIRE_FALSE(f.cancelled());
    REQUIRE(f.get() == 144);  // again: the same value
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("mapAsync and starmapAsync deliver the whole result list") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto add = pool.task<double(double, double)>("examples", "add");
    std::vector<Int> items(1000);
    std::iota(items.begin(), items.end(), 0);
    auto squares = pool.mapAsync(square, items, 7);
    std::vector<std::tuple<double, double>> pairs = {{1, 2}, {3, 4}, {5, 6}};
    auto sums = pool.starmapAsync(add, pairs);
    REQUIRE(sums.get() == std::vector<double>{3, 7, 11});
    const auto& got = squares.get();
    REQUIRE(got.size() == items.size());
    for (std::size_t i = 0; i < items.size(); ++i) REQUIRE(got[i] == items[i] * items[i]);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("get with a timeout only stops waiting; the task goes on") {
  testing::ProcessSnapshot before;
  testing::Gate gate;  // the task runs until the gate opens, however slow the machine
  {
    Pool pool(1, {testing::fixture("faults")});
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    auto f = pool.submit(waiting, gate.path());
    REQUIRE_THROWS_AS(f.get(10ms), plugpool::WaitTimeout);
    REQUIRE_FALSE(f.wait(10ms));
    REQUIRE_FALSE(f.ready());
    REQUIRE_THROWS_AS(f.successful(), plugpool::UsageError);
    gate.open();
    REQUIRE(f.get(30s) == 1);
    REQUIRE(f.successful());
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a failed call's future throws the task's error every time") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"examples"});
    auto fail = pool.task<Int(Int)>("examples", "fail");
    auto f = pool.submit(fail, 7);
    REQUIRE_THROWS_AS(f.get(), plugpool::TaskError);
    REQUIRE_THROWS_WITH(f.get(), Catch::Contains("fail called with 7"));
    REQUIRE_FALSE(f.successful());
    REQUIRE(f.error() != nullptr);
    auto whole = pool.mapAsync(fail, std::vector<Int>{1, 2});
    REQUIRE_THROWS_AS(whole.get(), plugpool::TaskError);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("callbacks run on one callback thread, and a slow one does not hold up results") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto fail = pool.task<Int(Int)>("examples", "fail");

    std::promise<void> release;
    auto released = release.get_future().share();
    std::promise<std::thread::id> slowThread;
    std::promise<std::string> failure;
    Int slowValue = 0;  // written by the callback before it signals slowThread

    // The first callback blocks until the main thread has received another result.
    // (Catch's REQUIRE is not thread-safe: callbacks only record what they saw.)
    pool.submit(square, 3).then([&](const Int& v) {
      slowValue = v;
      slowThread.set_value(std::this_thread::get_id());
      released.wait_for(30s);
    });
    REQUIRE(pool.submit(square, 4).get(30s) == 16);  // delivered while the callback blocks
    std::vector<Int> streamed;
    for (Int v : pool.imap(square, std::vector<Int>{1, 2, 3})) streamed.push_back(v);
    REQUIRE(streamed == std::vector<Int>{1, 4, 9});

    pool.submit(fail, 5).then({}, [&](std::exception_ptr e) {
      try {
        std::rethrow_exception(e);
      } catch (const plugpool::TaskError& t) {
        failure.set_value(t.remoteType());
      }
    });
    auto callbackThread = slowThread.get_future().get();
    REQUIRE(callbackThread != std::this_thread::get_id());
    REQUIRE(slowValue == 9);
    release.set_value();
    auto errors = failure.get_future();
    REQUIRE(errors.wait_for(30s) == std::future_status::ready);
    REQUIRE(errors.get() == "std::runtime_error");

    // Attached after the result is in: still runs, on the callback thread.
    auto done = pool.submit(square, 5);
    done.wait();
    std::promise<std::thread::id> late;
    done.then([&](const Int&) { late.set_value(std::this_thread::get_id()); });
    REQUIRE(late.get_future().get() == callbackThread);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("mapAsync's callback receives the whole list") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    std::promise<std::vector<Int>> got;
    pool.mapAsync(square, std::vector<Int>{1, 2, 3}).then([&](const std::vector<Int>& v) {
      got.set_value(v);
    });
    REQUIRE(got.get_future().get() == std::vector<Int>{1, 4, 9});
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("waitAny, waitAll and asCompleted follow completion order") {
  testing::ProcessSnapshot before;
  // (Gates outlive the pool, whose destructor waits for the calls they hold.)
  std::vector<testing::Gate> gates(3);
  testing::Gate later;  // opened once the waits on `slow` below have timed out
  {
    // Each call runs until its gate opens, on a worker of its own (one chunk per worker), so
    // the order they end in is the order the test opens them, however slow the machine.
    auto o = testing::options(3, {testing::fixture("faults")});
    o.chunksInFlight = 1;
    Pool pool(o);
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    std::vector<plugpool::Future<Int>> futures;
    for (auto& gate : gates) futures.push_back(pool.submit(waiting, gate.path()));

    gates[1].open();
    REQUIRE(plugpool::waitAny(futures) == 1u);
    REQUIRE_FALSE(plugpool::waitAll(futures, 1ms));
    // 2 ends next, then 0, while asCompleted is waiting for them.
    std::thread opener([&] {
      gates[2].open();
      futures[2].wait();
      gates[0].open();
    });
    std::vector<std::size_t> order;
    for (std::size_t i : plugpool::asCompleted(futures)) order.push_back(i);
    opener.join();
    REQUIRE(order == std::vector<std::size_t>{1, 2, 0});
    REQUIRE(plugpool::waitAll(futures, 0ms));

    auto slow = std::vector{pool.submit(waiting, later.path())};
    REQUIRE(plugpool::waitAny(slow, 1ms) == std::nullopt);
    auto timed = plugpool::asCompleted(slow, 1ms);
    REQUIRE_THROWS_AS(timed.next(), plugpool::WaitTimeout);
    later.open();
  }
  testing::requireCleanShutdown(before);
}

namespace {

using Indices = std::vector<std::size_t>;

// Options for calls that run until their gates open, each on a worker of its own: `workers`
// workers loading examples and faults, one chunk in flight per worker.
plugpool::Options gatedOptions(unsigned workers) {
  auto o = testing::options(workers, {"examples", testing::fixture("faults")});
  o.chunksInFlight = 1;
  return o;
}

}  // namespace

TEST_CASE("wait with FIRST_EXCEPTION returns once a call fails, while a slow one still runs") {
  testing::ProcessSnapshot before;
  testing::Gate gate;  // (outlives the pool, whose destructor waits for the call it holds)
  {
    Pool pool(gatedOptions(2));
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    auto fail = pool.task<Int(Int)>("examples", "fail");
    std::vector futures{pool.submit(waiting, gate.path()), pool.submit(fail, 1)};
    auto r = plugpool::wait(futures, plugpool::ReturnWhen::FIRST_EXCEPTION);
    REQUIRE(r.done == Indices{1});
    REQUIRE(r.notDone == Indices{0});
    REQUIRE_THROWS_AS(futures[1].get(), plugpool::TaskError);
    REQUIRE_FALSE(futures[0].ready());
    gate.open();
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("wait with FIRST_EXCEPTION waits for all when none fails but by cancellation") {
  testing::ProcessSnapshot before;
  testing::Gate never, gate;
  {
    Pool pool(gatedOptions(2));
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    auto square = pool.task<Int(Int)>("examples", "square");
    auto cancelled = pool.submit(waiting, never.path());
    REQUIRE(cancelled.cancel());
    auto result = pool.submit(square, 3);
    REQUIRE(result.get() == 9);
    std::vector futures{cancelled, result, pool.submit(waiting, gate.path())};
    // (Python: a cancelled future is not one that raised.)
    const auto start = std::chrono::steady_clock::now();
    auto timed = plugpool::wait(futures, plugpool::ReturnWhen::FIRST_EXCEPTION, 100ms);
    REQUIRE(std::chrono::steady_clock::now() - start >= 100ms);  // it waited for the third
    REQUIRE(timed.done == Indices{0, 1});
    REQUIRE(timed.notDone == Indices{2});
    gate.open();
    auto all = plugpool::wait(futures, plugpool::ReturnWhen::FIRST_EXCEPTION);
    REQUIRE(all.done == Indices{0, 1, 2});
    REQUIRE(all.notDone.empty());
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("wait with FIRST_COMPLETED returns every call done once one is") {
  testing::ProcessSnapshot before;
  testing::Gate first, second;
  {
    Pool pool(gatedOptions(2));
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    auto square = pool.task<Int(Int)>("examples", "square");
    auto quick = pool.submit(square, 2);
    REQUIRE(quick.get() == 4);
    std::vector gated{pool.submit(waiting, first.path()), pool.submit(waiting, second.path())};
    auto r = plugpool::wait(std::vector{gated[0], quick, gated[1]},
                            plugpool::ReturnWhen::FIRST_COMPLETED);
    REQUIRE(r.done == Indices{1});  // at once: one is done already
    REQUIRE(r.notDone == Indices{0, 2});
    second.open();
    r = plugpool::wait(gated, plugpool::ReturnWhen::FIRST_COMPLETED);
    REQUIRE(r.done == Indices{1});
    REQUIRE(r.notDone == Indices{0});
    first.open();
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("wait with a timeout returns what is done by then, without throwing") {
  testing::ProcessSnapshot before;
  testing::Gate gate;
  {
    Pool pool(gatedOptions(2));
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    auto square = pool.task<Int(Int)>("examples", "square");
    auto quick = pool.submit(square, 2);
    REQUIRE(quick.get() == 4);
    std::vector futures{pool.submit(waiting, gate.path()), quick};
    auto r = plugpool::wait(futures, plugpool::ReturnWhen::ALL_COMPLETED, 50ms);
    REQUIRE(r.done == Indices{1});
    REQUIRE(r.notDone == Indices{0});
    gate.open();
    r = plugpool::wait(futures);  // ALL_COMPLETED, no timeout
    REQUIRE(r.done == Indices{0, 1});
    REQUIRE(r.notDone.empty());
    r = plugpool::wait(std::vector<plugpool::Future<Int>>{});
    REQUIRE(r.done.empty());
    REQUIRE(r.notDone.empty());
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("wait lists a future named several times once, at its first index") {
  testing::ProcessSnapshot before;
  testing::Gate gate;
  {
    Pool pool(gatedOptions(2));
    auto waiting = pool.task<Int(std::string)>("faults", "wait_for_file");
    auto square = pool.task<Int(Int)>("examples", "square");
    auto done = pool.submit(square, 2);
    REQUIRE(done.get() == 4);
    auto slow = pool.submit(waiting, gate.path());
    std::vector futures{slow, done, slow, done, slow};
    auto r = plugpool::wait(futures, plugpool::ReturnWhen::ALL_COMPLETED, 10ms);
    REQUIRE(r.done == Indices{1});
    REQUIRE(r.notDone == Indices{0});
    r = plugpool::wait(futures, plugpool::ReturnWhen::FIRST_COMPLETED);
    REQUIRE(r.done == Indices{1});
    REQUIRE(r.notDone == Indices{0});
    gate.open();
    r = plugpool::wait(futures);
    REQUIRE(r.done == Indices{0, 1});
    REQUIRE(r.notDone.empty());
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("cancel drops a queued call and stops a running one") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"examples"});
    auto sleep = pool.task<Int(Int)>("examples", "sleep_ms");
    auto square = pool.task<Int(Int)>("examples", "square");

    auto running = pool.submit(sleep, 20'000);
    auto queued1 = pool.submit(square, 2);  // sent to the worker behind `running`
    auto queued2 = pool.submit(square, 3);  // still in the host's queue
    auto queued3 = pool.submit(square, 4);
    // `running` and queued1 are with the worker, however long it took to start.
    REQUIRE(testing::eventually([&] { return pool.stats().chunksSent >= 2; }));

    REQUIRE(queued2.cancel());
    REQUIRE(queued2.cancelled());
    REQUIRE_THROWS_AS(queued2.get(), plugpool::Cancelled);

    auto started = pool.stats().workersStarted;
    REQUIRE(running.cancel());  // kills the worker, long before 20 s
    REQUIRE(running.cancelled());
    REQUIRE(isCancelled(running.error()));
    // The work queued behind it is not lost: it runs on the replacement.
    REQUIRE(queued1.get(30s) == 4);
    REQUIRE(queued3.get(30s) == 16);
    REQUIRE(pool.stats().workersStarted == started + 1);
    REQUIRE(pool.stats().workersLost == 0);

    REQUIRE_FALSE(queued1.cancel());  // already done: stays a result
    REQUIRE(queued1.get() == 4);
    REQUIRE(pool.apply(square, 5) == 25);
  }
  testing::requireCleanShutdown(before);
}
