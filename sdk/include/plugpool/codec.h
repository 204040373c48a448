// plugpool/codec.h — conversion between C++ values and Cap'n Proto, the same on both sides.
//
// Plugins use it (through sdk.h) to decode arguments and encode results; hosts use it (through
// pool.h) to encode arguments and decode results. Because both sides compile the same
// templates, a type's wire form and its canonical name can never disagree.
//
// Supported types, with their canonical names (what the manifest lists and bind-time checks
// compare):
//
//   bool                                    bool
//   int8_t … int64_t, uint8_t … uint64_t    int8 … int64, uint8 … uint64 (by size and sign,
//                                           so `long` and `long long` are both int64)
//   float, double                           float32, float64
//   std::string, std::string_view           text
//   plugpool::Bytes, std::span<const std::byte>   data
//   std::vector<T>                          list<T>
//   std::pair<A, B>, std::tuple<A, …>       (A, B, …)
//   std::map<K, V>, std::unordered_map<K,V> list<(K, V)>   (a map is a list of pairs on the wire)
//   a Cap'n Proto struct X                  struct Name@0x<type id>
//     plugin side: parameter X::Reader, result through a trailing X::Builder parameter;
//     host side: pass X::Reader or plugpool::Message<X>, results come back as Message<X>.
//
// Any other type in a task signature (std::optional, a raw pointer, ...) is a compile error:
// one static_assert listing these, with the compiler's note naming the type.
//
// The views (std::string_view, std::span, X::Reader) point into the message being decoded and
// are valid only during the call that received them.
//
// Wire form ("tuple struct", abi.h convention 5): a tuple of values is one Cap'n Proto struct
// whose data section holds one 64-bit word per scalar, in order, and whose pointer section
// holds one pointer per non-scalar, in order. Decoding is strict: a tuple struct smaller than
// its layout, or a pointer of the wrong kind, throws plugpool::DecodeError.
//
// Thread safety: everything here is stateless; Message<T> is a value type (move-only).
#pragma once

// The SDK is C++20 (concepts, std::span, std::bit_cast). Stop at this one error instead of
// the screens of errors its templates would give in an older mode.
#if __cplusplus < 202002L
#error "plugpool needs C++20: compile with -std=c++20 (or -std=gnu++20)"
#include <plugpool: stopping here, see the #error above>  // a missing file stops the compiler
#endif

#include <sys/mman.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <capnp/any.h>
#include <capnp/list.h>
#include <capnp/message.h>
#include <capnp/schema.h>

static_assert(std::endian::native == std::endian::little,
              "plugpool stores scalars as little-endian Cap'n Proto data words");

namespace plugpool {

// Raw bytes, carried as Cap'n Proto Data.
using Bytes = std::vector<std::byte>;

// Thrown when a value on the wire does not have the shape its type requires.
class DecodeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An owned copy of a Cap'n Proto struct of type T: what a host gets back for a struct result.
// Move-only (Cap'n Proto builders cannot be copied); get() is valid while the Message lives.
template <typename T>
class Message {
 public:
  Message() : message_(std::make_unique<capnp::MallocMessageBuilder>()) { message_->initRoot<T>(); }
  explicit Message(typename T::Reader value)
      : message_(std::make_unique<capnp::MallocMessageBuilder>()) {
    message_->setRoot(value);
  }
  typename T::Reader get() const { return message_->getRoot<T>().asReader(); }
  typename T::Builder builder() { return message_->getRoot<T>(); }
  operator typename T::Reader() const { return get(); }

 private:
  std::unique_ptr<capnp::MallocMessageBuilder> message_;
};

namespace codec {

enum class Slot { DATA, POINTER };

template <typename T>
struct IsCapnpStruct {
  static constexpr bool value = capnp::kind<T>() == capnp::Kind::STRUCT;
};

template <typename T, typename = void>
struct HasReads : std::false_type {};
template <typename T>
struct HasReads<T, std::void_t<typename T::Reads>>
    : std::bool_constant<IsCapnpStruct<typename T::Reads>::value> {};

template <typename T, typename = void>
struct HasBuilds : std::false_type {};
template <typename T>
struct HasBuilds<T, std::void_t<typename T::Builds>>
    : std::bool_constant<IsCapnpStruct<typename T::Builds>::value> {};

template <typename T, typename = void>
struct IsSchemaStruct : std::false_type {};
template <typename T>
struct IsSchemaStruct<T, std::void_t<typename T::_capnpPrivate>>
    : std::bool_constant<IsCapnpStruct<T>::value> {};

std::string structTypeName(capnp::StructSchema schema);

}  // namespace codec

// Codec<T>: how one C++ type travels. Every specialization provides
//   static constexpr codec::Slot slot;
//   using Value = …;                           // what decoding yields
//   static std::string typeName();
// and, for Slot::DATA, toWord(const T&) / fromWord(uint64_t); for Slot::POINTER,
// write(capnp::AnyPointer::Builder, const U&) / read(capnp::AnyPointer::Reader).
//
// A type with no specialization is a compile error: one static_assert, which the compiler
// shows under "In instantiation of plugpool::Codec<T>" and "IS_SUPPORTED<T> evaluates to
// false", both naming the type.
template <typename T, typename Enable = void>
struct Codec;

namespace codec {

// False for every type: the condition of the unsupported types' static_assert, written so
// that the compiler's note names the type.
template <typename T>
inline constexpr bool IS_SUPPORTED = false;

// What an unsupported type's Codec has besides its static_assert: just enough for the code
// that uses it to compile, so that the static_assert is the only error a build shows.
template <typename T>
struct Unsupported {
  static constexpr Slot slot = Slot::POINTER;
  using Value = T;
  static std::string typeName() { return "unsupported"; }
  template <typename U>
  static void write(capnp::AnyPointer::Builder, const U&) {}
  [[noreturn]] static Value read(capnp::AnyPointer::Reader) { std::abort(); }
};

}  // namespace codec

template <typename T, typename Enable>
struct Codec : codec::Unsupported<T> {
  static_assert(codec::IS_SUPPORTED<T>,
                "plugpool: this type cannot be a task's argument or result. Supported: bool, "
                "int8_t ... int64_t, uint8_t ... uint64_t, float, double, std::string, "
                "std::string_view, plugpool::Bytes, std::span<const std::byte>, a Cap'n Proto "
                "struct (X::Reader; a result through a trailing X::Builder), and std::vector, "
                "std::pair, std::tuple, std::map, std::unordered_map of these (plugpool/codec.h)");
};

// --- scalars -------------------------------------------------------------------------------

namespace codec {
template <typename T>
inline constexpr bool IS_CHARACTER =
    std::is_same_v<T, char> || std::is_same_v<T, wchar_t> || std::is_same_v<T, char8_t> ||
    std::is_same_v<T, char16_t> || std::is_same_v<T, char32_t>;
}  // namespace codec

// Character types are refused: whether `char` is signed differs between platforms, so its
// name in a manifest would too. Use int8_t / uint8_t, or std::string for text.
template <typename T>
struct Codec<T, std::enable_if_t<codec::IS_CHARACTER<T>>> : codec::Unsupported<T> {
  static_assert(!codec::IS_CHARACTER<T>,
                "plugpool: character types are not task values; use int8_t/uint8_t or text");
};

template <typename T>
struct Codec<T, std::enable_if_t<std::is_arithmetic_v<T> && !codec::IS_CHARACTER<T>>> {
  static constexpr codec::Slot slot = codec::Slot::DATA;
  using Value = T;
  static std::string typeName() {
    if constexpr (std::is_same_v<T, bool>) {
      return "bool";
    } else if constexpr (std::is_floating_point_v<T>) {
      static_assert(sizeof(T) == 4 || sizeof(T) == 8, "long double is not supported");
      return sizeof(T) == 4 ? "float32" : "float64";
    } else {
      return std::string(std::is_signed_v<T> ? "int" : "uint") + std::to_string(sizeof(T) * 8);
    }
  }
  static std::uint64_t toWord(T value) {
    if constexpr (std::is_same_v<T, bool>) {
      return value ? 1 : 0;
    } else if constexpr (std::is_same_v<T, float>) {
      return std::bit_cast<std::uint32_t>(value);
    } else if constexpr (std::is_same_v<T, double>) {
      return std::bit_cast<std::uint64_t>(value);
    } else {
      return static_cast<std::uint64_t>(value);
    }
  }
  static T fromWord(std::uint64_t word) {
    if constexpr (std::is_same_v<T, bool>) {
      return word != 0;
    } else if constexpr (std::is_same_v<T, float>) {
      return std::bit_cast<float>(static_cast<std::uint32_t>(word));
    } else if constexpr (std::is_same_v<T, double>) {
      return std::bit_cast<double>(word);
    } else {
      return static_cast<T>(word);
    }
  }
  // The element type of a Cap'n Proto list of this scalar (std::vector<T> travels as List(W)).
  using ListElement = std::conditional_t<
      std::is_same_v<T, bool>, bool,
      std::conditional_t<
          std::is_floating_point_v<T>, T,
          std::conditional_t<
              std::is_signed_v<T>,
              std::conditional_t<
                  sizeof(T) == 1, int8_t,
                  std::conditional_t<sizeof(T) == 2, int16_t,
                                     std::conditional_t<sizeof(T) == 4, int32_t, int64_t>>>,
              std::conditional_t<
                  sizeof(T) == 1, uint8_t,
                  std::conditional_t<sizeof(T) == 2, uint16_t,
                                     std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>>>>;
};

// --- text and data ---------------------------------------------------------------------------

namespace codec {

inline void writeText(capnp::AnyPointer::Builder out, std::string_view value) {
  auto text = out.initAs<capnp::Text>(static_cast<unsigned>(value.size()));
  if (!value.empty()) std::memcpy(text.begin(), value.data(), value.size());
}
// Throws DecodeError unless `in` is null or a list whose elements are `size`.
inline void expectList(capnp::AnyPointer::Reader in, capnp::ElementSize size, const char* what) {
  if (in.isNull()) return;
  if (!in.isList()) throw DecodeError(std::string("expected ") + what);
  auto list = in.getAs<capnp::AnyList>();
  if (list.size() > 0 && list.getElementSize() != size) {
    throw DecodeError(std::string("expected ") + what);
  }
}

inline std::string_view readText(capnp::AnyPointer::Reader in) {
  expectList(in, capnp::ElementSize::BYTE, "text");
  auto text = in.getAs<capnp::Text>();
  return {text.begin(), text.size()};
}
inline void writeData(capnp::AnyPointer::Builder out, std::span<const std::byte> value) {
  auto data = out.initAs<capnp::Data>(static_cast<unsigned>(value.size()));
  if (!value.empty()) std::memcpy(data.begin(), value.data(), value.size());
}
inline std::span<const std::byte> readData(capnp::AnyPointer::Reader in) {
  expectList(in, capnp::ElementSize::BYTE, "data");
  auto data = in.getAs<capnp::Data>();
  return {reinterpret_cast<const std::byte*>(data.begin()), data.size()};
}

// A copy of `view`. Fresh memory is faulted in a page at a time, which for a large copy costs
// several times the copy itself; so a large one first asks the kernel for transparent huge
// pages (madvise MADV_HUGEPAGE, a hint: without them it is an ordinary copy). Only a block
// of ADVISED_COPY_BYTES or more, which glibc's malloc always serves with a mapping of its own
// (its mmap threshold never exceeds 32 MiB) that free unmaps: a smaller one may come from
// the heap, where the advice would outlive the block, on memory the allocator keeps.
inline constexpr std::size_t ADVISED_COPY_BYTES = std::size_t{32} << 20;
inline Bytes copyBytes(std::span<const std::byte> view) {
  constexpr std::uintptr_t HUGE_PAGE = std::uintptr_t{2} << 20;
  Bytes bytes;
  if (view.size() >= ADVISED_COPY_BYTES) {
    bytes.reserve(view.size());
    const auto at = reinterpret_cast<std::uintptr_t>(bytes.data());
    const std::uintptr_t from = (at + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    const std::uintptr_t to = (at + view.size()) & ~(HUGE_PAGE - 1);
    if (from < to) ::madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
  }
  bytes.assign(view.begin(), view.end());
  return bytes;
}

}  // namespace codec

template <>
struct Codec<std::string> {
  static constexpr codec::Slot slot = codec::Slot::POINTER;
  using Value = std::string;
  static std::string typeName() { return "text"; }
  static void write(capnp::AnyPointer::Builder out, std::string_view value) {
    codec::writeText(out, value);
  }
  static Value read(capnp::AnyPointer::Reader in) { return std::string(codec::readText(in)); }
};

template <>
struct Codec<std::string_view> : Codec<std::string> {
  using Value = std::string_view;
  static Value read(capnp::AnyPointer::Reader in) { return codec::readText(in); }
};

template <>
struct Codec<Bytes> {
  static constexpr codec::Slot slot = codec::Slot::POINTER;
  using Value = Bytes;
  static std::string typeName() { return "data"; }
  static void write(capnp::AnyPointer::Builder out, std::span<const std::byte> value) {
    codec::writeData(out, value);
  }
  static Value read(capnp::AnyPointer::Reader in) { return codec::copyBytes(codec::readData(in)); }
};

template <>
struct Codec<std::span<const std::byte>> : Codec<Bytes> {
  using Value = std::span<const std::byte>;
  static Value read(capnp::AnyPointer::Reader in) { return codec::readData(in); }
};

// --- tuples ---------------------------------------------------------------------------------

namespace codec {

// The layout of a tuple struct holding values of types T...: how many data words and
// pointers, and where the I-th value sits within its section.
template <typename... T>
struct TupleLayout {
  static constexpr std::uint16_t dataWords =
      static_cast<std::uint16_t>((0 + ... + (Codec<T>::slot == Slot::DATA ? 1 : 0)));
  static constexpr std::uint16_t pointers =
      static_cast<std::uint16_t>((0 + ... + (Codec<T>::slot == Slot::POINTER ? 1 : 0)));

  template <std::size_t I>
  static constexpr unsigned position() {
    constexpr Slot slots[] = {Codec<T>::slot...};
    unsigned n = 0;
    for (std::size_t k = 0; k < I; ++k) n += (slots[k] == slots[I]) ? 1 : 0;
    return n;
  }
};

template <typename... T>
std::string tupleTypeName() {
  std::string name = "(";
  bool first = true;
  ((name += (first ? "" : ", ") + Codec<T>::typeName(), first = false), ...);
  return name + ")";
}

// Writes values (each convertible to its T) into a struct already sized TupleLayout<T...>.
template <typename... T, typename... U>
void writeTuple(capnp::AnyStruct::Builder out, const U&... values) {
  static_assert(sizeof...(T) == sizeof...(U));
  using Layout = TupleLayout<T...>;
  auto data = out.getDataSection();
  auto pointers = out.getPointerSection();
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (
        [&] {
          using C = Codec<std::tuple_element_t<I, std::tuple<T...>>>;
          constexpr unsigned pos = Layout::template position<I>();
          const auto& value = std::get<I>(std::forward_as_tuple(values...));
          if constexpr (C::slot == Slot::DATA) {
            std::uint64_t word = C::toWord(value);
            std::memcpy(data.begin() + pos * 8, &word, 8);
          } else {
            C::write(pointers[pos], value);
          }
        }(),
        ...);
  }
  (std::index_sequence_for<T...>{});
}

inline void checkTupleSize(capnp::AnyStruct::Reader in, unsigned dataWords, unsigned pointers) {
  if (in.getDataSection().size() < dataWords * 8u || in.getPointerSection().size() < pointers) {
    throw DecodeError("value tuple has " + std::to_string(in.getDataSection().size() / 8) +
                      " data words and " + std::to_string(in.getPointerSection().size()) +
                      " pointers; its type needs " + std::to_string(dataWords) + " and " +
                      std::to_string(pointers));
  }
}

template <typename... T>
std::tuple<typename Codec<T>::Value...> readTuple(capnp::AnyStruct::Reader in) {
  using Layout = TupleLayout<T...>;
  checkTupleSize(in, Layout::dataWords, Layout::pointers);
  auto data = in.getDataSection();
  auto pointers = in.getPointerSection();
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple<typename Codec<T>::Value...>{[&]() -> typename Codec<T>::Value {
      using C = Codec<T>;
      constexpr unsigned pos = Layout::template position<I>();
      if constexpr (C::slot == Slot::DATA) {
        std::uint64_t word;
        std::memcpy(&word, data.begin() + pos * 8, 8);
        return C::fromWord(word);
      } else {
        return C::read(pointers[pos]);
      }
    }()...};
  }
  (std::index_sequence_for<T...>{});
}

// Reads a list of tuple structs (how chunks carry items and results). Throws DecodeError if
// the pointer is not a struct list.
inline capnp::List<capnp::AnyStruct>::Reader readTupleList(capnp::AnyPointer::Reader in) {
  if (!in.isNull() && !in.isList()) throw DecodeError("expected a list of tuple structs");
  auto list = in.getAs<capnp::AnyList>();
  if (list.size() > 0 && list.getElementSize() != capnp::ElementSize::INLINE_COMPOSITE) {
    throw DecodeError("expected a list of tuple structs");
  }
  return list.as<capnp::List<capnp::AnyStruct>>();
}

inline capnp::AnyStruct::Reader readStruct(capnp::AnyPointer::Reader in) {
  if (!in.isNull() && !in.isStruct()) throw DecodeError("expected a struct pointer");
  return in.getAs<capnp::AnyStruct>();
}

// --- chunks of scalar tuples ----------------------------------------------------------------
//
// A tuple of scalars only (TupleLayout's pointers == 0) is `dataWords` data words. A list of
// such tuple structs, each exactly that size, is one plain array of words: value k of tuple i
// is word i * dataWords + k. Chunks of scalar items and results are read and written through
// that array, without a struct accessor per item (abi.h convention 9).

// Whether values of types T... travel as a tuple of data words only.
template <typename... T>
inline constexpr bool IS_SCALAR_TUPLE = sizeof...(T) > 0 && TupleLayout<T...>::pointers == 0;

// The start of `list`'s array of words if every element is exactly `dataWords` data words and
// no pointers; null if the list is empty or laid out otherwise (a sender may send bigger
// tuples: read those element by element, as readTuple does). The array holds
// list.size() * dataWords words. List is a List<AnyStruct>::Reader or ::Builder.
template <typename List>
auto packedWords(List list, unsigned dataWords) -> decltype(list[0].getDataSection().begin()) {
  if (dataWords == 0 || list.size() == 0) return nullptr;
  auto first = list[0];
  auto data = first.getDataSection();
  if (data.size() != dataWords * 8u || first.getPointerSection().size() != 0) return nullptr;
  // Every element of a list is one step from the last; for a struct list the step is the
  // element's size, but check it rather than rely on how the list was made.
  if (list.size() > 1 && list[1].getDataSection().begin() != data.begin() + dataWords * 8u) {
    return nullptr;
  }
  return data.begin();
}

// Writes scalar values (each convertible to its T) as consecutive words at `out`.
template <typename... T, typename... U>
void writeWords(capnp::byte* out, const U&... values) {
  static_assert(sizeof...(T) == sizeof...(U) && IS_SCALAR_TUPLE<T...>);
  (
      [&] {
        std::uint64_t word = Codec<T>::toWord(values);
        std::memcpy(out, &word, 8);
        out += 8;
      }(),
      ...);
}

// Reads scalar values of types T... from consecutive words at `in`.
template <typename... T>
std::tuple<typename Codec<T>::Value...> readWords(const capnp::byte* in) {
  static_assert(IS_SCALAR_TUPLE<T...>);
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple<typename Codec<T>::Value...>{[&] {
      std::uint64_t word;
      std::memcpy(&word, in + I * 8, 8);
      return Codec<T>::fromWord(word);
    }()...};
  }
  (std::index_sequence_for<T...>{});
}

}  // namespace codec

template <typename... T>
struct Codec<std::tuple<T...>> {
  static constexpr codec::Slot slot = codec::Slot::POINTER;
  using Value = std::tuple<typename Codec<T>::Value...>;
  static std::string typeName() { return codec::tupleTypeName<T...>(); }
  template <typename U>
  static void write(capnp::AnyPointer::Builder out, const U& value) {
    using Layout = codec::TupleLayout<T...>;
    auto s = out.initAsAnyStruct(Layout::dataWords, Layout::pointers);
    std::apply([&](const auto&... v) { codec::writeTuple<T...>(s, v...); }, value);
  }
  static Value read(capnp::AnyPointer::Reader in) {
    return codec::readTuple<T...>(codec::readStruct(in));
  }
};

template <typename A, typename B>
struct Codec<std::pair<A, B>> {
  static constexpr codec::Slot slot = codec::Slot::POINTER;
  using Value = std::pair<typename Codec<A>::Value, typename Codec<B>::Value>;
  static std::string typeName() { return codec::tupleTypeName<A, B>(); }
  template <typename U>
  static void write(capnp::AnyPointer::Builder out, const U& value) {
    using Layout = codec::TupleLayout<A, B>;
    auto s = out.initAsAnyStruct(Layout::dataWords, Layout::pointers);
    codec::writeTuple<A, B>(s, value.first, value.second);
  }
  static Value read(capnp::AnyPointer::Reader in) {
    auto [a, b] = codec::readTuple<A, B>(codec::readStruct(in));
    return {std::move(a), std::move(b)};
  }
};

// --- lists and maps -------------------------------------------------------------------------

namespace codec {

// Writes any sized range of E as list<E>: List(W) for scalars, List(AnyPointer) otherwise.
template <typename E, typename Range>
void writeList(capnp::AnyPointer::Builder out, const Range& values) {
  auto n = static_cast<unsigned>(std::size(values));
  unsigned i = 0;
  if constexpr (Codec<E>::slot == Slot::DATA) {
    auto list = out.initAs<capnp::List<typename Codec<E>::ListElement>>(n);
    for (const auto& v : values) list.set(i++, static_cast<E>(v));
  } else {
    auto list =
        out.initAsAnyList(capnp::ElementSize::POINTER, n).as<capnp::List<capnp::AnyPointer>>();
    for (const auto& v : values) Codec<E>::write(list[i++], v);
  }
}

// Calls sink(value) for each element of a list<E>.
template <typename E, typename Sink>
void readList(capnp::AnyPointer::Reader in, Sink&& sink) {
  if constexpr (Codec<E>::slot == Slot::DATA) {
    using W = typename Codec<E>::ListElement;
    constexpr auto size = std::is_same_v<W, bool> ? capnp::ElementSize::BIT
                          : sizeof(W) == 1        ? capnp::ElementSize::BYTE
                          : sizeof(W) == 2        ? capnp::ElementSize::TWO_BYTES
                          : sizeof(W) == 4        ? capnp::ElementSize::FOUR_BYTES
                                                  : capnp::ElementSize::EIGHT_BYTES;
    expectList(in, size, "a list of scalars of that size");
    for (auto v : in.getAs<capnp::List<W>>()) {
      sink(static_cast<E>(v));
    }
  } else {
    auto list = in.getAs<capnp::AnyList>();
    if (list.size() > 0 && list.getElementSize() != capnp::ElementSize::POINTER) {
      throw DecodeError("expected a list of pointers");
    }
    for (auto p : list.as<capnp::List<capnp::AnyPointer>>()) sink(Codec<E>::read(p));
  }
}

}  // namespace codec

template <typename E>
struct Codec<std::vector<E>, std::enable_if_t<!std::is_same_v<E, std::byte>>> {
  static constexpr codec::Slot slot = codec::Slot::POINTER;
  using Value = std::vector<typename Codec<E>::Value>;
  static std::string typeName() { return "list<" + Codec<E>::typeName() + ">"; }
  template <typename Range>
  static void write(capnp::AnyPointer::Builder out, const Range& values) {
    codec::writeList<E>(out, values);
  }
  static Value read(capnp::AnyPointer::Reader in) {
    Value out;
    codec::readList<E>(in, [&](auto&& v) { out.push_back(std::move(v)); });
    return out;
  }
};

template <typename Map, typename K, typename V>
struct MapCodec {
  static constexpr codec::Slot slot = codec::Slot::POINTER;
  using Value = Map;
  static std::string typeName() { return "list<" + codec::tupleTypeName<K, V>() + ">"; }
  template <typename Range>
  static void write(capnp::AnyPointer::Builder out, const Range& values) {
    codec::writeList<std::pair<K, V>>(out, values);
  }
  static Value read(capnp::AnyPointer::Reader in) {
    Value out;
    codec::readList<std::pair<K, V>>(in, [&](auto&& kv) { out.insert(std::move(kv)); });
    return out;
  }
};
template <typename K, typename V>
struct Codec<std::map<K, V>> : MapCodec<std::map<K, V>, K, V> {};
template <typename K, typename V>
struct Codec<std::unordered_map<K, V>> : MapCodec<std::unordered_map<K, V>, K, V> {};

// --- Cap'n Proto structs of the author's own schema -----------------------------------------

namespace codec {

inline std::string structTypeName(capnp::StructSchema schema) {
  static constexpr char HEX[] = "0123456789abcdef";
  std::string id = "0x";
  for (int shift = 60; shift >= 0; shift -= 4) id += HEX[(schema.getProto().getId() >> shift) & 15];
  auto name = schema.getShortDisplayName();
  return "struct " + std::string(name.begin(), name.size()) + "@" + id;
}

template <typename T>
struct StructCodecBase {
  static constexpr Slot slot = Slot::POINTER;
  static std::string typeName() { return structTypeName(capnp::Schema::from<T>()); }
  static void write(capnp::AnyPointer::Builder out, typename T::Reader value) {
    out.setAs<T>(value);
  }
  static typename T::Reader view(capnp::AnyPointer::Reader in) {
    if (!in.isNull() && !in.isStruct()) throw DecodeError("expected a struct pointer");
    return in.getAs<T>();
  }
};

}  // namespace codec

// The struct type itself (host signatures): decodes to an owned Message<T>.
template <typename T>
struct Codec<T, std::enable_if_t<codec::IsSchemaStruct<T>::value>> : codec::StructCodecBase<T> {
  using Value = Message<T>;
  static Value read(capnp::AnyPointer::Reader in) { return Message<T>(Codec::view(in)); }
};
template <typename T>
struct Codec<Message<T>> : Codec<T> {};

// T::Reader (plugin parameters): a view into the message.
template <typename R>
struct Codec<R, std::enable_if_t<codec::HasReads<R>::value>>
    : codec::StructCodecBase<typename R::Reads> {
  using Value = R;
  static Value read(capnp::AnyPointer::Reader in) { return Codec::view(in); }
};

// The canonical wire type of a C++ parameter or result type: cv-ref removed, and a
// T::Builder (a plugin's out parameter) stands for T.
template <typename T>
struct WireType {
  using type = std::remove_cvref_t<T>;
};
template <typename T>
requires codec::HasBuilds<std::remove_cvref_t<T>>::value struct WireType<T> {
  using type = typename std::remove_cvref_t<T>::Builds;
};
template <typename T>
using WireTypeOf = typename WireType<T>::type;

template <typename T>
std::string typeName() {
  return Codec<WireTypeOf<T>>::typeName();
}

}  // namespace plugpool
