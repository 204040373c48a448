// Pool end to end with real worker processes: typed round trips, ordering, chunking, errors.
#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <plugpool/abi.h>
#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "geometry.capnp.h"
#include "pool_support.h"
#include "support.h"

using testing::range;

using plugpool::Pool;
using Int = std::int64_t;

TEST_CASE("map returns every result in input order") {
  testing::ProcessSnapshot before;
  {
    Pool pool(4, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto items = range(10'000);
    for (std::size_t chunksize : {0, 1, 7, 100, 20'000}) {
      auto squares = pool.map(square, items, chunksize);
      REQUIRE(squares.size() == items.size());
      for (std::size_t i = 0; i < items.size(); ++i) REQUIRE(squares[i] == items[i] * items[i]);
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("map keeps input order when later items finish first") {
  testing::ProcessSnapshot before;
  {
    Pool pool(4, {testing::fixture("faults")});
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    std::vector<Int> delays = {80, 60, 40, 20, 0, 0, 0, 0, 30, 10};
    REQUIRE(pool.map(sleep, delays, 1) == delays);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("map spreads items over every worker") {
  testing::ProcessSnapshot before;
  {
    Pool pool(3, {testing::fixture("faults")});
    auto pid = pool.task<Int(Int)>("faults", "pid");
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    // Slow chunks keep each worker busy, so all three take part, once all three are ready (a
    // worker that starts late on a loaded machine misses a map that ends before it is).
    std::vector<Int> pids;
    REQUIRE(testing::eventually([&] {
      pool.map(sleep, std::vector<Int>(6, 50), 1);
      pids = pool.map(pid, range(300), 1);
      std::sort(pids.begin(), pids.end());
      pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
      return pids.size() == 3;
    }));
    auto children = testing::childProcesses();
    for (Int p : pids) REQUIRE(std::count(children.begin(), children.end(), p) == 1);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("map without a chunksize uses Python's rule ceil(n / (4 * workers))") {
  REQUIRE(plugpool::defaultChunksize(0, 4) == 1);
  REQUIRE(plugpool::defaultChunksize(1, 4) == 1);
  REQUIRE(plugpool::defaultChunksize(16, 4) == 1);
  REQUIRE(plugpool::defaultChunksize(17, 4) == 2);
  REQUIRE(plugpool::defaultChunksize(100, 4) == 7);
  REQUIRE(plugpool::defaultChunksize(1'000'000, 2) == 125'000);
  REQUIRE(plugpool::defaultChunksize(10, 0) == 3);  // 0 workers counts as 1

  testing::ProcessSnapshot before;
  {
    Pool pool(4, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto start = pool.stats();
    pool.map(square, range(100));
    auto end = pool.stats();
    REQUIRE(end.itemsSent - start.itemsSent == 100);
    REQUIRE(end.chunksSent - start.chunksSent == 15);  // 14 chunks of 7, one of 2
    pool.map(square, range(100), 50);
    REQUIRE(pool.stats().chunksSent - end.chunksSent == 2);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("map over an empty input returns nothing and sends nothing") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE(pool.map(square, std::vector<Int>{}).empty());
    REQUIRE(pool.map(square, std::vector<Int>{}, 10).empty());
    REQUIRE(pool.stats().chunksSent == 0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("every SDK value type round-trips through a worker") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});

    SECTION("scalars, several arguments") {
      auto add = pool.task<double(double, double)>("examples", "add");
      REQUIRE(pool.apply(add, 1.5, 2.25) == 3.75);
      std::vector<std::tuple<double, double>> pairs = {{1, 2}, {-1, 0.5}, {1e300, 1e300}};
      REQUIRE(pool.starmap(add, pairs) == std::vector<double>{3, -0.5, 2e300});
    }
    SECTION("text") {
      auto upper = pool.task<std::string(std::string)>("examples", "upper");
      REQUIRE(pool.apply(upper, "hello, world") == "HELLO, WORLD");
      REQUIRE(pool.apply(upper, "") == "");
      std::string big(1 << 20, 'x');
      REQUIRE(pool.apply(upper, big) == std::string(1 << 20, 'X'));
      std::vector<std::string> words = {"a", "bc", "", "déjà"};
      REQUIRE(pool.map(upper, words) == std::vector<std::string>{"A", "BC", "", "DéJà"});
    }
    SECTION("a map, taken as a map or as a list of pairs") {
      auto asMap = pool.task<std::map<std::string, Int>(std::string)>("examples", "word_count");
      auto counts = pool.apply(asMap, "the cat saw the other cat the end");
      REQUIRE(counts == std::map<std::string, Int>{
                            {"cat", 2}, {"end", 1}, {"other", 1}, {"saw", 1}, {"the", 3}});
      auto asPairs = pool.task<std::vector<std::pair<std::string, Int>>(std::string)>("examples",
                                                                                      "word_count");
      auto pairs = pool.apply(asPairs, "b a b");
      REQUIRE(pairs == std::vector<std::pair<std::string, Int>>{{"a", 1}, {"b", 2}});
    }
    SECTION("raw bytes") {
      auto echo = pool.task<plugpool::Bytes(plugpool::Bytes)>("examples", "echo_bytes");
      plugpool::Bytes all(256);
      for (int i = 0; i < 256; ++i) all[static_cast<std::size_t>(i)] = std::byte(i);
      REQUIRE(pool.apply(echo, all) == all);
      REQUIRE(pool.apply(echo, plugpool::Bytes{}).empty());
      plugpool::Bytes big(8 << 20);
      for (std::size_t i = 0; i < big.size(); ++i) big[i] = std::byte(i * 7 % 251);
      REQUIRE(pool.apply(echo, big) == big);
    }
    SECTION("lists in, scalars and lists out") {
      auto sum = pool.task<Int(std::vector<Int>)>("examples", "sum");
      REQUIRE(pool.apply(sum, range(1001)) == 500'500);
      REQUIRE(pool.apply(sum, std::vector<Int>{}) == 0);
      auto sortWords =
          pool.task<std::vector<std::string>(std::vector<std::string>)>("examples", "sort_words");
      REQUIRE(pool.apply(sortWords, std::vector<std::string>{"pear", "apple", "fig"}) ==
              std::vector<std::string>{"apple", "fig", "pear"});
    }
    SECTION("a tuple result") {
      auto minMax =
          pool.task<std::tuple<double, double>(std::vector<double>)>("examples", "min_max");
      REQUIRE(pool.apply(minMax, std::vector<double>{3, -1, 7.5, 2}) ==
              std::tuple<double, double>{-1, 7.5});
    }
    SECTION("the author's own Cap'n Proto structs") {
      auto stats =
          pool.task<geometry::PolygonStats(geometry::Polygon)>("examples", "polygon_stats");
      capnp::MallocMessageBuilder message;
      auto square = message.initRoot<geometry::Polygon>();
      square.setName("unit square");
      auto points = square.initPoints(4);
      double xy[4][2] = {{0, 0}, {1, 0}, {1, 1}, {0, 1}};
      for (unsigned i = 0; i < 4; ++i) {
        points[i].setX(xy[i][0]);
        points[i].setY(xy[i][1]);
      }
      plugpool::Message<geometry::PolygonStats> result = pool.apply(stats, square.asReader());
      auto r = result.get();
      REQUIRE(std::string(r.getName().cStr()) == "unit square");
      REQUIRE(r.getVertices() == 4);
      REQUIRE(r.getArea() == 1.0);
      REQUIRE(r.getPerimeter() == 4.0);
      REQUIRE(r.getCentroid().getX() == 0.5);
      REQUIRE(r.getCentroid().getY() == 0.5);

      std::vector<plugpool::Message<geometry::Polygon>> polygons(3);
      for (std::size_t k = 0; k < polygons.size(); ++k) {
        auto p = polygons[k].builder();
        p.setName("triangle " + std::to_string(k));
        auto pts = p.initPoints(3);
        pts[1].setX(static_cast<double>(k + 1));
        pts[2].setY(2);
      }
      auto all = pool.map(stats, polygons);
      REQUIRE(all.size() == 3);
      for (std::size_t k = 0; k < all.size(); ++k) {
        REQUIRE(all[k].get().getArea() == static_cast<double>(k + 1));
        REQUIRE(std::string(all[k].get().getName().cStr()) == "triangle " + std::to_string(k));
      }
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a task's exception reaches the host as TaskError with its type and message") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples", testing::fixture("faults")});
    auto fail = pool.task<Int(Int)>("examples", "fail");
    try {
      pool.apply(fail, 7);
      FAIL("apply of a throwing task returned");
    } catch (const plugpool::TaskError& e) {
      REQUIRE(e.remoteType() == "std::runtime_error");
      REQUIRE(e.remoteMessage() == "fail called with 7");
      REQUIRE(e.task() == "fail");
      REQUIRE(e.plugin() == "examples");
      REQUIRE(std::string(e.what()) ==
              "examples.fail raised std::runtime_error: fail called with 7");
    }

    auto throwInt = pool.task<Int(Int)>("faults", "throw_int");
    REQUIRE_THROWS_MATCHES(pool.apply(throwInt, 3), plugpool::TaskError,
                           Catch::Predicate<plugpool::TaskError>(
                               [](const auto& e) { return e.remoteType() == "int"; }));
    auto throwOddity = pool.task<Int(Int)>("faults", "throw_oddity");
    REQUIRE_THROWS_MATCHES(pool.apply(throwOddity, 3), plugpool::TaskError,
                           Catch::Predicate<plugpool::TaskError>([](const auto& e) {
                             return e.remoteType() == "(anonymous namespace)::Oddity" &&
                                    e.remoteMessage() ==
                                        "a value that is not a std::exception was thrown";
                           }));

    // A min_max of an empty list throws std::invalid_argument inside the task.
    auto minMax = pool.task<std::tuple<double, double>(std::vector<double>)>("examples", "min_max");
    REQUIRE_THROWS_MATCHES(pool.apply(minMax, std::vector<double>{}), plugpool::TaskError,
                           Catch::Predicate<plugpool::TaskError>([](const auto& e) {
                             return e.remoteType() == "std::invalid_argument";
                           }));

    // Arithmetic that would overflow int64 is an error, not undefined behaviour (found by
    // tests/fuzz/fuzz_worker).
    auto square = pool.task<Int(Int)>("examples", "square");
    REQUIRE_THROWS_MATCHES(pool.apply(square, Int{1} << 32), plugpool::TaskError,
                           Catch::Predicate<plugpool::TaskError>([](const auto& e) {
                             return e.remoteType() == "std::overflow_error" &&
                                    e.remoteMessage() ==
                                        "square: 4294967296 * 4294967296 overflows int64";
                           }));

    // The workers are unaffected: the pool goes on serving.
    REQUIRE(pool.apply(square, 12) == 144);
    REQUIRE(pool.stats().workersLost == 0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("map raises the first failure in input order") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {testing::fixture("faults")});
    auto sleep = pool.task<Int(Int)>("faults", "sleep_ms");
    auto throwInt = pool.task<Int(Int)>("faults", "throw_int");
    // Item 3 fails; nothing else does. Every chunksize must report that item.
    for (std::size_t chunksize : {1, 2, 10}) {
      try {
        pool.map(throwInt, std::vector<Int>{0, 1, 2, 3, 4, 5}, chunksize);
        FAIL("map with a failing item returned");
      } catch (const plugpool::TaskError& e) {
        REQUIRE(e.remoteType() == "int");
      }
    }
    REQUIRE(pool.map(sleep, std::vector<Int>{1, 2}) == std::vector<Int>{1, 2});
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("one pool serves many host threads at once") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    auto upper = pool.task<std::string(std::string)>("examples", "upper");
    std::vector<std::thread> threads;
    std::vector<int> ok(8, 0);
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        bool good = true;
        for (int round = 0; round < 20; ++round) {
          auto items = range(200 + t);
          auto squares = pool.map(square, items, 3);
          for (std::size_t i = 0; i < items.size(); ++i) good &= squares[i] == items[i] * items[i];
          good &= pool.apply(upper, "thread " + std::to_string(t)) == "THREAD " + std::to_string(t);
        }
        ok[static_cast<std::size_t>(t)] = good ? 1 : 0;
      });
    }
    for (auto& th : threads) th.join();
    REQUIRE(std::count(ok.begin(), ok.end(), 1) == 8);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a pool starts one worker per core by default and reports its plugins") {
  testing::ProcessSnapshot before;
  {
    plugpool::Options options;
    options.plugins = {"examples"};
    Pool pool(options);
    REQUIRE(pool.workers() == std::max(1u, std::thread::hardware_concurrency()));
    REQUIRE(testing::childProcesses().size() == pool.workers());
    REQUIRE(pool.plugins().size() == 1);
    const auto& examples = pool.plugins().front();
    REQUIRE(examples.name == "examples");
    REQUIRE(examples.abiVersion == PLUGPOOL_ABI_VERSION);
    const auto* square = examples.find("square");
    REQUIRE(square != nullptr);
    REQUIRE(square->signature() == "(int64) -> int64");
    REQUIRE(square->doc == "Returns x * x.");
    REQUIRE(examples.find("polygon_stats")->resultType.starts_with("struct PolygonStats@0x"));
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("destroying a pool right after starting it leaves nothing behind") {
  testing::ProcessSnapshot before;
  for (int i = 0; i < 20; ++i) {
    Pool pool(3, {"examples"});
  }
  testing::requireCleanShutdown(before);
}
