// The host treats every worker message as untrusted: a worker that answers with the wrong id,
// twice, with the wrong number of results, with junk, with a huge declared size or with half a
// message is killed and replaced; its chunk fails with ProtocolError; the host goes on.
// The liar is fixtures/rogue_worker.cc, relaying between the pool and a real worker.
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using plugpool::Pool;
using testing::Int;

namespace {

// A pool of one worker whose first reply is tampered with as `mode` says.
struct RoguePool {
  explicit RoguePool(const std::string& mode)
      : once("/tmp/plugpool-test-rogue-" + std::to_string(::getpid())) {
    std::remove(once.c_str());
    ::setenv("PLUGPOOL_ROGUE_MODE", mode.c_str(), 1);
    ::setenv("PLUGPOOL_REAL_WORKER", REAL_WORKER, 1);
    ::setenv("PLUGPOOL_ROGUE_ONCE", once.c_str(), 1);
    auto o = testing::options(1, {"examples"});
    o.workerExecutable = ROGUE_WORKER;
    try {
      pool.emplace(o);
    } catch (...) {
      std::remove(once.c_str());  // no destructor runs for a constructor that throws
      throw;
    }
  }
  ~RoguePool() {
    pool.reset();
    std::remove(once.c_str());
  }
  std::string once;
  std::optional<Pool> pool;
};

}  // namespace

TEST_CASE("a worker reply that breaks the protocol costs that worker, never the host") {
  testing::ProcessSnapshot before;
  struct Case {
    const char* mode;
    const char* expected;
  };
  for (Case c :
       {Case{"wrong-id", "but chunk"}, Case{"wrong-count", "0 results for 1 items"},
        Case{"error-index", "out of range"}, Case{"garbage", ""},
        Case{"oversize", "exceeds the limit"}, Case{"truncated", "stream ended inside a message"},
        Case{"shared-unasked", "no shared memory was agreed"},
        Case{"shared-outside", "outside the shared region"}}) {
    INFO("mode " << c.mode);
    {
      RoguePool rogue(c.mode);
      Pool& pool = *rogue.pool;
      auto square = pool.task<Int(Int)>("examples", "square");
      try {
        pool.apply(square, 3);
        FAIL("the tampered reply was accepted");
      } catch (const plugpool::ProtocolError& e) {
        REQUIRE_THAT(e.what(), Catch::Contains(c.expected));
      }
      REQUIRE(pool.stats().workersLost == 1);
      REQUIRE(pool.apply(square, 4) == 16);  // the replacement relays faithfully
    }
    testing::requireCleanShutdown(before);
  }
}

TEST_CASE("a duplicate reply is delivered once; the worker that sent it is replaced") {
  testing::ProcessSnapshot before;
  {
    RoguePool rogue("duplicate");
    Pool& pool = *rogue.pool;
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE(pool.apply(square, 3) == 9);
    REQUIRE(testing::eventually([&] { return pool.stats().workersLost != 0; }));
    REQUIRE(pool.stats().workersLost == 1);
    REQUIRE(pool.apply(square, 5) == 25);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a worker whose Hello breaks the protocol stops the pool from starting") {
  testing::ProcessSnapshot before;
  struct Case {
    const char* mode;
    const char* expected;
  };
  // A Hello may not exceed 8 MiB even though later messages may be far larger
  // (maxMessageBytes): a worker cannot make the host allocate much before it is known good.
  for (Case c : {Case{"hello-oversize", "exceeds the limit"},
                 Case{"hello-version", "speaks protocol version"},
                 Case{"hello-plugins", "sent manifests of 0 plugins for 1"}}) {
    INFO("mode " << c.mode);
    REQUIRE_THROWS_MATCHES(RoguePool(c.mode), plugpool::StartError,
                           Catch::Predicate<plugpool::StartError>([&](const auto& e) {
                             return std::string(e.what()).find(c.expected) != std::string::npos;
                           }));
    testing::requireCleanShutdown(before);
  }
}
