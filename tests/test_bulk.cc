// Chunks of scalar tuples, end to end: the host writes their arguments and reads their results
// as arrays of words, the worker runs them through the plugin's chunk entry (abi.h convention
// 9). Whatever the path, results come back in order and exactly the items that throw fail.
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <plugpool/pool.h>
#include <catch2/catch.hpp>

#include "pool_support.h"
#include "support.h"

using testing::range;

using plugpool::Pool;
using Int = std::int64_t;

namespace {

// The largest x whose square fits in an int64.
constexpr Int SQUARE_MAX = 3'037'000'499;

// A message holding `count` tuple structs of the given layout, word 0 of tuple i = values[i]
// and the other data words junk; the list as a worker's results would be read.
struct ResultList {
  ResultList(const std::vector<Int>& values, std::uint16_t dataWords, std::uint16_t pointers) {
    auto list = message.initRoot<capnp::AnyPointer>().initAsListOfAnyStruct(
        dataWords, pointers, static_cast<unsigned>(values.size()));
    for (unsigned i = 0; i < values.size(); ++i) {
      auto data = list[i].getDataSection();
      for (unsigned w = 0; w < dataWords; ++w) {
        Int word = w == 0 ? values[i] : -1;
        std::memcpy(data.begin() + w * 8, &word, 8);
      }
    }
  }
  plugpool::detail::ChunkOutcome outcome() {
    plugpool::detail::ChunkOutcome out;
    out.results = plugpool::codec::readTupleList(message.getRoot<capnp::AnyPointer>().asReader());
    return out;
  }
  capnp::MallocMessageBuilder message;
};

const plugpool::detail::TaskRef SOME_TASK{0, 0, "plugin", "task", {}};

}  // namespace

TEST_CASE("map of a scalar task returns every result in input order for any chunk size") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    const auto items = range(10'007);  // a prime: no chunk size but 1 and n divides it
    for (std::size_t chunksize : {0, 1, 2, 3, 7, 64, 1000, 4096, 10'006, 10'007, 20'000}) {
      INFO("chunksize " << chunksize);
      auto squares = pool.map(square, items, chunksize);
      REQUIRE(squares.size() == items.size());
      for (std::size_t i = 0; i < items.size(); ++i) REQUIRE(squares[i] == items[i] * items[i]);
    }
    REQUIRE(pool.map(square, std::vector<Int>{}).empty());
    REQUIRE(pool.apply(square, Int{-12}) == 144);
    REQUIRE(pool.submit(square, Int{SQUARE_MAX}).get() == SQUARE_MAX * SQUARE_MAX);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a scalar task that throws for some items fails exactly those items") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples"});
    auto square = pool.task<Int(Int)>("examples", "square");
    std::vector<Int> items = range(200);
    const std::set<std::size_t> overflowing = {0, 7, 8, 99, 150, 199};
    for (std::size_t i : overflowing) items[i] = SQUARE_MAX + static_cast<Int>(i) + 1;

    for (std::size_t chunksize : {1, 3, 8, 64, 200}) {
      INFO("chunksize " << chunksize);
      auto stream = pool.imap(square, items, chunksize);
      std::size_t seen = 0;
      for (;;) {
        std::optional<Int> value;
        try {
          value = stream.next();
          if (!value) break;
          const auto at = static_cast<std::size_t>(stream.index());
          INFO("item " << at);
          REQUIRE(overflowing.count(at) == 0);
          REQUIRE(*value == items[at] * items[at]);
        } catch (const plugpool::TaskError& e) {
          const auto at = static_cast<std::size_t>(stream.index());
          INFO("item " << at << ": " << e.what());
          REQUIRE(overflowing.count(at) == 1);
          REQUIRE(e.remoteType() == "std::overflow_error");
          REQUIRE_THAT(e.remoteMessage(), Catch::Matchers::Contains(std::to_string(items[at])));
        }
        REQUIRE(stream.index() == seen);
        ++seen;
      }
      REQUIRE(seen == items.size());
    }

    // map throws the first failure in input order, whichever chunk it is in.
    items[0] = 0;
    try {
      pool.map(square, items, 16);
      FAIL("map did not throw");
    } catch (const plugpool::TaskError& e) {
      REQUIRE(e.remoteType() == "std::overflow_error");
      REQUIRE_THAT(e.remoteMessage(), Catch::Matchers::Contains(std::to_string(items[7])));
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("bool, float, double and narrow integer results round-trip in bulk") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {testing::fixture("scalars")});
    auto isEven = pool.task<bool(Int)>("scalars", "is_even");
    auto halve = pool.task<double(std::int32_t)>("scalars", "halve");
    auto lowByte = pool.task<std::uint8_t(std::uint64_t)>("scalars", "low_byte");
    auto complement = pool.task<Int(Int)>("scalars", "complement");
    auto scale = pool.task<float(float, double)>("scalars", "scale");

    for (std::size_t chunksize : {1, 5, 333, 0}) {
      INFO("chunksize " << chunksize);
      const auto items = range(1001);
      std::vector<bool> even = pool.map(isEven, items, chunksize);
      REQUIRE(even.size() == items.size());
      for (std::size_t i = 0; i < items.size(); ++i) REQUIRE(even[i] == (items[i] % 2 == 0));

      std::vector<std::int32_t> ints = {0,
                                        1,
                                        -1,
                                        3,
                                        std::numeric_limits<std::int32_t>::min(),
                                        std::numeric_limits<std::int32_t>::max()};
      auto halves = pool.map(halve, ints, chunksize);
      REQUIRE(halves.size() == ints.size());
      for (std::size_t i = 0; i < ints.size(); ++i) REQUIRE(halves[i] == ints[i] / 2.0);

      std::vector<std::uint64_t> words = {0, 0xFF, 0x1234, ~std::uint64_t{0}, 0x100};
      REQUIRE(pool.map(lowByte, words, chunksize) ==
              std::vector<std::uint8_t>{0, 0xFF, 0x34, 0xFF, 0});

      std::vector<Int> extremes = {0, -1, std::numeric_limits<Int>::min(),
                                   std::numeric_limits<Int>::max()};
      REQUIRE(pool.map(complement, extremes, chunksize) ==
              std::vector<Int>{-1, 0, std::numeric_limits<Int>::max(),
                               std::numeric_limits<Int>::min()});

      std::vector<std::tuple<float, double>> pairs = {{1.5f, 2.0}, {-0.25f, 4.0}, {3.0f, 0.5}};
      REQUIRE(pool.starmap(scale, pairs, chunksize) == std::vector<float>{3.0f, -1.0f, 1.5f});
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("multi-argument scalar tasks get every argument in place, and fail per item") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {"examples", testing::fixture("scalars")});
    auto add = pool.task<double(double, double)>("examples", "add");
    auto mix = pool.task<Int(std::int8_t, std::uint16_t, std::int32_t, bool)>("scalars", "mix");
    auto divide = pool.task<Int(Int, Int)>("scalars", "divide");

    std::vector<std::pair<double, double>> sums;
    for (int i = 0; i < 500; ++i) sums.emplace_back(i * 0.5, -i * 2.0);
    for (std::size_t chunksize : {1, 7, 500, 0}) {
      INFO("chunksize " << chunksize);
      auto added = pool.starmap(add, sums, chunksize);
      REQUIRE(added.size() == sums.size());
      for (std::size_t i = 0; i < sums.size(); ++i) {
        REQUIRE(added[i] == sums[i].first + sums[i].second);
      }

      std::vector<std::tuple<std::int8_t, std::uint16_t, std::int32_t, bool>> mixes = {
          {-128, 65535, -2'000'000'000, true}, {127, 0, 2'000'000'000, false}, {0, 1, 2, true}};
      REQUIRE(pool.starmap(mix, mixes, chunksize) ==
              std::vector<Int>{-128 + 65535 - 2'000'000'000 + 1'000'000, 127 + 2'000'000'000,
                               1'000'003});
    }

    // Items 2 and 4 fail, each with its own error; the others succeed. A dynamic stream shows
    // every item's outcome, and writes the two words of each tuple itself.
    const std::vector<std::pair<Int, Int>> divisions = {
        {10, 2}, {9, -3}, {5, 0}, {7, 7}, {std::numeric_limits<Int>::min(), -1}, {-8, 4}};
    const std::vector<std::string> errors = {"", "", "std::domain_error", "", "std::overflow_error",
                                             ""};
    auto dynamicDivide = pool.dynamicTask("scalars", "divide");
    for (std::size_t chunksize : {1, 2, 4, 6}) {
      INFO("chunksize " << chunksize);
      auto stream = pool.imap(
          dynamicDivide, divisions,
          [](capnp::AnyStruct::Builder args, const std::pair<Int, Int>& ab) {
            std::memcpy(args.getDataSection().begin(), &ab.first, 8);
            std::memcpy(args.getDataSection().begin() + 8, &ab.second, 8);
          },
          chunksize);
      for (std::size_t i = 0; i < divisions.size(); ++i) {
        INFO("item " << i);
        try {
          auto result = stream.next();
          REQUIRE(result);
          REQUIRE(errors[i].empty());
          Int quotient;
          std::memcpy(&quotient, result->tuple().getDataSection().begin(), 8);
          REQUIRE(quotient == divisions[i].first / divisions[i].second);
        } catch (const plugpool::TaskError& e) {
          REQUIRE(e.remoteType() == errors[i]);
        }
      }
      REQUIRE_FALSE(stream.next());

      // map throws the first failure in input order.
      try {
        pool.starmap(divide, divisions, chunksize);
        FAIL("starmap did not throw");
      } catch (const plugpool::TaskError& e) {
        REQUIRE(e.remoteType() == "std::domain_error");
      }
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a task that throws something not a std::exception fails only its items in bulk") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {testing::fixture("scalars")});
    auto throwIntIfOdd = pool.task<Int(Int)>("scalars", "throw_int_if_odd");
    for (std::size_t chunksize : {1, 10, 0}) {
      INFO("chunksize " << chunksize);
      auto stream = pool.imap(throwIntIfOdd, range(50), chunksize);
      for (Int i = 0; i < 50; ++i) {
        INFO("item " << i);
        try {
          auto value = stream.next();
          REQUIRE(value);
          REQUIRE(i % 2 == 0);
          REQUIRE(*value == i);
        } catch (const plugpool::TaskError& e) {
          REQUIRE(i % 2 == 1);
          REQUIRE(e.remoteType() == "int");
        }
      }
      REQUIRE_FALSE(stream.next());
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("tasks with a pointer argument or result still run chunks item by item") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {testing::fixture("scalars")});
    auto charAt = pool.task<Int(std::string, Int)>("scalars", "char_at");
    auto decimal = pool.task<std::string(Int)>("scalars", "decimal");
    for (std::size_t chunksize : {1, 3, 0}) {
      INFO("chunksize " << chunksize);
      std::vector<std::tuple<std::string, Int>> at = {{"abc", 0}, {"abc", 2}, {"xyz", 1}};
      REQUIRE(pool.starmap(charAt, at, chunksize) == std::vector<Int>{'a', 'c', 'y'});
      at.emplace_back("abc", 3);
      try {
        pool.starmap(charAt, at, chunksize);
        FAIL("starmap did not throw");
      } catch (const plugpool::TaskError& e) {
        REQUIRE(e.remoteType() == "std::out_of_range");
      }
      REQUIRE(pool.map(decimal, std::vector<Int>{-1, 0, 42}, chunksize) ==
              std::vector<std::string>{"-1", "0", "42"});
    }
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("a plugin without chunk entries (built before convention 9) still runs in order") {
  testing::ProcessSnapshot before;
  {
    Pool pool(2, {testing::fixture("no_schemas")});
    auto identity = pool.task<Int(Int)>("no_schemas", "identity");
    const auto items = range(1001);
    for (std::size_t chunksize : {1, 10, 0}) REQUIRE(pool.map(identity, items, chunksize) == items);
  }
  testing::requireCleanShutdown(before);
}

TEST_CASE("packedWords finds a list of tuples of exactly n data words and no pointers") {
  using plugpool::codec::packedWords;
  SECTION("exactly one word each") {
    ResultList list({5, 6, 7}, 1, 0);
    auto results = list.outcome().results;
    const capnp::byte* words = packedWords(results, 1);
    REQUIRE(words != nullptr);
    REQUIRE(words == results[0].getDataSection().begin());
    Int third;
    std::memcpy(&third, words + 16, 8);
    REQUIRE(third == 7);
    REQUIRE(packedWords(results, 2) == nullptr);
    REQUIRE(packedWords(results, 0) == nullptr);
  }
  SECTION("two words each") {
    ResultList list({5, 6}, 2, 0);
    REQUIRE(packedWords(list.outcome().results, 2) != nullptr);
    REQUIRE(packedWords(list.outcome().results, 1) == nullptr);
  }
  SECTION("a pointer besides") {
    ResultList list({5, 6}, 1, 1);
    REQUIRE(packedWords(list.outcome().results, 1) == nullptr);
  }
  SECTION("no elements") {
    ResultList list({}, 1, 0);
    REQUIRE(packedWords(list.outcome().results, 1) == nullptr);
  }
  SECTION("a builder") {
    capnp::MallocMessageBuilder message;
    auto list = message.initRoot<capnp::AnyPointer>().initAsListOfAnyStruct(3, 0, 4);
    capnp::byte* words = packedWords(list, 3);
    REQUIRE(words == list[0].getDataSection().begin());
    REQUIRE(list[3].getDataSection().begin() == words + 9 * 8);
  }
}

TEST_CASE("the host reads scalar results of any layout, and refuses ones too small") {
  using plugpool::detail::decodeResults;
  const std::vector<Int> values = {1, -2, 3, std::numeric_limits<Int>::min()};
  SECTION("as a worker makes them: one data word, no pointers") {
    ResultList list(values, 1, 0);
    std::vector<Int> out = {99};
    decodeResults<Int>(SOME_TASK, list.outcome(), out);
    REQUIRE(out == std::vector<Int>{99, 1, -2, 3, std::numeric_limits<Int>::min()});
  }
  SECTION("bigger tuples (a newer worker may send them): read element by element") {
    for (auto [dataWords, pointers] : {std::pair{2, 0}, {1, 1}, {3, 2}}) {
      ResultList list(values, static_cast<std::uint16_t>(dataWords),
                      static_cast<std::uint16_t>(pointers));
      std::vector<Int> out;
      decodeResults<Int>(SOME_TASK, list.outcome(), out);
      REQUIRE(out == values);
    }
  }
  SECTION("bool results") {
    ResultList list({0, 1, 2, 0}, 1, 0);
    std::vector<bool> out;
    decodeResults<bool>(SOME_TASK, list.outcome(), out);
    REQUIRE(out == std::vector<bool>{false, true, true, false});
  }
  SECTION("tuples without a data word are a ProtocolError") {
    for (auto [dataWords, pointers] : {std::pair{0, 0}, {0, 1}}) {
      ResultList list(values, static_cast<std::uint16_t>(dataWords),
                      static_cast<std::uint16_t>(pointers));
      std::vector<Int> out;
      REQUIRE_THROWS_AS(decodeResults<Int>(SOME_TASK, list.outcome(), out),
                        plugpool::ProtocolError);
    }
  }
  SECTION("no results") {
    ResultList list({}, 1, 0);
    std::vector<Int> out;
    decodeResults<Int>(SOME_TASK, list.outcome(), out);
    REQUIRE(out.empty());
  }
}
