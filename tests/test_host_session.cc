// test_host_session.cc — the host's half of a worker conversation (runtime/src/host_session.h),
// without I/O: Setup as built, and each message a worker may send checked against what was
// sent and when. Messages are built here as a worker (or a broken one) would build them.
#include <cstdint>
#include <memory>
#include <string>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

#include "framing.h"
#include "host_session.h"
#include "wire.capnp.h"

namespace {

using Catch::Matchers::Contains;
using plugpool::detail::HostSession;
using plugpool::detail::ProtocolViolation;
using plugpool::detail::Received;
using plugpool::detail::SessionConfig;
using Kind = HostSession::Incoming::Kind;
using RunKind = HostSession::RunKind;
namespace wire = plugpool::wire;

constexpr std::uint64_t MAX_WORDS = std::uint64_t{1} << 22;

std::shared_ptr<const SessionConfig> config() {
  auto c = std::make_shared<SessionConfig>();
  c->pluginPaths = {"/plugins/libone.so"};
  c->maxWords = MAX_WORDS;
  c->limits.openFiles = 64;
  return c;
}

std::shared_ptr<Received> received(capnp::MessageBuilder& message) {
  return std::make_shared<Received>(capnp::messageToFlatArray(message));
}

std::shared_ptr<Received> hello(bool sharedMemory = false, unsigned plugins = 1) {
  capnp::MallocMessageBuilder m;
  auto h = m.initRoot<wire::WorkerMessage>().initHello();
  h.setProtocolVersion(wire::PROTOCOL_VERSION);
  h.setSharedMemory(sharedMemory);
  auto list = h.initPlugins(plugins);
  for (unsigned i = 0; i < plugins; ++i) {
    list[i].setName("one");
    list[i].setPath("/plugins/libone.so");
  }
  return received(m);
}

// A ChunkDone answering run `id` with `items` empty result tuples; `failed`: item 0 failed.
std::shared_ptr<Received> chunkDone(std::uint64_t id, unsigned items, bool failed = false) {
  capnp::MallocMessageBuilder m;
  auto done = m.initRoot<wire::WorkerMessage>().initChunkDone();
  done.setId(id);
  done.getResults().initAsListOfAnyStruct(0, 0, items);
  if (failed) {
    auto e = done.initErrors(1)[0];
    e.setIndex(0);
    e.setType("std::runtime_error");
    e.setMessage("no");
  }
  done.setElapsedNs(1234);
  return received(m);
}

std::shared_ptr<Received> crash(std::uint64_t runId, std::uint32_t item) {
  capnp::MallocMessageBuilder m;
  auto c = m.initRoot<wire::WorkerMessage>().initCrash();
  c.setRunId(runId);
  c.setItem(item);
  c.setSignal(11);
  c.initFrames(1)[0].setFunction("crashing");
  return received(m);
}

// A Run as the pool builds it; returns the id the session gave it.
std::uint64_t send(HostSession& session, unsigned items, RunKind kind = RunKind::CHUNK) {
  capnp::MallocMessageBuilder run;
  run.initRoot<wire::HostMessage>().initRun();
  session.number(run, items, kind);
  return run.getRoot<wire::HostMessage>().getRun().getId();
}

}  // namespace

TEST_CASE("Setup carries the plugins, the size cap, the limits and the shared-memory offer") {
  HostSession session(config());
  auto message = session.setup(true);
  auto setup = message->getRoot<wire::HostMessage>().asReader().getSetup();
  CHECK(setup.getProtocolVersion() == wire::PROTOCOL_VERSION);
  CHECK(setup.getMaxMessageWords() == MAX_WORDS);
  REQUIRE(setup.getPlugins().size() == 1);
  CHECK(std::string(setup.getPlugins()[0].cStr()) == "/plugins/libone.so");
  CHECK(setup.getLimits().getOpenFiles() == 64);
  CHECK(setup.getSharedMemory());
  HostSession without(config());
  auto plain = without.setup(false);
  CHECK_FALSE(plain->getRoot<wire::HostMessage>().asReader().getSetup().getSharedMemory());
}

TEST_CASE("the first message may be small; after Hello, maxMessageBytes") {
  HostSession session(config());
  session.setup(false);
  CHECK(session.maxWords() == plugpool::detail::FIRST_MESSAGE_MAX_WORDS);
  REQUIRE(session.receive(hello()).kind == Kind::HELLO);
  CHECK(session.helloReceived());
  CHECK(session.maxWords() == MAX_WORDS);
}

TEST_CASE("shared memory is agreed only if Setup offered it and Hello mapped it") {
  for (bool offered : {false, true}) {
    for (bool mapped : {false, true}) {
      HostSession session(config());
      session.setup(offered);
      auto in = session.receive(hello(mapped));
      CHECK(in.hello.sharedMemory == (offered && mapped));
      CHECK(session.sharedMemory() == (offered && mapped));
    }
  }
}

TEST_CASE("Hello comes first and once, with one manifest per plugin asked for") {
  HostSession session(config());
  session.setup(false);
  CHECK_THROWS_WITH(session.receive(chunkDone(1, 1)), Contains("sent ChunkDone before Hello"));
  CHECK_THROWS_WITH(HostSession(config()).receive(hello(false, 2)),
                    Contains("sent manifests of 2 plugins for 1"));
  session.receive(hello());
  CHECK_THROWS_WITH(session.receive(hello()), Contains("sent Hello twice"));
}

TEST_CASE("replies answer the runs in the order they were numbered") {
  HostSession session(config());
  session.setup(false);
  session.receive(hello());
  CHECK_THROWS_WITH(session.receive(chunkDone(1, 1)),
                    Contains("answered a chunk that was not sent"));
  const std::uint64_t first = send(session, 2);
  const std::uint64_t second = send(session, 3);
  CHECK(second == first + 1);
  CHECK(session.unanswered() == 2);
  CHECK_THROWS_WITH(session.receive(chunkDone(second, 3)),
                    Contains("answered chunk " + std::to_string(second) + " but chunk " +
                             std::to_string(first) + " was next"));
}

TEST_CASE("a reply must hold one result per item of its run") {
  HostSession session(config());
  session.setup(false);
  session.receive(hello());
  const std::uint64_t id = send(session, 2);
  CHECK_THROWS_AS(session.receive(chunkDone(id, 3)), ProtocolViolation);
}

TEST_CASE("a reply comes back with its outcome, kept alive by its message") {
  HostSession session(config());
  session.setup(false);
  session.receive(hello());
  const std::uint64_t a = send(session, 2);
  const std::uint64_t b = send(session, 1);
  auto first = session.receive(chunkDone(a, 2, /*failed=*/true));
  CHECK(first.kind == Kind::REPLY);
  CHECK(first.outcome.results.size() == 2);
  REQUIRE(first.outcome.errors.size() == 1);
  CHECK(first.outcome.errors[0].type == "std::runtime_error");
  CHECK(first.outcome.elapsedNs == 1234);
  CHECK(first.outcome.keepAlive != nullptr);
  CHECK(session.unanswered() == 1);
  CHECK(session.receive(chunkDone(b, 1)).kind == Kind::REPLY);
  CHECK(session.unanswered() == 0);
}

TEST_CASE("the initializer's answer is told apart from a chunk's") {
  HostSession session(config());
  session.setup(false);
  session.receive(hello());
  const std::uint64_t init = send(session, 1, RunKind::INITIALIZER);
  const std::uint64_t chunk = send(session, 4);
  auto in = session.receive(chunkDone(init, 1, /*failed=*/true));
  CHECK(in.kind == Kind::INITIALIZED);
  CHECK(in.outcome.errors.size() == 1);
  CHECK(session.receive(chunkDone(chunk, 4)).kind == Kind::REPLY);
}

TEST_CASE("a crash report names an item only of the chunk that was running, and comes once") {
  SECTION("an item of the oldest unanswered chunk") {
    HostSession session(config());
    session.setup(false);
    session.receive(hello());
    const std::uint64_t id = send(session, 3);
    send(session, 5);
    auto in = session.receive(crash(id, 2));
    CHECK(in.kind == Kind::CRASH);
    REQUIRE(in.crashItem.has_value());
    CHECK(*in.crashItem == 2);
    REQUIRE(in.crash.frames.size() == 1);
    CHECK(in.crash.frames[0].function == "crashing");
    CHECK_THROWS_WITH(session.receive(crash(id, 2)), Contains("sent Crash twice"));
  }
  SECTION("past its items, another run's, or the initializer's: no item") {
    for (int c = 0; c < 3; ++c) {
      HostSession session(config());
      session.setup(false);
      session.receive(hello());
      const std::uint64_t first = send(session, 1, c == 2 ? RunKind::INITIALIZER : RunKind::CHUNK);
      const std::uint64_t second = send(session, 3);
      auto in = session.receive(c == 0   ? crash(first, 1)
                                : c == 1 ? crash(second, 0)
                                         : crash(first, 0));
      CHECK(in.kind == Kind::CRASH);
      CHECK_FALSE(in.crashItem.has_value());
    }
  }
}

TEST_CASE("a malformed message is a violation, in words") {
  HostSession session(config());
  session.setup(false);
  capnp::MallocMessageBuilder m;  // a list where the root struct should be
  m.getRoot<capnp::AnyPointer>().initAs<capnp::List<std::uint32_t>>(3);
  CHECK_THROWS_WITH(session.receive(received(m)), Contains("sent a malformed message"));
}
