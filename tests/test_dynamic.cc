// Untyped calls (plugpool/dynamic.h) with real workers: binding by name alone, encoded
// argument tuples in and result tuples out, which input an unordered result or error belongs
// to, and the schema nodes plugins ship for their struct types (abi.h convention 8).
#include <cstdint>
#include <cstring>
#include <ranges>
#include <set>
#include <stdexcept>
#include <vector>

#include <capnp/schema-loader.h>
#include <plugpool/dynamic.h>
#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "geometry.capnp.h"
#include "support.h"

using plugpool::Pool;
using Int = std::int64_t;

namespace {

void writeInt(capnp::AnyStruct::Builder args, Int x) {
  std::memcpy(args.getDataSection().begin(), &x, 8);
}
Int readInt(const plugpool::DynamicResult& r) {
  Int x;
  std::memcpy(&x, r.tuple().getDataSection().begin(), 8);
  return x;
}

}  // namespace

TEST_CASE("A dynamic task is bound by name alone and carries its manifest's types") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto add = pool.dynamicTask("examples", "add");
    REQUIRE(add.info().signature() == "(float64, float64) -> float64");
    REQUIRE(add.argumentShape().dataWords == 2);
    REQUIRE(add.argumentShape().pointers == 0);
    auto words = pool.dynamicTask("examples", "word_count");
    REQUIRE(words.argumentShape().dataWords == 0);
    REQUIRE(words.argumentShape().pointers == 1);
    REQUIRE(words.resultShape().pointers == 1);
    REQUIRE_THROWS_AS(pool.dynamicTask("examples", "nope"), plugpool::PluginError);
    REQUIRE_THROWS_AS(pool.dynamicTask("nope", "square"), plugpool::PluginError);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("imap of a dynamic task runs the caller's encoded tuples, in order or not") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.dynamicTask("examples", "square");
    std::vector<Int> items(3000);
    for (std::size_t i = 0; i < items.size(); ++i) items[i] = static_cast<Int>(i);

    auto ordered = pool.imap(square, items, writeInt);
    for (Int i = 0; i < 3000; ++i) {
      auto r = ordered.next();
      REQUIRE(r);
      REQUIRE(ordered.index() == static_cast<std::uint64_t>(i));
      REQUIRE(readInt(*r) == i * i);
    }
    REQUIRE_FALSE(ordered.next());

    auto unordered = pool.imapUnordered(square, items, writeInt, 7);
    std::set<std::uint64_t> seen;
    while (auto r = unordered.next()) {
      const auto i = static_cast<Int>(unordered.index());
      REQUIRE(readInt(*r) == i * i);  // index() says which input this result is for
      seen.insert(unordered.index());
    }
    REQUIRE(seen.size() == 3000);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("A failed item of a dynamic stream throws at its own index, and the stream goes on") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto fail = pool.dynamicTask("examples", "fail");
    std::vector<Int> items{0, 1, 2, 3, 4, 5, 6, 7};
    auto stream = pool.imapUnordered(fail, items, writeInt, 3);
    std::set<std::uint64_t> failed;
    for (int k = 0; k < 8; ++k) {
      try {
        stream.next();
        FAIL("fail returned");
      } catch (const plugpool::TaskError& e) {
        REQUIRE(e.remoteMessage() == "fail called with " + std::to_string(stream.index()));
        failed.insert(stream.index());
      }
    }
    REQUIRE(failed.size() == 8);
    REQUIRE_FALSE(stream.next());
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("A plugin ships the schema nodes of its struct types; a loader makes them usable") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {"examples"});
    const plugpool::PluginInfo& info = pool.plugins().front();
    REQUIRE_FALSE(info.schemaNodes.empty());
    capnp::SchemaLoader loader;
    plugpool::loadSchemas(info, loader);
    const auto* stats = info.find("polygon_stats");
    REQUIRE(stats != nullptr);
    const std::uint64_t polygonId = plugpool::structTypeId(stats->argTypes[0]);
    REQUIRE(polygonId == capnp::typeId<geometry::Polygon>());
    REQUIRE(plugpool::structTypeId(stats->resultType) == capnp::typeId<geometry::PolygonStats>());
    auto polygon = loader.get(polygonId).asStruct();
    REQUIRE(polygon.getFieldByName("points").getType().asList().getElementType().asStruct() ==
            loader.get(capnp::typeId<geometry::Point>()).asStruct());
    // Exactly the three structs of geometry.capnp: the ones named and the one they need.
    REQUIRE(info.schemaNodes.size() == 3);
    REQUIRE(plugpool::structTypeId("int64") == 0);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("A plugin without the optional schema symbol loads and ships none") {
  testing::ProcessSnapshot before;
  {
    Pool pool(1, {testing::fixture("no_schemas")});
    REQUIRE(pool.plugins().front().schemaNodes.empty());
    auto identity = pool.task<Int(Int)>("no_schemas", "identity");
    REQUIRE(pool.apply(identity, 42) == 42);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("mapAsync and submit of a dynamic task encode everything before sending anything") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.dynamicTask("examples", "square");
    std::vector<Int> items(1000);
    for (std::size_t i = 0; i < items.size(); ++i) items[i] = static_cast<Int>(i);
    auto all = pool.mapAsync(square, items, writeInt, 7).get();
    REQUIRE(all.size() == items.size());
    for (std::size_t i = 0; i < all.size(); ++i) CHECK(readInt(all[i]) == items[i] * items[i]);
    auto one = pool.submit(square, [](capnp::AnyStruct::Builder args) { writeInt(args, 12); });
    CHECK(readInt(one.get()) == 144);

    // An encoder that fails on the 600th item: it propagates from the call, and no chunk of
    // that call was sent (not even those before it).
    const auto sent = pool.stats().chunksSent;
    auto failing = [](capnp::AnyStruct::Builder args, Int x) {
      if (x == 600) throw std::invalid_argument("item 600 does not fit");
      writeInt(args, x);
    };
    REQUIRE_THROWS_AS(pool.mapAsync(square, items, failing, 10), std::invalid_argument);
    CHECK(pool.stats().chunksSent == sent);
    // An unsized range is read first.
    auto firstTen = pool.mapAsync(square, std::views::iota(Int{0}, Int{10}), writeInt).get();
    CHECK(readInt(firstTen[9]) == 81);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE(
    "A dynamic initializer is written once, by its manifest's types, and runs in every "
    "worker") {
  testing::ProcessSnapshot before;
  {
    int written = 0;
    plugpool::Options o;
    o.workers = 2;
    o.plugins = {"examples"};
    o.maxTasksPerChild = 5;  // replacements get the same arguments
    o.initializer = plugpool::dynamicInitializer(
        "examples", "set_offset",
        [&written](capnp::AnyStruct::Builder args, const plugpool::PluginInfo& plugin,
                   const plugpool::TaskInfo& task) {
          ++written;
          REQUIRE(plugin.name == "examples");
          REQUIRE(task.argTypes == std::vector<std::string>{"int64"});
          writeInt(args, 1000);
        });
    Pool pool(o);
    auto add = pool.task<Int(Int)>("examples", "add_offset");
    auto got = pool.map(add, std::views::iota(Int{0}, Int{40}), 1);
    for (Int i = 0; i < 40; ++i) REQUIRE(got[static_cast<std::size_t>(i)] == 1000 + i);
    REQUIRE(pool.stats().workersRetired >= 4);
    REQUIRE(written == 1);
  }
  SECTION("what its encoder throws fails the start, and no worker is left") {
    plugpool::Options o;
    o.workers = 2;
    o.plugins = {"examples"};
    o.initializer = plugpool::dynamicInitializer(
        "examples", "set_offset",
        [](capnp::AnyStruct::Builder, const plugpool::PluginInfo&, const plugpool::TaskInfo&) {
          throw std::invalid_argument("this value does not fit");
        });
    REQUIRE_THROWS_MATCHES(Pool(o), std::invalid_argument,
                           Catch::Message("this value does not fit"));
    // However many workers report their plugins in the same dispatcher round as the first:
    // none of them may find the initializer half bound (it once called an empty encoder,
    // and the start failed with bad_function_call instead).
    o.workers = 6;
    for (int round = 0; round < 5; ++round) {
      REQUIRE_THROWS_MATCHES(Pool(o), std::invalid_argument,
                             Catch::Message("this value does not fit"));
    }
    o.initializer = plugpool::dynamicInitializer(
        "examples", "nope",
        [](capnp::AnyStruct::Builder, const plugpool::PluginInfo&, const plugpool::TaskInfo&) {});
    REQUIRE_THROWS_AS(Pool(o), plugpool::PluginError);
  }
  testing::requireCleanShutdown(before);
}
