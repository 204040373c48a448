#include "types.h"

#include <limits>

#include <kj/exception.h>

namespace plugpool::values {

namespace {

// Parses the type at the start of `s`, consuming it.
Type parseAt(std::string_view& s, std::string_view whole) {
  auto fail = [&]() -> Type {
    throw ValueError("unsupported type name \"" + std::string(whole) + "\"");
  };
  Type t;
  auto take = [&](std::string_view prefix) {
    if (s.substr(0, prefix.size()) != prefix) return false;
    s.remove_prefix(prefix.size());
    return true;
  };
  if (take("list<")) {
    t.kind = Type::LIST;
    t.elements.push_back(parseAt(s, whole));
    if (!take(">")) fail();
    t.name = "list<" + t.elements[0].name + ">";
    return t;
  }
  if (take("(")) {
    t.kind = Type::TUPLE;
    t.name = "(";
    if (!take(")")) {
      for (;;) {
        t.elements.push_back(parseAt(s, whole));
        t.name += (t.elements.size() > 1 ? ", " : "") + t.elements.back().name;
        if (take(", ")) continue;
        if (take(")")) break;
        fail();
      }
    }
    t.name += ")";
    return t;
  }
  if (s.substr(0, 7) == "struct ") {
    auto end = s.find_first_of(",)>");
    std::string_view name = s.substr(0, end);
    t.kind = Type::STRUCT;
    t.structId = structTypeId(name);
    if (t.structId == 0) fail();
    t.name = std::string(name);
    s.remove_prefix(name.size());
    return t;
  }
  static const struct {
    std::string_view name;
    Type::Kind kind;
    unsigned bits;
  } SIMPLE[] = {
      {"bool", Type::BOOL, 1},      {"int8", Type::INT, 8},       {"int16", Type::INT, 16},
      {"int32", Type::INT, 32},     {"int64", Type::INT, 64},     {"uint8", Type::UINT, 8},
      {"uint16", Type::UINT, 16},   {"uint32", Type::UINT, 32},   {"uint64", Type::UINT, 64},
      {"float32", Type::FLOAT, 32}, {"float64", Type::FLOAT, 64}, {"text", Type::TEXT, 0},
      {"data", Type::DATA, 0}};
  // The longest match first: "int8" must not match "int16"'s prefix, and names end at a
  // delimiter or the end.
  for (const auto& simple : SIMPLE) {
    if (s.substr(0, simple.name.size()) != simple.name) continue;
    std::string_view rest = s.substr(simple.name.size());
    if (!rest.empty() && rest.front() != ',' && rest.front() != ')' && rest.front() != '>')
      continue;
    s.remove_prefix(simple.name.size());
    t.kind = simple.kind;
    t.bits = simple.bits;
    t.name = std::string(simple.name);
    return t;
  }
  return fail();
}

[[noreturn]] void outOfRange(const Type& t) {
  throw ValueError("out of range for " + t.name);
}

}  // namespace

Type parseType(std::string_view name) {
  std::string_view rest = name;
  Type t = parseAt(rest, name);
  if (!rest.empty()) throw ValueError("unsupported type name \"" + std::string(name) + "\"");
  return t;
}

std::vector<unsigned> slotsOf(const std::vector<Type>& types) {
  std::vector<unsigned> slots;
  unsigned data = 0, pointers = 0;
  for (const Type& t : types) slots.push_back(t.scalar() ? data++ : pointers++);
  return slots;
}

TupleShape shapeOf(const std::vector<Type>& types) {
  TupleShape shape;
  for (const Type& t : types) ++(t.scalar() ? shape.dataWords : shape.pointers);
  return shape;
}

std::uint64_t signedWord(const Type& t, std::int64_t v) {
  const std::int64_t lo =
      t.bits == 64 ? std::numeric_limits<std::int64_t>::min() : -(std::int64_t{1} << (t.bits - 1));
  const std::int64_t hi = t.bits == 64 ? std::numeric_limits<std::int64_t>::max()
                                       : (std::int64_t{1} << (t.bits - 1)) - 1;
  if (v < lo || v > hi) outOfRange(t);
  return static_cast<std::uint64_t>(v);
}

std::uint64_t unsignedWord(const Type& t, std::uint64_t v) {
  if (t.bits < 64 && v >= (std::uint64_t{1} << t.bits)) outOfRange(t);
  return v;
}

capnp::ElementSize listElementSize(const Type& t) {
  if (t.kind == Type::BOOL) return capnp::ElementSize::BIT;
  switch (t.bits) {
    case 8:
      return capnp::ElementSize::BYTE;
    case 16:
      return capnp::ElementSize::TWO_BYTES;
    case 32:
      return capnp::ElementSize::FOUR_BYTES;
    default:
      return capnp::ElementSize::EIGHT_BYTES;
  }
}

std::string structName(capnp::StructSchema schema) {
  const auto name = schema.getShortDisplayName();
  return (schema.getProto().getStruct().getIsGroup() ? "group " : "struct ") +
         std::string(name.begin(), name.size());
}

void checkFieldNames(capnp::StructSchema schema, std::span<const std::string> names) {
  std::vector<std::string> unknown;
  for (const std::string& name : names) {
    if (schema.findFieldByName(name) == nullptr) unknown.push_back("\"" + name + "\"");
  }
  if (unknown.empty()) return;
  std::string message = structName(schema) + " has no field" + (unknown.size() > 1 ? "s " : " ");
  for (std::size_t i = 0; i < unknown.size(); ++i) {
    if (i > 0) message += i + 1 == unknown.size() ? " and " : ", ";
    message += unknown[i];
  }
  message += "; its fields are ";
  const auto fields = schema.getFields();
  for (unsigned i = 0; i < fields.size(); ++i) {
    if (i > 0) message += ", ";
    message += fields[i].getProto().getName().cStr();
  }
  if (fields.size() == 0) message = structName(schema) + " has no fields at all";
  throw ValueError(message);
}

capnp::StructSchema Schemas::of(const Type& type) {
  if (!loaded_) {
    loaded_ = true;
    try {
      loadSchemas(plugin_, loader_);
    } catch (const kj::Exception& e) {
      throw ValueError("plugin " + plugin_.name +
                       " ships schema nodes that do not load: " + e.getDescription().cStr());
    }
  }
  KJ_IF_MAYBE (schema, loader_.tryGet(type.structId)) {
    try {
      return schema->asStruct();
    } catch (const kj::Exception&) {
    }
  }
  throw ValueError("plugin " + plugin_.name + " ships no schema for " + type.name +
                   " (rebuild it with this SDK)");
}

}  // namespace plugpool::values
