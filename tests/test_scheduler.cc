// test_scheduler.cc — the pool's scheduling policy (runtime/src/scheduler.h), rule by rule,
// with no worker process and no dispatcher: workers are WorkerIds, time is a fake clock (T0
// plus durations), and every outcome is read from the chunk's Call, as a caller would. Chunks
// are registered with their Call by Call::add(), the first half of Call::submit(), and handed
// to the Scheduler directly.
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <catch2/catch.hpp>

#include "plugpool/codec.h"
#include "plugpool/errors.h"
#include "reply_log.h"
#include "scheduler.h"
#include "wire.capnp.h"

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
using plugpool::detail::itemError;
using plugpool::detail::ItemFailure;
using plugpool::detail::ItemProgress;
using plugpool::detail::PartialReply;
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

// Items and results are tuples whose first data word is a number: an argument's is its index
// in the call; a result's is that index plus LOGGED (read from a dead worker's reply log) or
// plus REPLIED (in a reply through the channel), so that each says where it came from.
constexpr std::uint64_t LOGGED = 1000;
constexpr std::uint64_t REPLIED = 2000;

void setValue(capnp::AnyStruct::Builder tuple, std::uint64_t value) {
  auto data = tuple.getDataSection();
  REQUIRE(data.size() >= sizeof value);
  std::memcpy(data.begin(), &value, sizeof value);
}

std::uint64_t valueOf(capnp::AnyStruct::Reader tuple) {
  auto data = tuple.getDataSection();
  REQUIRE(data.size() >= sizeof(std::uint64_t));
  std::uint64_t value = 0;
  std::memcpy(&value, data.begin(), sizeof value);
  return value;
}

// The call indexes a Run of `items` items holds: "13", "14-19", or "4,7" if not consecutive.
std::string itemsOfRun(capnp::MallocMessageBuilder& run, unsigned items) {
  auto list = plugpool::codec::readTupleList(
      run.getRoot<plugpool::wire::HostMessage>().getRun().getItems().asReader());
  CHECK(list.size() == items);
  std::vector<std::uint64_t> values;
  for (auto tuple : list) values.push_back(valueOf(tuple));
  if (values.empty()) return "none";
  bool consecutive = true;
  for (std::size_t j = 1; j < values.size(); ++j) consecutive &= values[j] == values[0] + j;
  if (consecutive) {
    return values.size() == 1 ? std::to_string(values[0])
                              : std::to_string(values[0]) + "-" + std::to_string(values.back());
  }
  std::string out;
  for (auto v : values) out += (out.empty() ? "" : ",") + std::to_string(v);
  return out;
}

// A list of `count` result tuples, the first `filled` holding value(j).
template <typename Value>
ChunkOutcome resultList(unsigned count, unsigned filled, Value value) {
  auto message = std::make_shared<capnp::MallocMessageBuilder>();
  auto list = message->getRoot<capnp::AnyPointer>().initAsListOfAnyStruct(1, 0, count);
  for (unsigned j = 0; j < filled; ++j) setValue(list[j], value(j));
  ChunkOutcome outcome;
  outcome.results =
      plugpool::codec::readTupleList(message->getRoot<capnp::AnyPointer>().asReader());
  outcome.keepAlive = std::move(message);
  return outcome;
}

// A worker's reply to a Run of the call's items [first, first + count): each result is its
// item's index plus REPLIED.
ChunkOutcome repliedFor(std::uint64_t first, unsigned count) {
  return resultList(count, count, [&](unsigned j) { return REPLIED + first + j; });
}

// What a dead worker's reply log held of its running chunk of `items` items, the first of
// them the call's item `first`: `finished` results (each its item's index plus LOGGED), and
// the item it was running.
PartialReply logged(std::uint64_t first, unsigned items, unsigned finished, unsigned running) {
  PartialReply partial;
  partial.outcome = resultList(items, finished, [&](unsigned j) { return LOGGED + first + j; });
  partial.finished = finished;
  partial.running = running;
  return partial;
}

WorkerEnd withLog(WorkerEnd end, PartialReply partial) {
  end.partial = std::move(partial);
  return end;
}

// What an error is, with the call index of its item if it names one: "WorkerCrashed(13)".
std::string describe(const std::exception_ptr& error) {
  auto withItem = [](const char* name, const std::optional<std::uint64_t>& item) {
    return std::string(name) + (item ? "(" + std::to_string(*item) + ")" : "");
  };
  try {
    std::rethrow_exception(error);
  } catch (const WorkerCrashed& e) {
    return withItem("WorkerCrashed", e.item());
  } catch (const TaskTimeout& e) {
    return withItem("TaskTimeout", e.item());
  } catch (const TaskError& e) {
    return withItem("TaskError", e.item());
  } catch (const ProtocolError&) {
    return "ProtocolError";
  } catch (const Cancelled&) {
    return "Cancelled";
  } catch (const std::exception& e) {
    return std::string("another error: ") + e.what();
  }
}

using Items = std::vector<std::string>;

// Each item of a chunk's outcome: its result's value, or what it failed with.
Items itemsOf(const ChunkOutcome& outcome) {
  REQUIRE(!outcome.failure);
  Items out;
  std::size_t e = 0;
  for (unsigned j = 0; j < outcome.results.size(); ++j) {
    if (e < outcome.errors.size() && outcome.errors[e].index == j) {
      const auto& f = outcome.errors[e++];
      out.push_back(f.error ? describe(f.error) : "threw " + f.type);
    } else {
      out.push_back(std::to_string(valueOf(outcome.results[j])));
    }
  }
  CHECK(e == outcome.errors.size());  // every error names an item, in increasing order
  return out;
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
  // each, whose first word is the item's index in the call. Returns its index in the call.
  std::size_t submit(const std::shared_ptr<Call>& call, unsigned items = 1,
                     std::uint16_t dataWords = 1) {
    Named& named = calls.at(call.get());
    const auto [index, firstItem] = call->add(items);
    REQUIRE(firstItem == named.items);
    ChunkRequest request(call->task(), items, dataWords, 0);
    if (dataWords > 0) {
      for (unsigned j = 0; j < items; ++j) setValue(request.items()[j], firstItem + j);
    }
    auto message = request.release();
    chunkNames.emplace_back(message, named.name + std::to_string(index));
    scheduler.submit({call, index, message, items, firstItem});
    named.items += items;
    return index;
  }
  // Submits `chunks` chunks of `items` items each.
  void submitChunks(const std::shared_ptr<Call>& call, int chunks, unsigned items) {
    for (int i = 0; i < chunks; ++i) submit(call, items);
  }

  // `itemProgress`: it says which item it runs and since when (a local worker's reply log).
  void add(WorkerId w, bool itemProgress = false) {
    scheduler.addWorker(w, pidOf(w), itemProgress);
  }

  // What assign(now) gives out, in order. A part of a chunk (a Run the scheduler made) is
  // named by the call indexes its Run holds: "items 14-19@2".
  Sent assign(Clock::time_point now = T0) {
    Sent sent;
    for (const auto& a : scheduler.assign(now)) {
      std::string name;
      for (const auto& [message, chunk] : chunkNames) {
        if (message == a.run) name = chunk;
      }
      if (name.empty()) name = "items " + itemsOfRun(*a.run, a.items);
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
  // `w` answers its oldest unanswered chunk with `outcome` (results, item errors).
  void reply(WorkerId w, ChunkOutcome outcome, Clock::time_point now = T0) {
    outcome.elapsedNs = 1'000'000;
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

// The error `error` holds, of type E (fails the test if it is another).
template <typename E>
E as(const std::exception_ptr& error) {
  REQUIRE(error);
  try {
    std::rethrow_exception(error);
  } catch (const E& e) {
    return e;
  } catch (const std::exception& e) {
    FAIL("another error: " << e.what());
  }
  throw std::logic_error("not reached: FAIL throws");
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

// --- a lost worker's reply log: only the item it was running is lost ----------------------------

TEST_CASE(
    "a worker lost part-way through a chunk: the items it finished keep the log's results, the "
    "one it was running fails naming its index, and the ones after it go out again first, as "
    "one part; the chunk ends once, when that part is answered") {
  Rig rig(limits(1, 3));
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submit(a, 10);  // items 0-9
  rig.submit(a, 10);  // items 10-19: the chunk its worker dies in
  rig.submit(a, 1);   // item 20, behind it
  a->seal();
  CHECK(rig.assign() == Sent{"a0@1", "a1@1", "a2@1"});
  rig.reply(1, repliedFor(0, 10));
  rig.submit(b);

  // It had finished items 10-12 and crashed in 13.
  PartialReply log = logged(10, 10, 3, 3);
  SECTION("every item it ran succeeded") {}
  SECTION("items that threw name their own index, in the log and in the part sent again") {
    log.outcome.errors.push_back({1, "std::runtime_error", "bad input", nullptr});
  }
  const bool threw = !log.outcome.errors.empty();
  rig.scheduler.workerLost(1, withLog(crashed(SIGSEGV, 3), log));
  CHECK(Rig::states(a) == std::vector<std::string>{"done", "pending", "pending"});
  CHECK(rig.stats().chunksRetried == 0);
  CHECK(rig.scheduler.queued() == 3);

  // The part goes out before a2, which was behind the lost chunk, and before b0, queued.
  rig.add(2);
  CHECK(rig.assign() == Sent{"items 14-19@2", "a2@2", "b0@2"});
  ChunkOutcome part = repliedFor(14, 6);
  if (threw) part.errors.push_back({1, "std::invalid_argument", "bad input", nullptr});
  rig.reply(2, std::move(part));

  const ChunkOutcome* a1 = Rig::outcome(a, 1);
  REQUIRE(a1 != nullptr);
  CHECK(a1->firstItem == 10);
  if (threw) {
    CHECK(itemsOf(*a1) == Items{"1010", "TaskError(11)", "1012", "WorkerCrashed(13)", "2014",
                                "TaskError(15)", "2016", "2017", "2018", "2019"});
    CHECK(as<TaskError>(a1->errors[0].error).workerPid() == 101);
    CHECK(as<TaskError>(a1->errors[2].error).workerPid() == 102);
    CHECK(as<TaskError>(a1->errors[2].error).remoteType() == "std::invalid_argument");
  } else {
    CHECK(itemsOf(*a1) == Items{"1010", "1011", "1012", "WorkerCrashed(13)", "2014", "2015", "2016",
                                "2017", "2018", "2019"});
  }
  const auto crash = as<WorkerCrashed>(a1->errors[threw ? 1 : 0].error);
  CHECK(crash.pid() == 101);
  CHECK(crash.signal() == SIGSEGV);
  REQUIRE(crash.stack().size() == 2);
  CHECK(crash.stack()[0].function == "crashing(int)");
  CHECK(!a->finished());

  rig.reply(2);  // a2
  rig.reply(2);  // b0
  CHECK(Rig::states(a) == std::vector<std::string>{"done", "done", "done"});
  CHECK(a->finished());
  CHECK(rig.scheduler.idle());
  CHECK(rig.stats().chunksSent == 6);
  CHECK(rig.stats().itemsSent == 10 + 10 + 1 + 6 + 1 + 1);
}

TEST_CASE(
    "with crashRetries 1 the item a worker crashed in goes out again alone and first; it fails "
    "when its retry crashes too, and gets its result when the retry succeeds") {
  auto options = limits(1, 3);
  options.crashRetries = 1;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submit(a, 10);
  rig.submit(a, 10);  // items 10-19
  rig.submit(b);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1", "b0@1"});
  rig.reply(1, repliedFor(0, 10));

  rig.scheduler.workerLost(1, withLog(crashed(SIGSEGV, 3), logged(10, 10, 3, 3)));
  CHECK(rig.stats().chunksRetried == 1);
  CHECK(Rig::state(a, 1) == "pending");
  rig.add(2);
  CHECK(rig.assign() == Sent{"items 13@2", "items 14-19@2", "b0@2"});

  SECTION("its retry crashes too: it fails, naming the retry's worker") {
    rig.scheduler.workerLost(2, withLog(crashed(SIGABRT, 0), logged(13, 1, 0, 0)));
    CHECK(rig.stats().chunksRetried == 1);
    CHECK(Rig::state(a, 1) == "pending");  // items 14-19 were behind it: never to blame
    rig.add(3);
    CHECK(rig.assign() == Sent{"items 14-19@3", "b0@3"});
    rig.reply(3, repliedFor(14, 6));
    const ChunkOutcome* a1 = Rig::outcome(a, 1);
    REQUIRE(a1 != nullptr);
    CHECK(itemsOf(*a1) == Items{"1010", "1011", "1012", "WorkerCrashed(13)", "2014", "2015", "2016",
                                "2017", "2018", "2019"});
    const auto crash = as<WorkerCrashed>(a1->errors[0].error);
    CHECK(crash.pid() == 102);
    CHECK(crash.signal() == SIGABRT);
  }
  SECTION("its retry succeeds") {
    rig.reply(2, repliedFor(13, 1));
    CHECK(Rig::state(a, 1) == "pending");  // items 14-19 are still out
    rig.reply(2, repliedFor(14, 6));
    const ChunkOutcome* a1 = Rig::outcome(a, 1);
    REQUIRE(a1 != nullptr);
    CHECK(itemsOf(*a1) ==
          Items{"1010", "1011", "1012", "2013", "2014", "2015", "2016", "2017", "2018", "2019"});
    CHECK(rig.stats().chunksRetried == 1);
  }
}

TEST_CASE(
    "a worker lost after the last item of its chunk: the chunk ends with what its log holds, "
    "and nothing of it goes out again") {
  Rig rig(limits(1, 2));
  rig.add(1);
  auto a = rig.call("a");
  rig.submit(a, 10);
  rig.submit(a, 10);  // items 10-19
  rig.submit(a, 1);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});
  rig.reply(1, repliedFor(0, 10));
  CHECK(rig.assign() == Sent{"a2@1"});

  PartialReply log = logged(10, 10, 10, 10);
  log.outcome.errors.push_back({5, "std::runtime_error", "bad input", nullptr});
  rig.scheduler.workerLost(1, withLog(killedBy(SIGKILL), log));
  const ChunkOutcome* a1 = Rig::outcome(a, 1);
  REQUIRE(a1 != nullptr);
  CHECK(itemsOf(*a1) == Items{"1010", "1011", "1012", "1013", "1014", "threw std::runtime_error",
                              "1016", "1017", "1018", "1019"});
  CHECK(a1->firstItem == 10);
  CHECK(a1->workerPid == 101);
  CHECK(describe(itemError(a->task(), *a1, a1->errors[0])) == "TaskError(15)");
  CHECK(rig.stats().chunksRetried == 0);

  CHECK(rig.scheduler.queued() == 1);  // a2, behind it
  rig.add(2);
  CHECK(rig.assign() == Sent{"a2@2"});
}

TEST_CASE(
    "a worker lost before it began its chunk (between two) blames nothing: the chunk goes out "
    "again, first, up to MAX_UNSTARTED times; then it fails whole") {
  Rig rig(limits(1, 2));
  auto a = rig.call("a");
  rig.submit(a, 10);
  rig.submit(a, 1);  // behind it, queued
  PartialReply none;
  none.started = false;
  WorkerId w = 1;
  for (unsigned loss = 0; loss < Scheduler::MAX_UNSTARTED; ++loss, ++w) {
    rig.add(w);
    const std::string at = "@" + std::to_string(w);
    CHECK(rig.assign() == Sent{"a0" + at, "a1" + at});
    rig.scheduler.workerLost(w, withLog(killedBy(SIGKILL), none));
    CHECK(Rig::outcome(a, 0) == nullptr);  // not failed: it never ran
    CHECK(rig.scheduler.queued() == 2);
  }
  rig.add(w);
  CHECK(rig.assign() == Sent{"a0@" + std::to_string(w), "a1@" + std::to_string(w)});
  rig.scheduler.workerLost(w, withLog(killedBy(SIGKILL), none));
  const ChunkOutcome* a0 = Rig::outcome(a, 0);
  REQUIRE(a0 != nullptr);
  CHECK(describe(a0->failure) == "WorkerCrashed");
  CHECK(rig.stats().chunksRetried == 0);
}

TEST_CASE(
    "items a lost worker had run whose results did not fit its log go out again, not failed; "
    "only the item it was running fails") {
  Rig rig(limits(1, 3));
  rig.add(1);
  auto a = rig.call("a");
  rig.submit(a, 10);
  rig.submit(a, 10);  // items 10-19
  CHECK(rig.assign() == Sent{"a0@1", "a1@1"});
  rig.reply(1, repliedFor(0, 10));

  // Its log holds 10-12; it had run 13-15 too, and was running 16.
  WorkerEnd end;
  SECTION("its crash report names the item") {
    end = crashed(SIGSEGV, 6);
  }
  SECTION("it was killed without a report") {
    end = killedBy(SIGKILL);
  }
  rig.scheduler.workerLost(1, withLog(end, logged(10, 10, 3, 6)));
  rig.add(2);
  CHECK(rig.assign() == Sent{"items 13-15@2", "items 17-19@2"});
  rig.reply(2, repliedFor(13, 3));
  CHECK(Rig::state(a, 1) == "pending");
  rig.reply(2, repliedFor(17, 3));
  const ChunkOutcome* a1 = Rig::outcome(a, 1);
  REQUIRE(a1 != nullptr);
  CHECK(itemsOf(*a1) == Items{"1010", "1011", "1012", "2013", "2014", "2015", "WorkerCrashed(16)",
                              "2017", "2018", "2019"});
}

TEST_CASE(
    "a worker that broke the protocol fails its whole running chunk with ProtocolError, "
    "whatever its log holds, and it is not retried") {
  auto options = limits(1, 3);
  options.crashRetries = 1;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submit(a, 10);
  rig.submit(a, 10);
  rig.submit(b);
  CHECK(rig.assign() == Sent{"a0@1", "a1@1", "b0@1"});
  rig.reply(1, repliedFor(0, 10));

  rig.scheduler.workerLost(
      1, withLog(violated("sent a ChunkDone for a run it was not sent"), logged(10, 10, 3, 3)));
  CHECK(Rig::states(a) == std::vector<std::string>{"done", "ProtocolError"});
  CHECK(std::string(Rig::error<ProtocolError>(a, 1).what()) ==
        "worker 101 sent a ChunkDone for a run it was not sent; it was killed while running "
        "demo.work");
  CHECK(rig.stats().chunksRetried == 0);
  CHECK(rig.scheduler.queued() == 1);  // b0, behind it; nothing of a1
  rig.add(2);
  CHECK(rig.assign() == Sent{"b0@2"});
}

TEST_CASE(
    "cancelling a call whose lost chunk is in parts ends every part, and the chunk once, with "
    "its unfinished items Cancelled") {
  auto options = limits(1, 1);
  options.crashRetries = 1;
  Rig rig(options);
  rig.add(1);
  auto a = rig.call("a");
  auto b = rig.call("b");
  rig.submit(a, 10);
  rig.submit(a, 10);  // items 10-19
  rig.submit(b);
  a->seal();
  CHECK(rig.assign() == Sent{"a0@1"});
  rig.reply(1, repliedFor(0, 10));
  CHECK(rig.assign() == Sent{"a1@1"});
  rig.scheduler.workerLost(1, withLog(crashed(SIGSEGV, 3), logged(10, 10, 3, 3)));
  rig.add(2);
  CHECK(rig.assign() == Sent{"items 13@2"});  // the retry runs; 14-19 and b0 wait
  CHECK(rig.scheduler.queued() == 2);

  SECTION("with the part that runs") {
    CHECK(rig.scheduler.cancel(a.get(), /*running=*/true) == std::vector<WorkerId>{2});
    const ChunkOutcome* a1 = Rig::outcome(a, 1);
    REQUIRE(a1 != nullptr);
    CHECK(itemsOf(*a1) == Items{"1010", "1011", "1012", "Cancelled", "Cancelled", "Cancelled",
                                "Cancelled", "Cancelled", "Cancelled", "Cancelled"});
    CHECK(std::string(as<Cancelled>(a1->errors[0].error).what()) ==
          "cancelled while it ran; its worker was killed and replaced");
    CHECK(std::string(as<Cancelled>(a1->errors[1].error).what()) == "cancelled before it ran");
    CHECK(a->finished());
    CHECK(rig.scheduler.queued() == 1);  // b0

    rig.reply(2, repliedFor(13, 1));  // answered before the kill reached it: dropped
    CHECK(itemsOf(*Rig::outcome(a, 1))[3] == "Cancelled");
    rig.scheduler.workerLost(2, killedBy(SIGKILL));
    CHECK(rig.scheduler.queued() == 1);
    rig.add(3);
    CHECK(rig.assign() == Sent{"b0@3"});
  }
  SECTION("only the queued parts") {
    CHECK(rig.scheduler.cancel(a.get(), /*running=*/false).empty());
    CHECK(Rig::state(a, 1) == "pending");  // its part on worker 2 runs to completion
    CHECK(!a->finished());
    rig.reply(2, repliedFor(13, 1));
    const ChunkOutcome* a1 = Rig::outcome(a, 1);
    REQUIRE(a1 != nullptr);
    CHECK(itemsOf(*a1) == Items{"1010", "1011", "1012", "2013", "Cancelled", "Cancelled",
                                "Cancelled", "Cancelled", "Cancelled", "Cancelled"});
    CHECK(a->finished());
    CHECK(rig.assign() == Sent{"b0@2"});
  }
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

TEST_CASE(
    "a worker that says which item it runs has each item timed; the item past its timeout "
    "fails with TaskTimeout once its worker is gone, and the items it finished keep their "
    "results") {
  auto options = limits(1, 3);
  options.crashRetries = 1;  // a timed-out item is not retried
  Rig rig(options);
  rig.add(1, /*itemProgress=*/true);
  auto a = rig.call("a", 100ms);
  auto b = rig.call("b");
  rig.submit(a, 2);
  rig.submit(a, 10);  // items 2-11
  rig.submit(b);
  CHECK(rig.assign(T0) == Sent{"a0@1", "a1@1", "b0@1"});
  rig.reply(1, repliedFor(0, 2), T0 + 10ms);  // a1 starts at 10 ms

  // Until it says, it is asked when an item that started with the chunk would be due: the
  // timeout once, not times the chunk's items.
  CHECK(rig.scheduler.nextDeadline() == T0 + 110ms);
  CHECK(rig.scheduler.due(T0 + 109ms).empty());
  CHECK(rig.scheduler.due(T0 + 110ms) == std::vector<WorkerId>{1});
  // It runs the chunk's item 4 (the call's 6), since 300 ms.
  rig.scheduler.observe(1, ItemProgress{4, T0 + 300ms});
  CHECK(rig.scheduler.nextDeadline() == T0 + 400ms);
  CHECK(rig.scheduler.due(T0 + 399ms).empty());
  CHECK(rig.scheduler.timedOut(T0 + 399ms).empty());
  CHECK(rig.scheduler.due(T0 + 400ms) == std::vector<WorkerId>{1});
  CHECK(rig.scheduler.timedOut(T0 + 400ms) == std::vector<WorkerId>{1});

  // Nothing fails yet: what it finished is known once it is gone. b0, behind it, goes out
  // again at once, and the worker is being stopped.
  CHECK(Rig::state(a, 1) == "pending");
  CHECK(rig.stats().chunksTimedOut == 1);
  CHECK(rig.scheduler.held(1) == 1);
  CHECK(rig.scheduler.queued() == 1);
  CHECK(!rig.scheduler.canServe());
  CHECK(rig.scheduler.nextDeadline() == Clock::time_point::max());
  CHECK(rig.scheduler.timedOut(T0 + 1h).empty());
  rig.add(2);
  CHECK(rig.assign(T0 + 401ms) == Sent{"b0@2"});

  SECTION("it was still running that item: only that one fails") {
    rig.scheduler.workerLost(1, withLog(killedBy(SIGTERM), logged(2, 10, 4, 4)));
    CHECK(rig.assign(T0 + 402ms) == Sent{"items 7-11@2"});
    rig.reply(2);  // b0
    CHECK(Rig::state(a, 1) == "pending");
    rig.reply(2, repliedFor(7, 5));
    const ChunkOutcome* a1 = Rig::outcome(a, 1);
    REQUIRE(a1 != nullptr);
    CHECK(itemsOf(*a1) == Items{"1002", "1003", "1004", "1005", "TaskTimeout(6)", "2007", "2008",
                                "2009", "2010", "2011"});
    const auto e = as<TaskTimeout>(a1->errors[0].error);
    CHECK(e.timeoutMs() == 100);
    CHECK_THAT(e.what(), Catch::Contains("101"));
    CHECK(rig.stats().chunksRetried == 0);
  }
  SECTION("it finished that item after all, and was stopped in the next: that one goes out again") {
    rig.scheduler.workerLost(1, withLog(killedBy(SIGTERM), logged(2, 10, 5, 5)));
    CHECK(rig.assign(T0 + 402ms) == Sent{"items 7@2", "items 8-11@2"});
    rig.reply(2);  // b0
    rig.reply(2, repliedFor(7, 1));
    CHECK(Rig::state(a, 1) == "pending");
    rig.reply(2, repliedFor(8, 4));
    const ChunkOutcome* a1 = Rig::outcome(a, 1);
    REQUIRE(a1 != nullptr);
    CHECK(itemsOf(*a1) ==
          Items{"1002", "1003", "1004", "1005", "1006", "2007", "2008", "2009", "2010", "2011"});
    CHECK(rig.stats().chunksRetried == 0);
  }
  CHECK(rig.stats().chunksTimedOut == 1);
  CHECK(rig.scheduler.idle());
}

TEST_CASE(
    "a worker that does not say which item it runs has its chunk timed whole; past its items "
    "times the timeout the whole chunk fails at once, whatever its log holds later") {
  Rig rig(limits(1, 2));
  auto a = rig.call("a", 100ms);
  auto b = rig.call("b");
  bool itemProgress = false;
  SECTION("a worker without item progress (a remote one)") {}
  SECTION("a worker with item progress that says nothing of this chunk (run as one call)") {
    itemProgress = true;
  }
  rig.add(1, itemProgress);
  rig.submit(a, 2);
  rig.submit(a, 10);  // items 2-11
  rig.submit(b);
  CHECK(rig.assign(T0) == Sent{"a0@1", "a1@1"});
  rig.reply(1, repliedFor(0, 2), T0 + 10ms);
  CHECK(rig.assign(T0 + 10ms) == Sent{"b0@1"});
  if (itemProgress) {
    CHECK(rig.scheduler.due(T0 + 110ms) == std::vector<WorkerId>{1});
    rig.scheduler.observe(1, std::nullopt);
  }
  CHECK(rig.scheduler.due(T0 + 2h).empty());
  CHECK(rig.scheduler.nextDeadline() == T0 + 1010ms);
  CHECK(rig.scheduler.timedOut(T0 + 1009ms).empty());
  CHECK(rig.scheduler.timedOut(T0 + 1010ms) == std::vector<WorkerId>{1});
  const auto e = Rig::error<TaskTimeout>(a, 1);
  CHECK(!e.item());
  CHECK_THAT(e.what(), Catch::Contains("a chunk of 10 items"));
  CHECK(rig.scheduler.queued() == 1);  // b0

  rig.scheduler.workerLost(1, withLog(killedBy(SIGTERM), logged(2, 10, 4, 4)));
  CHECK(Rig::state(a, 1) == "TaskTimeout");
  CHECK(rig.scheduler.queued() == 1);
  rig.add(2);
  CHECK(rig.assign(T0 + 1011ms) == Sent{"b0@2"});
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
