// values/types.h — task values by their canonical type names (plugpool/codec.h): what every
// front end that converts a caller's own values to and from the wire shares (the command
// line's text and JSON, values/convert.h's traversal). Internal.
//
// A task's arguments travel as one tuple struct (codec.h): a 64-bit data word per scalar, in
// order, and a pointer per text, data, list, tuple or struct, in order. Scalars are handled as
// those words here; the front ends say how a word is written in their own form.
//
// Thread safety: everything here is a pure function or, for Schemas, used by one thread at a
// time.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/any.h>
#include <capnp/schema-loader.h>

#include "plugpool/codec.h"
#include "plugpool/dynamic.h"
#include "plugpool/manifest.h"

namespace plugpool::values {

// A value that does not fit its type, or a type name that is not supported. what() names the
// problem for a human.
class ValueError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A canonical type name, parsed.
struct Type {
  enum Kind { BOOL, INT, UINT, FLOAT, TEXT, DATA, LIST, TUPLE, STRUCT } kind = BOOL;
  unsigned bits = 0;           // INT, UINT, FLOAT: 8 … 64
  std::vector<Type> elements;  // LIST: the element type; TUPLE: the member types
  std::string name;            // the canonical name
  std::uint64_t structId = 0;  // STRUCT

  bool scalar() const { return kind == BOOL || kind == INT || kind == UINT || kind == FLOAT; }
};

// Throws ValueError if `name` is not a canonical type name.
Type parseType(std::string_view name);

// Each member's index within its section, for a tuple of `types`; and the sections' sizes.
std::vector<unsigned> slotsOf(const std::vector<Type>& types);
TupleShape shapeOf(const std::vector<Type>& types);

inline void putWord(capnp::AnyStruct::Builder tuple, unsigned slot, std::uint64_t word) {
  std::memcpy(tuple.getDataSection().begin() + slot * 8, &word, 8);
}
inline std::uint64_t getWord(capnp::AnyStruct::Reader tuple, unsigned slot) {
  std::uint64_t word;
  std::memcpy(&word, tuple.getDataSection().begin() + slot * 8, 8);
  return word;
}

// The word of a scalar of type `t` (INT, UINT or FLOAT respectively) holding `v`; throws
// ValueError("out of range for int8") and the like if `v` does not fit.
std::uint64_t signedWord(const Type& t, std::int64_t v);
std::uint64_t unsignedWord(const Type& t, std::uint64_t v);
inline std::uint64_t floatWord(const Type& t, double v) {
  if (t.bits == 32) return std::bit_cast<std::uint32_t>(static_cast<float>(v));
  return std::bit_cast<std::uint64_t>(v);
}
// What a scalar word of type `t` holds.
inline std::int64_t signedOf(const Type& t, std::uint64_t word) {
  const unsigned shift = 64 - t.bits;
  return static_cast<std::int64_t>(word << shift) >> shift;
}
inline std::uint64_t unsignedOf(const Type& t, std::uint64_t word) {
  return t.bits == 64 ? word : word & ((std::uint64_t{1} << t.bits) - 1);
}
inline double floatOf(const Type& t, std::uint64_t word) {
  return t.bits == 32 ? std::bit_cast<float>(static_cast<std::uint32_t>(word))
                      : std::bit_cast<double>(word);
}

// The element size of a list of scalar type `t`.
capnp::ElementSize listElementSize(const Type& t);

// Calls f.template operator()<W>() with W the C++ type of scalar type `t`.
template <typename F>
decltype(auto) withScalarType(const Type& t, F&& f) {
  if (t.kind == Type::BOOL) return f.template operator()<bool>();
  if (t.kind == Type::FLOAT) {
    return t.bits == 32 ? f.template operator()<float>() : f.template operator()<double>();
  }
  const bool signedInt = t.kind == Type::INT;
  switch (t.bits) {
    case 8:
      return signedInt ? f.template operator()<std::int8_t>()
                       : f.template operator()<std::uint8_t>();
    case 16:
      return signedInt ? f.template operator()<std::int16_t>()
                       : f.template operator()<std::uint16_t>();
    case 32:
      return signedInt ? f.template operator()<std::int32_t>()
                       : f.template operator()<std::uint32_t>();
    default:
      return signedInt ? f.template operator()<std::int64_t>()
                       : f.template operator()<std::uint64_t>();
  }
}

// Element i of a list of scalars `t`, as a word; and the other way.
inline std::uint64_t listWord(const Type& t, capnp::AnyList::Reader list, unsigned i) {
  return withScalarType(t, [&]<typename W>() {
    return Codec<W>::toWord(static_cast<W>(list.as<capnp::List<W>>()[i]));
  });
}
inline void setListWord(const Type& t, capnp::AnyList::Builder list, unsigned i,
                        std::uint64_t word) {
  withScalarType(t,
                 [&]<typename W>() { list.as<capnp::List<W>>().set(i, Codec<W>::fromWord(word)); });
}

// A struct's or group's name for messages: "struct Point", "group extent".
std::string structName(capnp::StructSchema schema);

// Throws ValueError unless every one of `names` is a field of `schema` (a struct or group): a
// value of a struct is given by field name, and a misspelt name is refused, never ignored.
// The message names every unknown name and the fields there are, e.g.
//   struct Polygon has no field "nmae"; its fields are name, points
// Every front end that takes struct values by field name calls it before setting any field.
void checkFieldNames(capnp::StructSchema schema, std::span<const std::string> names);

// The struct schemas one plugin ships (PluginInfo::schemaNodes), loaded when first needed.
class Schemas {
 public:
  explicit Schemas(const PluginInfo& plugin) : plugin_(plugin) {}
  // The schema of struct type `type`. Throws ValueError if the plugin ships none for it, or
  // ships nodes that do not load.
  capnp::StructSchema of(const Type& type);

 private:
  const PluginInfo& plugin_;
  capnp::SchemaLoader loader_;
  bool loaded_ = false;
};

}  // namespace plugpool::values
