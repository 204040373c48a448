// test_codec.cc — the codec (C++ values <-> tuple structs), canonical type names, strict
// decoding, and the example plugin's tasks called in-process through LocalPlugin.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <capnp/any.h>
#include <capnp/message.h>
#include <plugpool/codec.h>
#include <plugpool/errors.h>
#include <plugpool/local_plugin.h>
#include <catch2/catch.hpp>

#include "geometry.capnp.h"
#include "support.h"

namespace {

using plugpool::Bytes;

// Writes `values` as a tuple struct of types T... and reads them back.
template <typename... T, typename... U>
std::tuple<typename plugpool::Codec<T>::Value...> roundTrip(const U&... values) {
  using Layout = plugpool::codec::TupleLayout<T...>;
  capnp::MallocMessageBuilder message;
  auto tuple =
      message.initRoot<capnp::AnyPointer>().initAsAnyStruct(Layout::dataWords, Layout::pointers);
  plugpool::codec::writeTuple<T...>(tuple, values...);
  return plugpool::codec::readTuple<T...>(tuple.asReader());
}

// Writes one value of type T and reads it back.
template <typename T, typename U>
typename plugpool::Codec<T>::Value roundTripOne(const U& value) {
  return std::get<0>(roundTrip<T>(value));
}

template <typename T>
void checkIntegerExtremes() {
  CAPTURE(plugpool::typeName<T>());
  CHECK(roundTripOne<T>(T{0}) == T{0});
  CHECK(roundTripOne<T>(T{1}) == T{1});
  CHECK(roundTripOne<T>(std::numeric_limits<T>::min()) == std::numeric_limits<T>::min());
  CHECK(roundTripOne<T>(std::numeric_limits<T>::max()) == std::numeric_limits<T>::max());
  if constexpr (std::is_signed_v<T>) {
    CHECK(roundTripOne<T>(T{-1}) == T{-1});
    CHECK(roundTripOne<T>(T{-42}) == T{-42});
  }
}

Bytes allByteValues() {
  Bytes bytes;
  for (int i = 0; i < 256; ++i) bytes.push_back(static_cast<std::byte>(i));
  return bytes;
}

// Fills `polygon` with the unit square.
void buildUnitSquare(geometry::Polygon::Builder polygon, const char* name) {
  polygon.setName(name);
  auto points = polygon.initPoints(4);
  const double xs[] = {0, 1, 1, 0};
  const double ys[] = {0, 0, 1, 1};
  for (unsigned i = 0; i < 4; ++i) {
    points[i].setX(xs[i]);
    points[i].setY(ys[i]);
  }
}

}  // namespace

// --- round trips ---------------------------------------------------------------------------

TEST_CASE("booleans round-trip through a tuple struct") {
  CHECK(roundTripOne<bool>(true) == true);
  CHECK(roundTripOne<bool>(false) == false);
  auto [a, b, c] = roundTrip<bool, bool, bool>(true, false, true);
  CHECK(a);
  CHECK_FALSE(b);
  CHECK(c);
}

TEST_CASE("signed and unsigned integers round-trip at their extremes") {
  checkIntegerExtremes<std::int8_t>();
  checkIntegerExtremes<std::int16_t>();
  checkIntegerExtremes<std::int32_t>();
  checkIntegerExtremes<std::int64_t>();
  checkIntegerExtremes<std::uint8_t>();
  checkIntegerExtremes<std::uint16_t>();
  checkIntegerExtremes<std::uint32_t>();
  checkIntegerExtremes<std::uint64_t>();
  CHECK(roundTripOne<std::uint64_t>(std::numeric_limits<std::uint64_t>::max()) ==
        0xffffffffffffffffull);
  CHECK(roundTripOne<std::int8_t>(std::int8_t{-128}) == -128);
  CHECK(roundTripOne<std::int16_t>(std::int16_t{-32768}) == -32768);
  CHECK(roundTripOne<long long>(-1234567890123LL) == -1234567890123LL);
}

TEST_CASE("floats and doubles round-trip including signed zero and infinities") {
  CHECK(roundTripOne<float>(1.5f) == 1.5f);
  CHECK(roundTripOne<float>(-3.25f) == -3.25f);
  CHECK(roundTripOne<float>(std::numeric_limits<float>::max()) ==
        std::numeric_limits<float>::max());
  CHECK(roundTripOne<float>(std::numeric_limits<float>::denorm_min()) ==
        std::numeric_limits<float>::denorm_min());
  CHECK(roundTripOne<double>(3.141592653589793) == 3.141592653589793);
  CHECK(roundTripOne<double>(std::numeric_limits<double>::lowest()) ==
        std::numeric_limits<double>::lowest());
  CHECK(roundTripOne<double>(std::numeric_limits<double>::denorm_min()) ==
        std::numeric_limits<double>::denorm_min());

  float negativeZeroF = roundTripOne<float>(-0.0f);
  CHECK(negativeZeroF == 0.0f);
  CHECK(std::signbit(negativeZeroF));
  double negativeZero = roundTripOne<double>(-0.0);
  CHECK(negativeZero == 0.0);
  CHECK(std::signbit(negativeZero));
  CHECK_FALSE(std::signbit(roundTripOne<double>(0.0)));

  CHECK(roundTripOne<float>(std::numeric_limits<float>::infinity()) ==
        std::numeric_limits<float>::infinity());
  CHECK(roundTripOne<float>(-std::numeric_limits<float>::infinity()) ==
        -std::numeric_limits<float>::infinity());
  CHECK(roundTripOne<double>(std::numeric_limits<double>::infinity()) ==
        std::numeric_limits<double>::infinity());
  CHECK(roundTripOne<double>(-std::numeric_limits<double>::infinity()) ==
        -std::numeric_limits<double>::infinity());

  CHECK(std::isnan(roundTripOne<float>(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(roundTripOne<double>(std::numeric_limits<double>::quiet_NaN())));
}

TEST_CASE("texts round-trip including empty, embedded NUL and one MiB long") {
  CHECK(roundTripOne<std::string>(std::string()).empty());
  CHECK(roundTripOne<std::string>(std::string("hello, world")) == "hello, world");

  const std::string withNul("a\0b\0", 4);
  auto nul = roundTripOne<std::string>(withNul);
  CHECK(nul.size() == 4);
  CHECK(nul == withNul);

  std::string big(1 << 20, 'x');
  for (std::size_t i = 0; i < big.size(); i += 4093) big[i] = static_cast<char>('a' + i % 26);
  auto back = roundTripOne<std::string>(big);
  CHECK(back.size() == big.size());
  CHECK(back == big);

  // A std::string_view decodes as a view into the message; it compares equal while it lives.
  capnp::MallocMessageBuilder message;
  using Layout = plugpool::codec::TupleLayout<std::string_view>;
  auto tuple =
      message.initRoot<capnp::AnyPointer>().initAsAnyStruct(Layout::dataWords, Layout::pointers);
  plugpool::codec::writeTuple<std::string_view>(tuple, std::string_view("view"));
  auto [view] = plugpool::codec::readTuple<std::string_view>(tuple.asReader());
  CHECK(view == "view");
}

TEST_CASE("bytes round-trip when empty and with all 256 byte values") {
  CHECK(roundTripOne<Bytes>(Bytes()).empty());
  const Bytes all = allByteValues();
  auto back = roundTripOne<Bytes>(all);
  REQUIRE(back.size() == 256);
  CHECK(back == all);
  // Written from a span, read back as Bytes.
  CHECK(roundTripOne<Bytes>(std::span<const std::byte>(all)) == all);
}

TEST_CASE("lists of integers, booleans and doubles round-trip through a tuple struct") {
  const std::vector<std::int64_t> ints{0, -1, 42, std::numeric_limits<std::int64_t>::min(),
                                       std::numeric_limits<std::int64_t>::max()};
  CHECK(roundTripOne<std::vector<std::int64_t>>(ints) == ints);
  CHECK(roundTripOne<std::vector<std::int64_t>>(std::vector<std::int64_t>{}).empty());

  const std::vector<bool> bools{true, false, false, true, true, false, true, false, true};
  CHECK(roundTripOne<std::vector<bool>>(bools) == bools);

  const std::vector<double> doubles{0.5, -2.25, 1e300, -0.0,
                                    std::numeric_limits<double>::infinity()};
  auto back = roundTripOne<std::vector<double>>(doubles);
  CHECK(back == doubles);
  REQUIRE(back.size() == doubles.size());
  CHECK(std::signbit(back[3]));

  const std::vector<std::int8_t> small{-128, -1, 0, 127};
  CHECK(roundTripOne<std::vector<std::int8_t>>(small) == small);
}

// copyBytes asks for huge pages for a large copy's fresh memory. glibc serves a block below
// its mmap threshold (which rises to 32 MiB as mapped blocks are freed) from its heap, which
// outlives the block: advice there would stay on memory the allocator keeps and reuses, and
// khugepaged could back that freed memory with huge pages. So only a block of 32 MiB or more
// (a mapping of its own, which free unmaps) is advised.
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)  // glibc's allocator
TEST_CASE("a large Bytes copy leaves no huge-page advice on the heap once it is freed") {
  const std::size_t before = testing::hugePageMappings().bytes;
  // Freeing a mapped block of 16 MiB raises glibc's threshold above the 3 MiB copies below,
  // as a pool's results did in test_payloads: they come from the heap.
  void* volatile mapped = std::malloc(std::size_t{16} << 20);  // volatile: not elided
  std::free(mapped);
  const Bytes in(std::size_t{3} << 20, std::byte{7});
  for (int i = 0; i < 4; ++i) {
    Bytes copy = plugpool::codec::copyBytes(in);
    // A block after it (larger than any free one before it), so that freeing the copy
    // cannot give its pages back to the system.
    std::vector<char> after(std::size_t{256} << 10);
    REQUIRE(copy == in);
    Bytes().swap(copy);  // frees it (assigning {} would keep its capacity)
    INFO(testing::hugePageMappings().mappings);
    REQUIRE(testing::hugePageMappings().bytes == before);
  }
  // A copy of 32 MiB or more has a mapping of its own: advised, and unmapped with it.
  Bytes large = plugpool::codec::copyBytes(Bytes(std::size_t{40} << 20, std::byte{1}));
  REQUIRE(large.size() == std::size_t{40} << 20);
  // (A kernel without transparent huge pages refuses the advice.)
  if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled")) {
    REQUIRE(testing::hugePageMappings().bytes > before);
  }
  Bytes().swap(large);
  REQUIRE(testing::hugePageMappings().bytes == before);
}
#endif

TEST_CASE("a list of texts round-trips through a tuple struct") {
  const std::vector<std::string> words{"alpha", "", std::string("nul\0inside", 10), "omega"};
  CHECK(roundTripOne<std::vector<std::string>>(words) == words);
  CHECK(roundTripOne<std::vector<std::string>>(std::vector<std::string>{}).empty());
}

TEST_CASE("a nested list of integers round-trips through a tuple struct") {
  const std::vector<std::vector<std::int64_t>> nested{{1, 2, 3}, {}, {-4}, {5, 6}};
  CHECK(roundTripOne<std::vector<std::vector<std::int64_t>>>(nested) == nested);
}

TEST_CASE("a pair and a tuple round-trip through a tuple struct") {
  const std::pair<std::string, std::int64_t> pair{"answer", 42};
  CHECK(roundTripOne<std::pair<std::string, std::int64_t>>(pair) == pair);

  const std::tuple<std::int64_t, std::string, double> tuple{-7, "seven", 7.5};
  CHECK(roundTripOne<std::tuple<std::int64_t, std::string, double>>(tuple) == tuple);
}

TEST_CASE("a map of text to integer round-trips through a tuple struct") {
  const std::map<std::string, std::int64_t> map{{"a", 1}, {"b", -2}, {"", 0}, {"zz", 1LL << 40}};
  CHECK(roundTripOne<std::map<std::string, std::int64_t>>(map) == map);
  CHECK(roundTripOne<std::map<std::string, std::int64_t>>(std::map<std::string, std::int64_t>{})
            .empty());

  // A map is a list of pairs on the wire: it reads back as a vector of pairs, in order.
  auto pairs = roundTripOne<std::vector<std::pair<std::string, std::int64_t>>>(
      std::vector<std::pair<std::string, std::int64_t>>(map.begin(), map.end()));
  CHECK(pairs == std::vector<std::pair<std::string, std::int64_t>>(map.begin(), map.end()));
}

TEST_CASE("a tuple mixing scalars and pointers uses one word or pointer per value in order") {
  using Layout = plugpool::codec::TupleLayout<std::int64_t, std::string, bool, Bytes, double,
                                              std::vector<std::int64_t>, std::uint8_t>;
  STATIC_REQUIRE(Layout::dataWords == 4);
  STATIC_REQUIRE(Layout::pointers == 3);
  STATIC_REQUIRE(Layout::position<0>() == 0);
  STATIC_REQUIRE(Layout::position<1>() == 0);
  STATIC_REQUIRE(Layout::position<2>() == 1);
  STATIC_REQUIRE(Layout::position<3>() == 1);
  STATIC_REQUIRE(Layout::position<4>() == 2);
  STATIC_REQUIRE(Layout::position<5>() == 2);
  STATIC_REQUIRE(Layout::position<6>() == 3);
  STATIC_REQUIRE(plugpool::codec::TupleLayout<>::dataWords == 0);
  STATIC_REQUIRE(plugpool::codec::TupleLayout<>::pointers == 0);

  const Bytes bytes = allByteValues();
  const std::vector<std::int64_t> list{3, 1, 2};
  auto [i, s, b, d, f, l, u] = roundTrip<std::int64_t, std::string, bool, Bytes, double,
                                         std::vector<std::int64_t>, std::uint8_t>(
      std::int64_t{-99}, std::string("text"), true, bytes, 2.5, list, std::uint8_t{255});
  CHECK(i == -99);
  CHECK(s == "text");
  CHECK(b);
  CHECK(d == bytes);
  CHECK(f == 2.5);
  CHECK(l == list);
  CHECK(u == 255);

  // The words really are in order in the data section, the pointers in the pointer section.
  capnp::MallocMessageBuilder message;
  using Small = plugpool::codec::TupleLayout<std::int64_t, std::string, std::int64_t>;
  auto tuple =
      message.initRoot<capnp::AnyPointer>().initAsAnyStruct(Small::dataWords, Small::pointers);
  plugpool::codec::writeTuple<std::int64_t, std::string, std::int64_t>(
      tuple, std::int64_t{11}, std::string("mid"), std::int64_t{22});
  auto reader = tuple.asReader();
  REQUIRE(reader.getDataSection().size() == 16);
  REQUIRE(reader.getPointerSection().size() == 1);
  CHECK(reader.getDataSection()[0] == 11);
  CHECK(reader.getDataSection()[8] == 22);
  CHECK(reader.getPointerSection()[0].getAs<capnp::Text>() == "mid");
}

TEST_CASE("a Cap'n Proto struct round-trips through a tuple struct as a Message") {
  STATIC_REQUIRE(std::is_same_v<plugpool::Codec<geometry::Polygon>::Value,
                                plugpool::Message<geometry::Polygon>>);

  capnp::MallocMessageBuilder source;
  auto polygon = source.initRoot<geometry::Polygon>();
  buildUnitSquare(polygon, "square");

  auto back = roundTripOne<geometry::Polygon>(polygon.asReader());
  geometry::Polygon::Reader r = back.get();
  CHECK(r.getName() == "square");
  REQUIRE(r.getPoints().size() == 4);
  CHECK(r.getPoints()[2].getX() == 1.0);
  CHECK(r.getPoints()[2].getY() == 1.0);
  CHECK(r.getPoints()[3].getX() == 0.0);

  // A Message<T> can itself be written, and outlives the message it was decoded from.
  auto again = roundTripOne<geometry::Polygon>(back);
  CHECK(again.get().getName() == "square");
  CHECK(again.get().getPoints().size() == 4);

  // Decoding as T::Reader gives a view of the same struct.
  capnp::MallocMessageBuilder message;
  using Layout = plugpool::codec::TupleLayout<geometry::Polygon::Reader>;
  auto tuple =
      message.initRoot<capnp::AnyPointer>().initAsAnyStruct(Layout::dataWords, Layout::pointers);
  plugpool::codec::writeTuple<geometry::Polygon::Reader>(tuple, polygon.asReader());
  auto [view] = plugpool::codec::readTuple<geometry::Polygon::Reader>(tuple.asReader());
  CHECK(view.getName() == "square");
  CHECK(view.getPoints().size() == 4);
}

// --- canonical type names ------------------------------------------------------------------

TEST_CASE("scalar types have canonical names by size and sign") {
  CHECK(plugpool::typeName<std::int64_t>() == "int64");
  CHECK(plugpool::typeName<long long>() == "int64");
  CHECK(plugpool::typeName<long>() == "int64");
  CHECK(plugpool::typeName<std::int8_t>() == "int8");
  CHECK(plugpool::typeName<std::int16_t>() == "int16");
  CHECK(plugpool::typeName<std::int32_t>() == "int32");
  CHECK(plugpool::typeName<std::uint8_t>() == "uint8");
  CHECK(plugpool::typeName<std::uint16_t>() == "uint16");
  CHECK(plugpool::typeName<std::uint32_t>() == "uint32");
  CHECK(plugpool::typeName<std::uint64_t>() == "uint64");
  CHECK(plugpool::typeName<unsigned long long>() == "uint64");
  CHECK(plugpool::typeName<float>() == "float32");
  CHECK(plugpool::typeName<double>() == "float64");
  CHECK(plugpool::typeName<bool>() == "bool");
  // cv-ref qualifiers do not change the name.
  CHECK(plugpool::typeName<const std::int64_t&>() == "int64");
}

TEST_CASE("text, data, list, tuple and map types have canonical names") {
  CHECK(plugpool::typeName<std::string>() == "text");
  CHECK(plugpool::typeName<std::string_view>() == "text");
  CHECK(plugpool::typeName<const std::string&>() == "text");
  CHECK(plugpool::typeName<Bytes>() == "data");
  CHECK(plugpool::typeName<std::span<const std::byte>>() == "data");
  CHECK(plugpool::typeName<std::vector<std::int64_t>>() == "list<int64>");
  CHECK(plugpool::typeName<std::vector<std::string>>() == "list<text>");
  CHECK(plugpool::typeName<std::vector<std::vector<double>>>() == "list<list<float64>>");
  CHECK(plugpool::typeName<std::pair<std::string, std::int64_t>>() == "(text, int64)");
  CHECK(plugpool::typeName<std::tuple<std::int64_t, std::string, double>>() ==
        "(int64, text, float64)");
  CHECK(plugpool::typeName<std::map<std::string, std::int64_t>>() == "list<(text, int64)>");
  CHECK(plugpool::typeName<std::vector<std::pair<std::string, std::int64_t>>>() ==
        "list<(text, int64)>");
  CHECK(plugpool::typeName<std::unordered_map<std::string, std::int64_t>>() ==
        "list<(text, int64)>");
}

TEST_CASE("a Cap'n Proto struct is named by its short name and type id") {
  const std::string name = plugpool::typeName<geometry::Polygon>();
  CHECK_THAT(name, Catch::StartsWith("struct Polygon@0x"));
  CHECK(name.size() == std::string("struct Polygon@0x").size() + 16);
  char id[32];
  std::snprintf(id, sizeof id, "%016llx",
                static_cast<unsigned long long>(capnp::typeId<geometry::Polygon>()));
  CHECK(name == std::string("struct Polygon@0x") + id);

  CHECK(plugpool::typeName<geometry::Polygon::Reader>() == name);
  CHECK(plugpool::typeName<geometry::Polygon::Builder>() == name);
  STATIC_REQUIRE(
      std::is_same_v<plugpool::WireTypeOf<geometry::Polygon::Builder>, geometry::Polygon>);
  CHECK(plugpool::typeName<plugpool::Message<geometry::Polygon>>() == name);
  CHECK(plugpool::typeName<geometry::PolygonStats>() != name);
  CHECK_THAT(plugpool::typeName<geometry::PolygonStats>(),
             Catch::StartsWith("struct PolygonStats@0x"));
}

// --- strict decoding -----------------------------------------------------------------------

TEST_CASE("decoding a tuple struct smaller than its layout throws DecodeError") {
  capnp::MallocMessageBuilder message;
  auto empty = message.initRoot<capnp::AnyPointer>().initAsAnyStruct(0, 0);
  CHECK_THROWS_AS(plugpool::codec::readTuple<std::int64_t>(empty.asReader()),
                  plugpool::DecodeError);
  CHECK_THROWS_AS(plugpool::codec::readTuple<std::string>(empty.asReader()), plugpool::DecodeError);

  // One data word is not enough for two scalars, one pointer not enough for two texts.
  capnp::MallocMessageBuilder message2;
  using Layout = plugpool::codec::TupleLayout<std::int64_t, std::string>;
  auto tuple =
      message2.initRoot<capnp::AnyPointer>().initAsAnyStruct(Layout::dataWords, Layout::pointers);
  plugpool::codec::writeTuple<std::int64_t, std::string>(tuple, std::int64_t{1}, "x");
  CHECK_THROWS_AS((plugpool::codec::readTuple<std::int64_t, std::int64_t>(tuple.asReader())),
                  plugpool::DecodeError);
  CHECK_THROWS_AS((plugpool::codec::readTuple<std::string, std::string>(tuple.asReader())),
                  plugpool::DecodeError);
  // A larger struct than needed is fine (forward compatible).
  auto [n] = plugpool::codec::readTuple<std::int64_t>(tuple.asReader());
  CHECK(n == 1);
}

TEST_CASE("decoding a pointer of the wrong kind throws") {
  capnp::MallocMessageBuilder message;
  using Layout = plugpool::codec::TupleLayout<std::string>;
  auto tuple =
      message.initRoot<capnp::AnyPointer>().initAsAnyStruct(Layout::dataWords, Layout::pointers);
  plugpool::codec::writeTuple<std::string>(tuple, std::string("not a list of numbers"));
  auto reader = tuple.asReader();

  // Text read as a list (of scalars or of pointers), as a tuple, as a struct.
  REQUIRE_THROWS(plugpool::codec::readTuple<std::vector<std::int64_t>>(reader));
  REQUIRE_THROWS(plugpool::codec::readTuple<std::vector<std::string>>(reader));
  REQUIRE_THROWS_AS((plugpool::codec::readTuple<std::pair<std::string, std::int64_t>>(reader)),
                    plugpool::DecodeError);
  REQUIRE_THROWS_AS(plugpool::codec::readTuple<geometry::Polygon>(reader), plugpool::DecodeError);

  // A list of texts read as a map (a list of tuple structs).
  capnp::MallocMessageBuilder message2;
  using ListLayout = plugpool::codec::TupleLayout<std::vector<std::string>>;
  auto listTuple = message2.initRoot<capnp::AnyPointer>().initAsAnyStruct(ListLayout::dataWords,
                                                                          ListLayout::pointers);
  plugpool::codec::writeTuple<std::vector<std::string>>(listTuple,
                                                        std::vector<std::string>{"a", "b"});
  REQUIRE_THROWS(
      plugpool::codec::readTuple<std::map<std::string, std::int64_t>>(listTuple.asReader()));
}

TEST_CASE("readTupleList accepts only a list of structs") {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<capnp::AnyPointer>().initAsAnyStruct(0, 3);
  auto pointers = root.getPointerSection();
  pointers[0].initAsAnyStruct(1, 0);                                   // a plain struct
  pointers[1].initAsAnyList(capnp::ElementSize::INLINE_COMPOSITE, 0);  // an empty struct list
  pointers[2].initAs<capnp::List<std::int64_t>>(2);                    // a list of scalars
  auto reader = root.asReader().getPointerSection();

  CHECK_THROWS_AS(plugpool::codec::readTupleList(reader[0]), plugpool::DecodeError);
  CHECK_THROWS_AS(plugpool::codec::readTupleList(reader[2]), plugpool::DecodeError);
  CHECK(plugpool::codec::readTupleList(reader[1]).size() == 0);

  // A real list of tuple structs reads back with its elements.
  capnp::MallocMessageBuilder listMessage;
  using Layout = plugpool::codec::TupleLayout<std::int64_t, std::string>;
  auto list = listMessage.initRoot<capnp::AnyPointer>().initAsListOfAnyStruct(Layout::dataWords,
                                                                              Layout::pointers, 3);
  for (unsigned i = 0; i < 3; ++i) {
    plugpool::codec::writeTuple<std::int64_t, std::string>(
        list[i], static_cast<std::int64_t>(i * 10), std::to_string(i));
  }
  auto items = plugpool::codec::readTupleList(listMessage.getRoot<capnp::AnyPointer>().asReader());
  REQUIRE(items.size() == 3);
  auto [n, s] = plugpool::codec::readTuple<std::int64_t, std::string>(items[2]);
  CHECK(n == 20);
  CHECK(s == "2");
}

// --- LocalPlugin ---------------------------------------------------------------------------

TEST_CASE("LocalPlugin calls the example plugin's scalar and text tasks in-process") {
  plugpool::LocalPlugin local("examples");
  auto square = local.task<std::int64_t(std::int64_t)>("square");
  CHECK(square(7) == 49);
  CHECK(square(-3) == 9);
  CHECK(square.plugin() == "examples");
  CHECK(square.name() == "square");

  auto add = local.task<double(double, double)>("add");
  CHECK(add(1.25, 2.5) == 3.75);

  auto upper = local.task<std::string(std::string)>("upper");
  CHECK(upper(std::string("Hello, world 1")) == "HELLO, WORLD 1");
  CHECK(upper(std::string()).empty());

  auto echo = local.task<Bytes(Bytes)>("echo_bytes");
  const Bytes all = allByteValues();
  CHECK(echo(all) == all);
  CHECK(echo(Bytes()).empty());
}

TEST_CASE("LocalPlugin calls tasks taking and returning lists, maps and tuples") {
  plugpool::LocalPlugin local("examples");

  auto wordCount = local.task<std::map<std::string, std::int64_t>(std::string)>("word_count");
  const std::map<std::string, std::int64_t> expected{{"a", 2}, {"b", 1}, {"c", 3}};
  CHECK(wordCount(std::string("c a b c a c")) == expected);
  CHECK(wordCount(std::string("   ")).empty());

  auto wordPairs =
      local.task<std::vector<std::pair<std::string, std::int64_t>>(std::string)>("word_count");
  CHECK(wordPairs(std::string("c a b c a c")) ==
        std::vector<std::pair<std::string, std::int64_t>>{{"a", 2}, {"b", 1}, {"c", 3}});

  auto sum = local.task<std::int64_t(std::vector<std::int64_t>)>("sum");
  CHECK(sum(std::vector<std::int64_t>{1, 2, 3, -10}) == -4);
  CHECK(sum(std::vector<std::int64_t>{}) == 0);

  auto sortWords = local.task<std::vector<std::string>(std::vector<std::string>)>("sort_words");
  CHECK(sortWords(std::vector<std::string>{"pear", "apple", "fig"}) ==
        std::vector<std::string>{"apple", "fig", "pear"});

  auto minMax = local.task<std::tuple<double, double>(std::vector<double>)>("min_max");
  CHECK(minMax(std::vector<double>{3.5, -1.0, 7.25, 0.0}) ==
        std::tuple<double, double>{-1.0, 7.25});
}

TEST_CASE("LocalPlugin calls a task taking and returning Cap'n Proto structs") {
  plugpool::LocalPlugin local("examples");
  auto stats = local.task<geometry::PolygonStats(geometry::Polygon)>("polygon_stats");

  capnp::MallocMessageBuilder message;
  auto polygon = message.initRoot<geometry::Polygon>();
  buildUnitSquare(polygon, "unit");
  geometry::Polygon::Reader reader = polygon.asReader();

  plugpool::Message<geometry::PolygonStats> result = stats(reader);
  auto r = result.get();
  CHECK(r.getName() == "unit");
  CHECK(r.getVertices() == 4);
  CHECK(r.getArea() == Approx(1.0));
  CHECK(r.getPerimeter() == Approx(4.0));
  CHECK(r.getCentroid().getX() == Approx(0.5));
  CHECK(r.getCentroid().getY() == Approx(0.5));
}

TEST_CASE("a task that throws becomes a TaskError with the remote type and message") {
  plugpool::LocalPlugin local("examples");
  auto fail = local.task<std::int64_t(std::int64_t)>("fail");
  try {
    fail(7);
    FAIL("fail(7) did not throw");
  } catch (const plugpool::TaskError& e) {
    CHECK(e.remoteType() == "std::runtime_error");
    CHECK(e.remoteMessage() == "fail called with 7");
    CHECK(e.plugin() == "examples");
    CHECK(e.task() == "fail");
  }

  auto minMax = local.task<std::tuple<double, double>(std::vector<double>)>("min_max");
  CHECK_THROWS_AS(minMax(std::vector<double>{}), plugpool::TaskError);
}

TEST_CASE("LocalPlugin lists the plugin's manifest") {
  plugpool::LocalPlugin local("examples");
  const plugpool::PluginInfo& info = local.info();
  CHECK(info.name == "examples");
  CHECK(info.abiVersion == PLUGPOOL_ABI_VERSION);
  CHECK_THAT(info.path, Catch::EndsWith("/libexamples.so"));

  const plugpool::TaskInfo* square = info.find("square");
  REQUIRE(square != nullptr);
  CHECK(square->name == "square");
  CHECK(square->argTypes == std::vector<std::string>{"int64"});
  CHECK(square->resultType == "int64");
  CHECK_FALSE(square->doc.empty());
  CHECK(square->signature() == "(int64) -> int64");

  const plugpool::TaskInfo* stats = info.find("polygon_stats");
  REQUIRE(stats != nullptr);
  CHECK(stats->argTypes == std::vector<std::string>{plugpool::typeName<geometry::Polygon>()});
  CHECK(stats->resultType == plugpool::typeName<geometry::PolygonStats>());

  const plugpool::TaskInfo* wordCount = info.find("word_count");
  REQUIRE(wordCount != nullptr);
  CHECK(wordCount->signature() == "(text) -> list<(text, int64)>");

  CHECK(info.find("no_such_task") == nullptr);
}

TEST_CASE("binding a task with the wrong signature throws PluginError naming both") {
  plugpool::LocalPlugin local("examples");
  try {
    local.task<std::string(std::string)>("square");
    FAIL("binding square as (text) -> text did not throw");
  } catch (const plugpool::PluginError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("(int64) -> int64"));
    CHECK_THAT(what, Catch::Contains("(text) -> text"));
  }
  CHECK_THROWS_AS(local.task<std::int64_t(std::int64_t)>("no_such_task"), plugpool::PluginError);
}

TEST_CASE("LocalPlugin refuses a plugin built for another ABI version") {
  try {
    plugpool::LocalPlugin wrong(std::string(FIXTURES_DIR) + "/libwrong_abi.so");
    FAIL("loading libwrong_abi.so did not throw");
  } catch (const plugpool::PluginError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("ABI version 999"));
  }
  CHECK_THROWS_AS(plugpool::LocalPlugin(std::string(FIXTURES_DIR) + "/libno_such_plugin.so"),
                  plugpool::PluginError);
}
