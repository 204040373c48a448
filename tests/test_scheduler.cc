// test_scheduler.cc — the pool's scheduling policy (runtime/src/scheduler.h), rule by rule,
// with no worker process and no dispatcher: workers are WorkerIds, time is a fake clock (T0
// plus durations), and every outcome is read from the chunk's Call, as a caller would. Chunks
// are registered with their Call by Call::add(), the first half of Call::submit(), and handed
// to the Scheduler directly.
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <catch2/catch.hpp>

#include "plugpool/errors.h"
#include "scheduler.h"

namespace {

using namespace std::chrono_literals;
using plugpool::Cancelled;
using plugpool::Options;
using plugpool::PoolBroken;
using plugpool::PoolClosed;
using plugpool::ProtocolError;
using plugpool::StackFrame;
using plugpool::Stats;
using plugpool::TaskError;
using plugpool::TaskTimeout;
using plugpool::WorkerCrashed;
using plugpool::detail::Call;
using plugpool::detail::CallbackQueue;
using plugpool::detail::ChunkOutcome;
using plugpool::detail::ChunkRequest;
using plugpool::detail::Clock;
using plugpool::detail::Core;
using plugpool::detail::CrashContent;
using plugpool::detail::Scheduler;
using plugpool::detail::SchedulerOptions;
using plugpool::detail::StatsCounter;
using plugpool::detail::TaskRef;
using plugpool::detail::WorkerEnd;
using plugpool::detail::WorkerId;

using Sent = std::vector<std::string>;  // "a0@1": chunk 0 of call a, to worker 1

const Clock::time_point T0{};
constexpr std::uint64_t MAX_WORDS = std::uint64_t{1} << 20;

// --- the rig -------------------------------------------------------------------------------------

SchedulerOptions limits(unsigned workers, unsigned chunksInFlight) {
  SchedulerOptions o;
  o.workers = workers;
  o.chunksInFlight = chunksInFlight;
  o.maxWords = MAX_WORDS;
  return o;
}

int pidOf(WorkerId w) {
  return 100 + static_cast<int>(w);
}

// A Scheduler under test, with the calls and chunks made for it, named for assertions.
struct Rig {
  explicit Rig(SchedulerOptions options) : scheduler(options, counter) {}
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  // A call of demo.work named `name`; its chunks are name0, name1, …
  std::shared_ptr<Call> call(const std::string& name, std::chrono::milliseconds timeout = 0ms) {
    TaskRef task;
    task.plugin = 0;
    task.task = 0;
    task.pluginName = "demo";
    task.taskName = "work";
    task.timeout = timeout;
    auto call = std::make_shared<Call>(task, std::weak_ptr<Core>{}, callbacks);
    calls[call.get()] = {name, 0};
    return call;
  }

  // Submits the next chunk of `call` to the scheduler: `items` items of `dataWords` words
  // each. Returns its index in the call.
  std::size_t submit(const std::shared_ptr<Call>& call, unsigned items = 1,
                     std::uint16_t dataWords = 1) {
    Named& named = calls.at(call.get());
    const auto [index, firstItem] = call->add(items);
    REQUIRE(firstItem == named.items);
    auto message = ChunkRequest(call->task(), items, dataWords, 0).release();
    chunkNames.emplace_back(message, named.name + std::to_string(index));
    scheduler.submit({call, index, message, items, firstItem});
    named.items += items;
    return index;
  }
  // Submits `chunks` chunks of `items` items each.
  void submitChunks(const std::shared_ptr<Call>& call, int chunks, unsigned items) {
    for (int i = 0; i < chunks; ++i) submit(call, items);
  }

  void add(WorkerId w) { scheduler.addWorker(w, pidOf(w)); }

  // What assign(now) gives out, in order.
  Sent assign(Clock::time_point now = T0) {
    Sent sent;
    for (const auto& a : scheduler.assign(now)) {
      std::string name = "?";
      for (const auto& [message, chunk] : chunkNames) {
        if (message == a.run) name = chunk;
      }
      sent.push_back(name + "@" + std::to_string(a.worker));
    }
    return sent;
  }

  // `w` answers its oldest unanswered chunk at `now`, having run it for `elapsed`.
  void reply(WorkerId w, Clock::time_point now = T0, std::chrono::nanoseconds elapsed = 1ms) {
    ChunkOutcome outcome;
    outcome.elapsedNs = static_cast<std::uint64_t>(elapsed.count());
    scheduler.replied(w, std::move(outcome), now);
  }

  // The chunk's outcome; null while it has not ended.
  static const ChunkOutcome* outcome(const std::shared_ptr<Call>& call, std::size_t index) {
    return call->wait(index, Clock::now());
  }

  // "pending", "done", or the name of the error it ended with.
  static std::string state(const std::shared_ptr<Call>& call, std::size_t index) {
    const ChunkOutcome* o = outcome(call, index);
    if (o == nullptr) return "pending";
    if (!o->failure) return "done";
    try {
      std::rethrow_exception(o->failure);
    } catch (const WorkerCrashed&) {
      return "WorkerCrashed";
    } catch (const TaskTimeout&) {
      return "TaskTimeout";
    } catch (const TaskError&) {
      return "TaskError";
    } catch (const ProtocolError&) {
      return "ProtocolError";
    } catch (const Cancelled&) {
      return "Cancelled";
    } catch (const PoolBroken&) {
      return "PoolBroken";
    } catch (const PoolClosed&) {
      return "PoolClosed";
    } catch (const std::exception& e) {
      return std::string("another error: ") + e.what();
    }
  }
  static std::vector<std::string> states(const std::shared_ptr<Call>& call) {
    std::vector<std::string> all;
    for (std::size_t i = 0; i < call->chunks(); ++i) all.push_back(state(call, i));
    return all;
  }

  // The error of type E that the chunk ended with (fails the test if it ended otherwise).
  template <typename E>
  static E error(const std::shared_ptr<Call>& call, std::size_t index) {
    const ChunkOutcome* o = outcome(call, index);
    REQUIRE(o != nullptr);
    REQUIRE(o->failure);
    try {
      std::rethrow_exception(o->failure);
    } catch (const E& e) {
      return e;
    } catch (const std::exception& e) {
      FAIL("chunk " << index << " ended with another error: " << e.what());
    }
    throw std::logic_error("not reached: FAIL throws");
  }

  Stats stats() const { return counter.get(); }

  struct Named {
    std::string name;
    std::uint64_t items;  // submitted so far: the next chunk's firstItem
  };

  std::shared_ptr<CallbackQueue> callbacks = std::make_shared<CallbackQueue>();
  StatsCounter counter;
  Scheduler scheduler;
  std::map<const Call*, Named> calls;
  std::vector<std::pair<std::shared_ptr<capnp::MallocMessageBuilder>, std::string>> chunkNames;
};

WorkerEnd killedBy(int signal) {
  WorkerEnd end;
  end.signal = signal;
  end.how = "was killed by signal " + std::to_string(signal);
  return end;
}

WorkerEnd exited(int status) {
  WorkerEnd end;
  end.exitStatus = status;
  end.how = "exited with status " + std::to_string(status);
  return end;
}

// A worker that died of `signal` and reported the crash in item `item` of its running chunk.
WorkerEnd crashed(int signal, std::uint32_t item) {
  WorkerEnd end = killedBy(signal);
  CrashContent crash;
  crash.signal = signal;
  crash.item = item;
  crash.frames = {StackFrame{"crashing(int)", "plugin.cc", 12, 0x1000},
                  StackFrame{"main", "", 0, 0x2000}};
  end.crash = crash;
  end.crashItem = item;
  return end;
}

WorkerEnd violated(const std::string& violation) {
  WorkerEnd end = killedBy(SIGKILL);
  end.violation = violation;
  return end;
}

}  // namespace

// --- chunks go out in submission order, each to the worker holding fewest ------------------------

TEST_CASE(
    "chunks go out in submission order, alternating between equally loaded workers, up to "
    "chunksInFlight each") {
  Rig rig(limits(2, 3));
  rig.add(1);
  rig.add(2);
  auto a = rig.call("a");
  rig.submitChunks(a, 7, 2);

  CHECK(rig.assign() == Sent{"a0@1", "a1@2", "a2@1", "a3@2", "a4@1", "a5@2"});
  CHECK(rig.scheduler.held(1) == 3);
  CHECK(rig.scheduler.held(2) == 3);
  CHECK(rig.scheduler.queued() == 1);
  CHECK(rig.assign() == Sent{});

  rig.reply(2);
  CHECK(rig.assign() == Sent{"a6@2"});
  CHECK(rig.stats().chunksSent == 7);
  CHECK(rig.stats().itemsSent == 14);

  // The reply completed a1 (worker 2's oldest) with who ran it and where its items start.
  const ChunkOutcome* a1 = Rig::outcome(a, 1);
  REQUIRE(a1 != nullptr);
  CHECK(!a1->failure);
  CHECK(a1->workerPid == 102);
  CHECK(a1->firstItem == 2);
  CHECK(Rig::states(a) == std::vector<std::string>{"pending", "done", "pending", "pending",
                                                   "pending", "pending", "pending"});
}

TEST_CASE("with chunksInFlight 1 a worker holds one chunk at a time") {
  Rig rig(limits(2, 1));
  rig.add(1);
  rig.add(2);
  auto a = rig.call("a");
  rig.submitChunks(a, 3, 1);

  CHECK(rig.assign() == Sent{"a0@1", "a1@2"});
  CHECK(rig.scheduler.queued() == 1);
  rig.reply(1);
  CHECK(rig.assign() == Sent{"a2@1"});
  CHECK(Rig::states(a) == std::vector<std::string>{"done", "pending", "pending"});
}

TEST_CASE("a chunk goes to the worker holding fewest, the first added on a tie") {
  Rig rig(limits(2, 3));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submitChunks(a, 2, 1);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});

  rig.add(2);
  rig.submitChunks(b, 3, 1);
  CHECK(rig.assign() == Sent{"b0@2", "b1@2", "b2@1"});
}

TEST_CASE("with chunksInFlight 0 a worker holds AUTO_IN_FLIGHT chunks until one is answered") {
  Rig rig(limits(1, 0));
  rig.add(1);
  auto a = rig.call("a");
  rig.submitChunks(a, 10, 1);

  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});
  CHECK(rig.scheduler.held(1) == Scheduler::AUTO_IN_FLIGHT);
  CHECK(rig.assign() == Sent{});
  CHECK(rig.scheduler.queued() == 8);
}

TEST_CASE("short replies raise the automatic limit, never above MAX_IN_FLIGHT") {
  Rig rig(limits(1, 0));
  rig.add(1);
  auto a = rig.call("a");
  rig.submitChunks(a, 100, 1);
  CHECK(rig.assign().size() == 2);

  // A 10 µs chunk: QUEUED_WORK (1 ms) is 100 of them, more than MAX_IN_FLIGHT.
  rig.reply(1, T0, 10us);
  CHECK(rig.assign().size() == Scheduler::MAX_IN_FLIGHT - 1);
  CHECK(rig.scheduler.held(1) == Scheduler::MAX_IN_FLIGHT);
  CHECK(rig.scheduler.queued() == 100 - 2 - (Scheduler::MAX_IN_FLIGHT - 1));

  rig.reply(1, T0, 1us);
  CHECK(rig.assign().size() == 1);
  CHECK(rig.scheduler.held(1) == Scheduler::MAX_IN_FLIGHT);
}

TEST_CASE(
    "the automatic limit follows the smoothed chunk time, and long chunks keep "
    "AUTO_IN_FLIGHT") {
  Rig rig(limits(1, 0));
  rig.add(1);
  auto a = rig.call("a");
  rig.submitChunks(a, 40, 1);
  CHECK(rig.assign().size() == 2);

  // 100 µs: 1 ms / 100 µs = 10 chunks.
  rig.reply(1, T0, 100us);
  CHECK(rig.assign().size() == 9);
  CHECK(rig.scheduler.held(1) == 10);

  // Then 500 µs: smoothed (3 × 100 + 500) / 4 = 200 µs, so 5; it holds 9, so none more.
  rig.reply(1, T0, 500us);
  CHECK(rig.assign() == Sent{});
  for (int i = 0; i < 5; ++i) rig.reply(1, T0, 200us);
  CHECK(rig.scheduler.held(1) == 4);
  CHECK(rig.assign().size() == 1);
  CHECK(rig.scheduler.held(1) == 5);

  // A 2 ms chunk pulls it to (3 × 200 + 2000) / 4 = 650 µs: 1 chunk, raised to
  // AUTO_IN_FLIGHT, and longer ones keep it there.
  rig.reply(1, T0, 2ms);
  CHECK(rig.scheduler.held(1) == 4);
  CHECK(rig.assign() == Sent{});
  for (int i = 0; i < 3; ++i) rig.reply(1, T0, 2ms);
  CHECK(rig.assign().size() == 1);
  CHECK(rig.scheduler.held(1) == Scheduler::AUTO_IN_FLIGHT);
}

TEST_CASE(
    "a chunk larger than maxWords fails with MessageTooLarge and the next one still goes "
    "out") {
  auto options = limits(1, 2);
  options.maxWords = 64;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  rig.submit(a, 1, 200);  // one item of 200 words
  rig.submit(a, 1, 1);

  CHECK(rig.assign() == Sent{"a1@1"});
  auto e = Rig::error<TaskError>(a, 0);
  CHECK(e.remoteType() == "plugpool::MessageTooLarge");
  CHECK(e.plugin() == "demo");
  CHECK(e.task() == "work");
  CHECK_THAT(e.remoteMessage(), Catch::Contains("maxMessageBytes"));
  CHECK(!e.item());
  CHECK(rig.stats().chunksSent == 1);
  CHECK(rig.stats().itemsSent == 1);
  CHECK(rig.scheduler.held(1) == 1);
}

// --- at most Options::workers run tasks ----------------------------------------------------------

TEST_CASE("no more than Options::workers workers run tasks at once") {
  SECTION("one of two ready workers") {
    Rig rig(limits(1, 2));
    rig.add(1);
    rig.add(2);
    auto a = rig.call("a");
    rig.submitChunks(a, 3, 1);
    CHECK(rig.assign() == Sent{"a0@1", "a1@1"});
    CHECK(rig.scheduler.held(2) == 0);
    rig.reply(1);
    CHECK(rig.assign() == Sent{"a2@1"});
    rig.reply(1);
    rig.reply(1);
    // Both hold nothing: the first added takes the next chunk, and the other still waits.
    rig.submitChunks(a, 2, 1);
    CHECK(rig.assign() == Sent{"a3@1", "a4@1"});
    CHECK(rig.scheduler.held(2) == 0);
  }
  SECTION("two of three ready workers") {
    Rig rig(limits(2, 2));
    rig.add(1);
    rig.add(2);
    rig.add(3);
    auto a = rig.call("a");
    rig.submitChunks(a, 5, 1);
    CHECK(rig.assign() == Sent{"a0@1", "a1@2", "a2@1", "a3@2"});
    CHECK(rig.scheduler.held(3) == 0);
    CHECK(rig.scheduler.queued() == 1);
  }
}

TEST_CASE(
    "a worker the pool stops no longer counts as running tasks, so another takes work at "
    "once") {
  Rig rig(limits(1, 1));
  rig.add(1);
  rig.add(2);
  auto a = rig.call("a");
  rig.submitChunks(a, 2, 1);
  CHECK(rig.assign() == Sent{"a0@1"});
  CHECK(rig.assign() == Sent{});

  rig.scheduler.stopping(1);
  CHECK(rig.assign() == Sent{"a1@2"});
  CHECK(rig.scheduler.held(1) == 1);
  CHECK(Rig::state(a, 0) == "pending");
}

TEST_CASE(
    "a worker sent maxTasksPerChild items retires: it takes no more, is taken once it holds "
    "nothing, and only then does its replacement take work") {
  auto options = limits(1, 3);
  options.maxTasksPerChild = 3;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  rig.submit(a, 2);
  rig.submit(a, 2);
  rig.submit(a, 1);

  // After a0 it has been sent 2 items; after a1, 4: it retires with a2 still to go.
  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});
  CHECK(rig.scheduler.retiring(1));
  CHECK(rig.stats().workersRetired == 1);
  CHECK(!rig.scheduler.canServe());

  rig.add(2);  // its replacement, ready early
  CHECK(rig.scheduler.canServe());
  CHECK(rig.scheduler.takeRetiring().empty());
  CHECK(rig.assign() == Sent{});

  rig.reply(1);
  CHECK(rig.scheduler.takeRetiring().empty());
  CHECK(rig.assign() == Sent{});

  rig.reply(1);
  CHECK(rig.scheduler.takeRetiring() == std::vector<WorkerId>{1});
  CHECK(rig.scheduler.takeRetiring().empty());  // once
  CHECK(rig.assign() == Sent{"a2@2"});
  CHECK(rig.stats().workersRetired == 1);

  rig.reply(2);
  const ChunkOutcome* a1 = Rig::outcome(a, 1);
  const ChunkOutcome* a2 = Rig::outcome(a, 2);
  REQUIRE(a1 != nullptr);
  REQUIRE(a2 != nullptr);
  CHECK(a1->workerPid == 101);
  CHECK(a1->firstItem == 2);
  CHECK(a2->workerPid == 102);
  CHECK(a2->firstItem == 4);
}

// --- a lost worker -------------------------------------------------------------------------------

TEST_CASE(
    "a lost worker's running chunk fails with WorkerCrashed naming its pid, signal and item; "
    "the chunks behind it go out again first") {
  Rig rig(limits(1, 3));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submitChunks(a, 4, 4);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1", "a2@1"});
  rig.reply(1);
  CHECK(rig.assign() == Sent{"a3@1"});
  rig.submit(b);

  rig.scheduler.workerLost(1, crashed(SIGSEGV, 1));
  auto e = Rig::error<WorkerCrashed>(a, 1);
  CHECK(e.pid() == 101);
  CHECK(e.signal() == SIGSEGV);
  CHECK(e.exitStatus() == -1);
  CHECK(e.plugin() == "demo");
  CHECK(e.task() == "work");
  CHECK(e.item() == std::optional<std::uint64_t>(5));  // a1 starts at item 4
  REQUIRE(e.stack().size() == 2);
  CHECK(e.stack()[0].function == "crashing(int)");
  CHECK(Rig::states(a) == std::vector<std::string>{"done", "WorkerCrashed", "pending", "pending"});
  CHECK(rig.scheduler.held(1) == 0);
  CHECK(rig.scheduler.queued() == 3);

  rig.add(2);
  CHECK(rig.assign() == Sent{"a2@2", "a3@2", "b0@2"});
}

TEST_CASE("a worker that died without a crash report fails its chunk naming no item or stack") {
  Rig rig(limits(1, 1));
  rig.add(1);
  auto a = rig.call("a");
  rig.submit(a, 3);
  CHECK(rig.assign() == Sent{"a0@1"});

  SECTION("killed") {
    rig.scheduler.workerLost(1, killedBy(SIGKILL));
    auto e = Rig::error<WorkerCrashed>(a, 0);
    CHECK(e.pid() == 101);
    CHECK(e.signal() == SIGKILL);
    CHECK(e.exitStatus() == -1);
    CHECK(!e.item());
    CHECK(e.stack().empty());
  }
  SECTION("exited") {
    rig.scheduler.workerLost(1, exited(3));
    auto e = Rig::error<WorkerCrashed>(a, 0);
    CHECK(e.signal() == 0);
    CHECK(e.exitStatus() == 3);
    CHECK(!e.item());
  }
}

TEST_CASE(
    "with crashRetries 1 a crashed chunk goes out again first, to another worker, and fails "
    "when lost a second time") {
  auto options = limits(1, 2);
  options.crashRetries = 1;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  rig.submitChunks(a, 3, 2);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});

  rig.scheduler.workerLost(1, killedBy(SIGKILL));
  CHECK(Rig::states(a) == std::vector<std::string>{"pending", "pending", "pending"});
  CHECK(rig.stats().chunksRetried == 1);
  CHECK(rig.scheduler.queued() == 3);

  rig.add(2);
  CHECK(rig.assign() == Sent{"a0@2", "a1@2"});  // the retry, then the one behind it, then a2

  rig.scheduler.workerLost(2, crashed(SIGSEGV, 1));
  auto e = Rig::error<WorkerCrashed>(a, 0);
  CHECK(e.pid() == 102);
  CHECK(e.item() == std::optional<std::uint64_t>(1));
  CHECK(rig.stats().chunksRetried == 1);
  // a1 was behind it both times: never to blame.
  CHECK(Rig::states(a) == std::vector<std::string>{"WorkerCrashed", "pending", "pending"});

  rig.add(3);
  CHECK(rig.assign() == Sent{"a1@3", "a2@3"});
}

TEST_CASE("a protocol violation fails the running chunk with ProtocolError and is never retried") {
  auto options = limits(1, 2);
  options.crashRetries = 3;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  rig.submitChunks(a, 2, 1);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});

  rig.scheduler.workerLost(1, violated("sent Hello twice"));
  auto e = Rig::error<ProtocolError>(a, 0);
  CHECK(std::string(e.what()) ==
        "worker 101 sent Hello twice; it was killed while running demo.work");
  CHECK(rig.stats().chunksRetried == 0);
  CHECK(Rig::state(a, 1) == "pending");
  CHECK(rig.scheduler.queued() == 1);
}

TEST_CASE(
    "a reply that could not be allocated fails the running chunk with TaskError "
    "std::bad_alloc naming its size, and is not retried") {
  auto options = limits(1, 1);
  options.crashRetries = 1;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  rig.submit(a);
  CHECK(rig.assign() == Sent{"a0@1"});

  WorkerEnd end = killedBy(SIGKILL);
  end.unallocatableBytes = std::uint64_t{3} << 20;
  rig.scheduler.workerLost(1, end);
  auto e = Rig::error<TaskError>(a, 0);
  CHECK(e.remoteType() == "std::bad_alloc");
  CHECK(e.remoteMessage() ==
        "the host could not allocate 3.0 MiB (3145728 bytes) to receive the chunk's results "
        "from worker 101; that worker was replaced");
  CHECK(rig.stats().chunksRetried == 0);
  CHECK(rig.scheduler.queued() == 0);
}

// --- timeouts ------------------------------------------------------------------------------------

TEST_CASE(
    "a running chunk's deadline is when it started plus its timeout per item, the earliest "
    "over the workers") {
  Rig rig(limits(2, 2));
  rig.add(1);
  rig.add(2);
  auto a = rig.call("a", 100ms);
  auto b = rig.call("b", 50ms);
  CHECK(rig.scheduler.nextDeadline() == Clock::time_point::max());

  rig.submit(a, 3);
  CHECK(rig.assign(T0 + 5ms) == Sent{"a0@1"});
  CHECK(rig.scheduler.nextDeadline() == T0 + 305ms);
  rig.submit(b, 1);
  CHECK(rig.assign(T0 + 10ms) == Sent{"b0@2"});
  CHECK(rig.scheduler.nextDeadline() == T0 + 60ms);

  CHECK(rig.scheduler.timedOut(T0 + 59ms).empty());
  CHECK(rig.scheduler.timedOut(T0 + 60ms) == std::vector<WorkerId>{2});
  CHECK(rig.scheduler.nextDeadline() == T0 + 305ms);
  CHECK(rig.scheduler.timedOut(T0 + 304ms).empty());
  CHECK(Rig::state(a, 0) == "pending");
  CHECK(Rig::state(b, 0) == "TaskTimeout");
}

TEST_CASE(
    "a chunk past its timeout fails with TaskTimeout, the chunks behind it go out again at "
    "once, and its worker is to be stopped") {
  Rig rig(limits(1, 2));
  rig.add(1);
  auto a = rig.call("a", 100ms);
  auto b = rig.call("b");
  rig.submit(a, 3);
  rig.submit(a, 2);
  rig.submit(b);
  CHECK(rig.assign(T0 + 5ms) == Sent{"a0@1", "a1@1"});

  CHECK(rig.scheduler.timedOut(T0 + 305ms) == std::vector<WorkerId>{1});
  auto e = Rig::error<TaskTimeout>(a, 0);
  CHECK(e.timeoutMs() == 100);
  CHECK(e.plugin() == "demo");
  CHECK(e.task() == "work");
  CHECK(std::string(e.what()) ==
        "demo.work did not finish within its timeout of 100 ms per item (a chunk of 3 items); "
        "worker 101 was stopped and replaced");
  CHECK(rig.stats().chunksTimedOut == 1);
  CHECK(Rig::state(a, 1) == "pending");
  CHECK(rig.scheduler.queued() == 2);
  CHECK(rig.scheduler.held(1) == 1);  // it is still running a0 until it is gone
  CHECK(rig.scheduler.nextDeadline() == Clock::time_point::max());
  CHECK(rig.scheduler.timedOut(T0 + 1h).empty());

  // Its replacement takes a1 at once, before b0: the stopped worker no longer counts as
  // running tasks.
  rig.add(2);
  CHECK(rig.assign(T0 + 306ms) == Sent{"a1@2", "b0@2"});
  CHECK(rig.scheduler.nextDeadline() == T0 + 506ms);

  rig.scheduler.workerLost(1, killedBy(SIGTERM));
  CHECK(rig.scheduler.queued() == 0);
  CHECK(Rig::states(a) == std::vector<std::string>{"TaskTimeout", "pending"});
  CHECK(rig.stats().chunksTimedOut == 1);
}

TEST_CASE(
    "a chunk's deadline starts when its worker answered the one before it, not when it "
    "was sent") {
  Rig rig(limits(1, 2));
  rig.add(1);
  auto a = rig.call("a", 100ms);
  rig.submit(a);
  CHECK(rig.assign(T0) == Sent{"a0@1"});
  rig.submit(a);
  CHECK(rig.assign(T0 + 50ms) == Sent{"a1@1"});
  CHECK(rig.scheduler.nextDeadline() == T0 + 100ms);  // still a0's

  rig.reply(1, T0 + 80ms);
  CHECK(rig.scheduler.nextDeadline() == T0 + 180ms);
  CHECK(rig.scheduler.timedOut(T0 + 150ms).empty());  // past T0 + 100 ms, but a1 began at 80
  CHECK(rig.scheduler.timedOut(T0 + 180ms) == std::vector<WorkerId>{1});
  CHECK(Rig::states(a) == std::vector<std::string>{"done", "TaskTimeout"});
}

TEST_CASE("a chunk without a timeout never times out") {
  Rig rig(limits(1, 1));
  rig.add(1);
  auto a = rig.call("a");
  rig.submit(a, 1000);
  CHECK(rig.assign() == Sent{"a0@1"});
  CHECK(rig.scheduler.nextDeadline() == Clock::time_point::max());
  CHECK(rig.scheduler.timedOut(T0 + 24h).empty());
  CHECK(Rig::state(a, 0) == "pending");
}

// --- cancelling ----------------------------------------------------------------------------------

TEST_CASE("cancelling a call's queued chunks leaves its sent chunks and other calls alone") {
  Rig rig(limits(1, 1));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submit(a);
  rig.submit(a);
  rig.submit(b);
  rig.submit(a);
  CHECK(rig.assign() == Sent{"a0@1"});

  CHECK(rig.scheduler.cancel(a.get(), /*running=*/false).empty());
  CHECK(Rig::states(a) == std::vector<std::string>{"pending", "Cancelled", "Cancelled"});
  CHECK(std::string(Rig::error<Cancelled>(a, 1).what()) == "cancelled before it ran");
  CHECK(Rig::state(b, 0) == "pending");
  CHECK(rig.scheduler.queued() == 1);

  rig.reply(1);
  CHECK(Rig::state(a, 0) == "done");
  CHECK(rig.assign() == Sent{"b0@1"});
}

TEST_CASE(
    "cancelling a call's sent chunks kills the worker running one, not one where it only "
    "waits behind another call's chunk") {
  Rig rig(limits(2, 3));
  rig.add(1);
  rig.add(2);
  auto a = rig.call("a");
  auto b = rig.call("b");
  auto c = rig.call("c");
  rig.submit(b);
  rig.submit(a);
  rig.submit(a);
  rig.submit(b);
  CHECK(rig.assign() == Sent{"b0@1", "a0@2", "a1@1", "b1@2"});
  CHECK(a->running());

  CHECK(rig.scheduler.cancel(a.get(), /*running=*/true) == std::vector<WorkerId>{2});
  CHECK(std::string(Rig::error<Cancelled>(a, 0).what()) ==
        "cancelled while it ran; its worker was killed and replaced");
  CHECK(std::string(Rig::error<Cancelled>(a, 1).what()) == "cancelled before it ran");
  CHECK(Rig::states(b) == std::vector<std::string>{"pending", "pending"});
  CHECK(!a->running());
  CHECK(b->running());

  // Worker 2 is being killed: new work goes to worker 1.
  rig.submit(c);
  CHECK(rig.assign() == Sent{"c0@1"});

  // Worker 1 answers b0, then a1, which it ran though it had been cancelled: that is dropped.
  rig.reply(1);
  rig.reply(1);
  CHECK(Rig::state(b, 0) == "done");
  CHECK(Rig::state(a, 1) == "Cancelled");

  // Worker 2 dies of the kill: b1, behind the cancelled chunk, goes out again.
  rig.scheduler.workerLost(2, killedBy(SIGKILL));
  CHECK(Rig::state(b, 1) == "pending");
  CHECK(rig.assign() == Sent{"b1@1"});
}

TEST_CASE("a reply to a cancelled chunk is dropped, and the next reply still counts") {
  Rig rig(limits(1, 2));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submit(a);
  rig.submit(b);
  CHECK(rig.assign() == Sent{"a0@1", "b0@1"});
  CHECK(rig.scheduler.cancel(a.get(), true) == std::vector<WorkerId>{1});

  rig.reply(1);  // it answered a0 before the kill reached it
  CHECK(Rig::state(a, 0) == "Cancelled");
  CHECK(rig.scheduler.held(1) == 1);
  rig.reply(1);
  const ChunkOutcome* b0 = Rig::outcome(b, 0);
  REQUIRE(b0 != nullptr);
  CHECK(!b0->failure);
  CHECK(b0->workerPid == 101);
}

// --- workers the pool stops or that close --------------------------------------------------------

TEST_CASE("a worker the pool stops gives back everything it holds when it is gone, failing none") {
  Rig rig(limits(1, 3));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submitChunks(a, 3, 1);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1", "a2@1"});

  rig.scheduler.stopping(1);
  rig.submit(b);
  CHECK(rig.assign() == Sent{});
  CHECK(!rig.scheduler.canServe());

  rig.scheduler.workerLost(1, killedBy(SIGTERM));
  CHECK(Rig::states(a) == std::vector<std::string>{"pending", "pending", "pending"});
  CHECK(rig.scheduler.queued() == 4);
  rig.add(2);
  CHECK(rig.assign() == Sent{"a0@2", "a1@2", "a2@2"});
}

TEST_CASE(
    "a closed worker takes no more work and still counts as running tasks; its running "
    "chunk fails when it is lost") {
  Rig rig(limits(1, 2));
  rig.add(1);
  auto a = rig.call("a");
  rig.submitChunks(a, 2, 1);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});

  rig.scheduler.closed(1);
  rig.submit(a);
  rig.add(2);
  CHECK(rig.assign() == Sent{});

  rig.scheduler.workerLost(1, exited(3));
  CHECK(Rig::error<WorkerCrashed>(a, 0).exitStatus() == 3);
  CHECK(Rig::states(a) == std::vector<std::string>{"WorkerCrashed", "pending", "pending"});
  CHECK(rig.assign() == Sent{"a1@2", "a2@2"});
}

// --- failing everything --------------------------------------------------------------------------

TEST_CASE("failQueued ends only the queued chunks") {
  Rig rig(limits(1, 1));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submitChunks(a, 2, 1);
  rig.submit(b);
  CHECK(rig.assign() == Sent{"a0@1"});

  rig.scheduler.failQueued(std::make_exception_ptr(PoolClosed("no worker can start")));
  CHECK(Rig::states(a) == std::vector<std::string>{"pending", "PoolClosed"});
  CHECK(Rig::state(b, 0) == "PoolClosed");
  CHECK(rig.scheduler.queued() == 0);
  CHECK(rig.scheduler.held(1) == 1);
}

TEST_CASE(
    "failUnfinished ends queued chunks with one error, running chunks with the other, and "
    "stops every worker") {
  Rig rig(limits(2, 2));
  rig.add(1);
  rig.add(2);
  auto a = rig.call("a");
  auto c = rig.call("c");
  rig.submitChunks(a, 4, 1);
  rig.submit(c);
  CHECK(rig.assign() == Sent{"a0@1", "a1@2", "a2@1", "a3@2"});

  rig.scheduler.failUnfinished(std::make_exception_ptr(Cancelled("queued")),
                               std::make_exception_ptr(PoolBroken("running")));
  CHECK(Rig::states(a) ==
        std::vector<std::string>{"PoolBroken", "PoolBroken", "Cancelled", "Cancelled"});
  CHECK(Rig::state(c, 0) == "Cancelled");
  CHECK(rig.scheduler.queued() == 0);

  CHECK(!rig.scheduler.canServe());
  rig.submit(c);
  CHECK(rig.assign() == Sent{});

  // They are gone: what they held has ended, so nothing goes out again.
  rig.scheduler.workerLost(1, killedBy(SIGKILL));
  rig.scheduler.workerLost(2, killedBy(SIGKILL));
  CHECK(rig.scheduler.queued() == 1);  // c1, submitted after
}

// --- what the dispatcher asks --------------------------------------------------------------------

TEST_CASE("idle, loneChunk and canServe say what the scheduler holds") {
  Rig rig(limits(1, 2));
  CHECK(rig.scheduler.idle());
  CHECK(!rig.scheduler.loneChunk());
  CHECK(!rig.scheduler.canServe());

  rig.add(1);
  CHECK(rig.scheduler.canServe());
  auto a = rig.call("a");
  rig.submit(a);
  CHECK(!rig.scheduler.idle());
  CHECK(!rig.scheduler.loneChunk());  // queued, not on a worker

  rig.assign();
  CHECK(rig.scheduler.loneChunk());
  CHECK(!rig.scheduler.idle());

  rig.submit(a);
  CHECK(!rig.scheduler.loneChunk());  // one out, one queued
  rig.assign();
  CHECK(!rig.scheduler.loneChunk());  // two out

  rig.reply(1);
  CHECK(rig.scheduler.loneChunk());
  rig.reply(1);
  CHECK(!rig.scheduler.loneChunk());
  CHECK(rig.scheduler.idle());

  rig.scheduler.closed(1);
  CHECK(!rig.scheduler.canServe());
}

TEST_CASE("a worker never added, or already lost, is ignored") {
  Rig rig(limits(1, 1));
  auto a = rig.call("a");
  rig.submitChunks(a, 2, 1);

  rig.scheduler.workerLost(7, crashed(SIGSEGV, 0));
  rig.reply(7);
  rig.scheduler.closed(7);
  rig.scheduler.stopping(7);
  CHECK(rig.scheduler.held(7) == 0);
  CHECK(!rig.scheduler.retiring(7));
  CHECK(rig.scheduler.queued() == 2);

  rig.add(1);
  rig.reply(1);  // it holds nothing yet
  CHECK(rig.assign() == Sent{"a0@1"});
  rig.scheduler.workerLost(1, killedBy(SIGKILL));
  rig.scheduler.workerLost(1, crashed(SIGSEGV, 0));
  CHECK(Rig::error<WorkerCrashed>(a, 0).signal() == SIGKILL);
  CHECK(Rig::state(a, 1) == "pending");
  CHECK(rig.scheduler.queued() == 1);
}

// --- corner cases a pool of processes cannot reach deterministically -----------------------------

TEST_CASE(
    "two workers lost in one round both give back the chunks behind their running ones, "
    "each in order and before later submissions; the later loss's go first") {
  Rig rig(limits(2, 3));
  rig.add(1);
  rig.add(2);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submitChunks(a, 6, 1);
  rig.submit(b);
  CHECK(rig.assign() == Sent{"a0@1", "a1@2", "a2@1", "a3@2", "a4@1", "a5@2"});

  rig.scheduler.workerLost(1, killedBy(SIGKILL));
  rig.scheduler.workerLost(2, killedBy(SIGKILL));
  CHECK(Rig::states(a) == std::vector<std::string>{"WorkerCrashed", "WorkerCrashed", "pending",
                                                   "pending", "pending", "pending"});
  CHECK(Rig::error<WorkerCrashed>(a, 1).pid() == 102);

  rig.add(3);
  rig.add(4);
  CHECK(rig.assign() == Sent{"a3@3", "a5@4", "a2@3", "a4@4", "b0@3"});
}

TEST_CASE("a reply and a timeout at the same instant: the reply taken first saves its chunk") {
  Rig rig(limits(1, 2));
  rig.add(1);
  auto a = rig.call("a", 100ms);
  rig.submitChunks(a, 2, 1);
  CHECK(rig.assign(T0) == Sent{"a0@1", "a1@1"});

  rig.reply(1, T0 + 100ms);
  CHECK(rig.scheduler.timedOut(T0 + 100ms).empty());
  CHECK(Rig::states(a) == std::vector<std::string>{"done", "pending"});
  CHECK(rig.scheduler.nextDeadline() == T0 + 200ms);
}

TEST_CASE(
    "a reply and a timeout at the same instant: the timeout taken first wins, and the "
    "stopped worker's later replies are dropped") {
  Rig rig(limits(1, 2));
  rig.add(1);
  auto a = rig.call("a", 100ms);
  rig.submitChunks(a, 2, 1);
  CHECK(rig.assign(T0) == Sent{"a0@1", "a1@1"});

  CHECK(rig.scheduler.timedOut(T0 + 100ms) == std::vector<WorkerId>{1});
  rig.reply(1, T0 + 100ms);  // a0, answered as it was being stopped
  CHECK(Rig::state(a, 0) == "TaskTimeout");
  CHECK(rig.scheduler.held(1) == 0);
  rig.reply(1, T0 + 101ms);  // a1, which it had been sent and has been given back
  CHECK(Rig::state(a, 1) == "pending");

  rig.add(2);
  CHECK(rig.assign(T0 + 102ms) == Sent{"a1@2"});
  rig.reply(2, T0 + 103ms);
  const ChunkOutcome* a1 = Rig::outcome(a, 1);
  REQUIRE(a1 != nullptr);
  CHECK(!a1->failure);
  CHECK(a1->workerPid == 102);
}

TEST_CASE("a timed-out chunk is not retried when its stopped worker is lost") {
  auto options = limits(1, 1);
  options.crashRetries = 1;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a", 100ms);
  rig.submit(a);
  CHECK(rig.assign(T0) == Sent{"a0@1"});
  CHECK(rig.scheduler.timedOut(T0 + 100ms) == std::vector<WorkerId>{1});

  rig.scheduler.workerLost(1, killedBy(SIGKILL));
  CHECK(Rig::state(a, 0) == "TaskTimeout");
  CHECK(rig.stats().chunksRetried == 0);
  CHECK(rig.scheduler.queued() == 0);
  CHECK(rig.scheduler.idle());
}

TEST_CASE("a worker that crashes in a chunk cancelled behind another's fails nobody else") {
  Rig rig(limits(1, 3));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submit(b);
  rig.submit(a);
  rig.submit(b);
  CHECK(rig.assign() == Sent{"b0@1", "a0@1", "b1@1"});
  CHECK(rig.scheduler.cancel(a.get(), true).empty());  // b0 is running, not a0

  rig.reply(1);  // b0; now it runs the cancelled a0
  rig.scheduler.workerLost(1, crashed(SIGSEGV, 0));
  CHECK(Rig::state(a, 0) == "Cancelled");
  CHECK(Rig::states(b) == std::vector<std::string>{"done", "pending"});
  CHECK(rig.scheduler.queued() == 1);
}

// A chunk cancelled while it waited behind another call's has ended, but its worker still
// runs it: if it hangs, its timeout must still stop that worker, or the chunks behind it (b1)
// would wait for ever. (The dispatcher before this split gave such a chunk no deadline.)
TEST_CASE("a chunk cancelled behind another still bounds its worker by its timeout once it runs") {
  Rig rig(limits(1, 3));
  rig.add(1);
  auto a = rig.call("a", 100ms);
  auto b = rig.call("b", 100ms);
  rig.submit(b);
  rig.submit(a);
  rig.submit(b);
  CHECK(rig.assign(T0) == Sent{"b0@1", "a0@1", "b1@1"});
  CHECK(rig.scheduler.cancel(a.get(), true).empty());

  rig.reply(1, T0 + 10ms);  // b0; the worker now runs the cancelled a0
  CHECK(rig.scheduler.nextDeadline() == T0 + 110ms);
  CHECK(rig.scheduler.timedOut(T0 + 110ms) == std::vector<WorkerId>{1});
  CHECK(Rig::state(a, 0) == "Cancelled");
  CHECK(rig.scheduler.queued() == 1);      // b1, to go out again at once
  CHECK(rig.stats().chunksTimedOut == 0);  // a0 had ended: it is not counted as timed out
}
