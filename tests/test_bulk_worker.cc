// The worker's side of chunks of scalar tuples (abi.h convention 9), in process: a real
// WorkerSession with real plugins loaded takes Run messages whose argument tuples are laid out
// as the host lays them out, bigger, or too small. Every reply must pass the host's checks
// (decodeChunkDone), carry each item's result in order, and list exactly the failed items.
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <catch2/catch.hpp>

#include "decode.h"
#include "plugin_loader.h"
#include "support.h"
#include "wire.capnp.h"
#include "worker.h"

namespace {

using namespace plugpool::detail;
namespace wire = plugpool::wire;
using Int = std::int64_t;

constexpr std::uint64_t MAX_WORDS = std::uint64_t{1} << 24;
constexpr Int SQUARE_MAX = 3'037'000'499;

std::string examplesPlugin() {
  return std::string(FIXTURES_DIR) + "/../../plugins/libexamples.so";
}

// Word k of argument tuple i.
using WordOf = std::function<Int(unsigned i, unsigned k)>;

// A ChunkDone as the host reads it, after decodeChunkDone's checks.
struct Reply {
  kj::Array<capnp::word> words;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader;  // reads `words`
  ChunkOutcome outcome;

  Int word(unsigned i, unsigned k = 0) const {
    auto data = outcome.results[i].getDataSection();
    REQUIRE(data.size() >= (k + 1) * 8);
    Int value;
    std::memcpy(&value, data.begin() + k * 8, 8);
    return value;
  }
  // index -> remote type name
  std::map<unsigned, std::string> errors() const {
    std::map<unsigned, std::string> out;
    for (const ItemFailure& f : outcome.errors) out[f.index] = f.type;
    return out;
  }
};

// A WorkerSession after Setup with the examples, scalars and no_schemas plugins.
class Session {
 public:
  Session() {
    capnp::MallocMessageBuilder builder;
    auto setup = builder.initRoot<wire::HostMessage>().initSetup();
    setup.setProtocolVersion(wire::PROTOCOL_VERSION);
    setup.setMaxMessageWords(MAX_WORDS);
    auto paths = setup.initPlugins(3);
    paths.set(0, examplesPlugin());
    paths.set(1, testing::fixture("scalars"));
    paths.set(2, testing::fixture("no_schemas"));
    auto words = capnp::messageToFlatArray(builder);
    capnp::FlatArrayMessageReader message(words, readerOptions(words.size()));
    session_.setUp(message);
    REQUIRE(session_.loaded());
    plugins_ = session_.plugins();
  }

  // Runs task `name` of plugin `plugin` on `count` argument tuples of the given layout.
  Reply run(unsigned plugin, const std::string& name, unsigned count, std::uint16_t dataWords,
            std::uint16_t pointers, const WordOf& word) {
    unsigned task = 0;
    while (task < plugins_[plugin].tasks.size() && plugins_[plugin].tasks[task].name != name) {
      ++task;
    }
    REQUIRE(task < plugins_[plugin].tasks.size());
    capnp::MallocMessageBuilder builder;
    auto run = builder.initRoot<wire::HostMessage>().initRun();
    run.setId(++id_);
    run.setPlugin(plugin);
    run.setTask(task);
    auto items = run.initItems().initAsListOfAnyStruct(dataWords, pointers, count);
    for (unsigned i = 0; i < count; ++i) {
      for (unsigned k = 0; k < dataWords; ++k) {
        Int value = word(i, k);
        std::memcpy(items[i].getDataSection().begin() + k * 8, &value, 8);
      }
    }
    auto words = capnp::messageToFlatArray(builder);
    capnp::FlatArrayMessageReader message(words, readerOptions(words.size()));
    auto reply = session_.run(message);

    Reply out;
    out.words = capnp::messageToFlatArray(*reply);
    out.reader =
        std::make_unique<capnp::FlatArrayMessageReader>(out.words, readerOptions(out.words.size()));
    auto root = out.reader->getRoot<wire::WorkerMessage>();
    REQUIRE(root.isChunkDone());
    out.outcome = decodeChunkDone(root.getChunkDone(), id_, count);  // the host's checks
    return out;
  }

 private:
  WorkerSession session_;
  std::vector<plugpool::PluginInfo> plugins_;
  std::uint64_t id_ = 0;
};

constexpr unsigned EXAMPLES = 0, SCALARS = 1, NO_SCHEMAS = 2;

}  // namespace

TEST_CASE("Plugins built with this SDK have a chunk entry per task; older ones have none") {
  LoadedPlugin examples = loadPlugin(examplesPlugin());
  REQUIRE(examples.chunks != nullptr);
  REQUIRE(examples.chunks->count == examples.descriptor->taskCount);
  for (unsigned t = 0; t < examples.descriptor->taskCount; ++t) {
    REQUIRE(examples.chunkEntry(t) != nullptr);
  }
  LoadedPlugin old = loadPlugin(testing::fixture("no_schemas"));
  REQUIRE(old.chunks == nullptr);
  REQUIRE(old.chunkEntry(0) == nullptr);
}

TEST_CASE("A chunk of scalar items runs in order and fails exactly the items that throw") {
  Session session;
  const std::vector<Int> values = {3, SQUARE_MAX + 1, -4, 0, -SQUARE_MAX - 7, SQUARE_MAX};
  auto value = [&](unsigned i, unsigned k) { return k == 0 ? values[i] : -1; };
  // As the host lays them out (one word each: the bulk path) and bigger (item by item).
  for (auto [dataWords, pointers] : {std::pair{1, 0}, {2, 0}, {1, 1}, {3, 2}}) {
    INFO("argument tuples of " << dataWords << " data words and " << pointers << " pointers");
    Reply reply = session.run(EXAMPLES, "square", static_cast<unsigned>(values.size()),
                              static_cast<std::uint16_t>(dataWords),
                              static_cast<std::uint16_t>(pointers), value);
    REQUIRE(reply.errors() == std::map<unsigned, std::string>{{1, "std::overflow_error"},
                                                              {4, "std::overflow_error"}});
    REQUIRE_THAT(reply.outcome.errors[0].message,
                 Catch::Matchers::Contains(std::to_string(values[1])));
    REQUIRE_THAT(reply.outcome.errors[1].message,
                 Catch::Matchers::Contains(std::to_string(values[4])));
    for (unsigned i : {0u, 2u, 3u, 5u}) REQUIRE(reply.word(i) == values[i] * values[i]);
  }
}

TEST_CASE("A chunk of one item, and an empty chunk") {
  Session session;
  Reply one = session.run(EXAMPLES, "square", 1, 1, 0, [](unsigned, unsigned) { return 9; });
  REQUIRE(one.outcome.errors.empty());
  REQUIRE(one.word(0) == 81);
  Reply failing =
      session.run(EXAMPLES, "square", 1, 1, 0, [](unsigned, unsigned) { return INT64_MIN; });
  REQUIRE(failing.errors() == std::map<unsigned, std::string>{{0, "std::overflow_error"}});
  Reply none = session.run(EXAMPLES, "square", 0, 1, 0, [](unsigned, unsigned) { return 0; });
  REQUIRE(none.outcome.results.size() == 0);
  REQUIRE(none.outcome.errors.empty());
}

TEST_CASE("Argument tuples smaller than the task's layout fail every item with DecodeError") {
  Session session;
  auto zero = [](unsigned, unsigned) { return Int{0}; };
  const std::map<unsigned, std::string> all = {
      {0, "plugpool::DecodeError"}, {1, "plugpool::DecodeError"}, {2, "plugpool::DecodeError"}};
  for (auto [dataWords, pointers] : {std::pair{0, 0}, {0, 1}}) {
    INFO("argument tuples of " << dataWords << " data words and " << pointers << " pointers");
    REQUIRE(session
                .run(EXAMPLES, "square", 3, static_cast<std::uint16_t>(dataWords),
                     static_cast<std::uint16_t>(pointers), zero)
                .errors() == all);
  }
  // mix takes four words.
  REQUIRE(session.run(SCALARS, "mix", 3, 3, 0, zero).errors() == all);
  REQUIRE(session.run(SCALARS, "mix", 3, 3, 4, zero).errors() == all);
}

TEST_CASE("Every argument of a multi-argument scalar task is read from its own word") {
  Session session;
  // mix(int8 a, uint16 b, int32 c, bool d) = a + b + c + (d ? 1000000 : 0)
  const std::vector<std::vector<Int>> args = {
      {-128, 65535, -2'000'000'000, 1}, {127, 0, 2'000'000'000, 0}, {0, 1, 2, 1}};
  const std::vector<Int> expected = {-128 + 65535 - 2'000'000'000 + 1'000'000, 127 + 2'000'000'000,
                                     1'000'003};
  for (std::uint16_t dataWords : {4, 5}) {
    INFO(dataWords << " data words");
    Reply reply = session.run(SCALARS, "mix", 3, dataWords, 0,
                              [&](unsigned i, unsigned k) { return k < 4 ? args[i][k] : Int{77}; });
    REQUIRE(reply.outcome.errors.empty());
    for (unsigned i = 0; i < 3; ++i) REQUIRE(reply.word(i) == expected[i]);
  }

  // divide(a, b): items 1 and 3 fail, each with its own error.
  const std::vector<std::pair<Int, Int>> division = {
      {10, 3}, {1, 0}, {-9, 3}, {std::numeric_limits<Int>::min(), -1}, {5, 5}};
  Reply divided = session.run(SCALARS, "divide", 5, 2, 0, [&](unsigned i, unsigned k) {
    return k == 0 ? division[i].first : division[i].second;
  });
  REQUIRE(divided.errors() ==
          std::map<unsigned, std::string>{{1, "std::domain_error"}, {3, "std::overflow_error"}});
  for (unsigned i : {0u, 2u, 4u})
    REQUIRE(divided.word(i) == division[i].first / division[i].second);
}

TEST_CASE("bool and float results are written as the codec writes them") {
  Session session;
  Reply even = session.run(SCALARS, "is_even", 5, 1, 0,
                           [](unsigned i, unsigned) { return static_cast<Int>(i) - 2; });
  REQUIRE(even.outcome.errors.empty());
  for (unsigned i = 0; i < 5; ++i) REQUIRE(even.word(i) == (i % 2 == 0 ? 1 : 0));

  // scale(float32 x, float64 by): float32 in the low 32 bits of its word.
  auto floatWord = [](float f) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return static_cast<Int>(bits);
  };
  auto doubleWord = [](double d) {
    Int bits;
    std::memcpy(&bits, &d, 8);
    return bits;
  };
  Reply scaled = session.run(SCALARS, "scale", 2, 2, 0, [&](unsigned i, unsigned k) {
    return k == 0 ? floatWord(i == 0 ? 1.5f : -3.0f) : doubleWord(i == 0 ? 2.0 : 0.5);
  });
  REQUIRE(scaled.outcome.errors.empty());
  REQUIRE(scaled.word(0) == floatWord(3.0f));
  REQUIRE(scaled.word(1) == floatWord(-1.5f));
}

TEST_CASE("A task that throws a non-std::exception fails only its items") {
  Session session;
  Reply reply = session.run(SCALARS, "throw_int_if_odd", 6, 1, 0,
                            [](unsigned i, unsigned) { return static_cast<Int>(i); });
  REQUIRE(reply.errors() == std::map<unsigned, std::string>{{1, "int"}, {3, "int"}, {5, "int"}});
  for (unsigned i : {0u, 2u, 4u}) REQUIRE(reply.word(i) == i);
}

TEST_CASE("A plugin without chunk entries runs each item through invoke, as before") {
  Session session;
  for (auto [dataWords, pointers] : {std::pair{1, 0}, {2, 1}}) {
    Reply reply = session.run(NO_SCHEMAS, "identity", 100, static_cast<std::uint16_t>(dataWords),
                              static_cast<std::uint16_t>(pointers),
                              [](unsigned i, unsigned) { return static_cast<Int>(i) * 3; });
    REQUIRE(reply.outcome.errors.empty());
    for (unsigned i = 0; i < 100; ++i) REQUIRE(reply.word(i) == i * 3);
  }
  REQUIRE(
      session.run(NO_SCHEMAS, "identity", 2, 0, 0, [](unsigned, unsigned) { return 0; }).errors() ==
      std::map<unsigned, std::string>{{0, "plugpool::DecodeError"}, {1, "plugpool::DecodeError"}});
}
