#include "values.h"

#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

#include <capnp/dynamic.h>
#include <kj/exception.h>

#include "plugpool/codec.h"
#include "plugpool/dynamic.h"

namespace plugpool::cli {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::string quoted(std::string_view s) {
  constexpr std::size_t MAX = 40;
  std::string q = "\"" + std::string(s.substr(0, MAX));
  return q + (s.size() > MAX ? "…\"" : "\"");
}

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

void putWord(capnp::AnyStruct::Builder tuple, unsigned slot, std::uint64_t word) {
  std::memcpy(tuple.getDataSection().begin() + slot * 8, &word, 8);
}
std::uint64_t getWord(capnp::AnyStruct::Reader tuple, unsigned slot) {
  std::uint64_t word;
  std::memcpy(&word, tuple.getDataSection().begin() + slot * 8, 8);
  return word;
}

// The element size of a list of scalar type `t`.
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

// Each member's index within its section, for a tuple of `types`.
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

void appendDouble(double v, std::string& out, bool json) {
  if (std::isnan(v)) {
    out += json ? "\"NaN\"" : "nan";
  } else if (std::isinf(v)) {
    out += v > 0 ? (json ? "\"Infinity\"" : "inf") : (json ? "\"-Infinity\"" : "-inf");
  } else {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
  }
}
void appendFloat(float v, std::string& out, bool json) {
  if (!std::isfinite(v)) return appendDouble(v, out, json);
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// Appends scalar word `word` of type `t`.
void appendScalar(const Type& t, std::uint64_t word, std::string& out, bool json) {
  char buf[32];
  switch (t.kind) {
    case Type::BOOL:
      out += word != 0 ? "true" : "false";
      return;
    case Type::INT: {
      const unsigned shift = 64 - t.bits;
      auto v = static_cast<std::int64_t>(word << shift) >> shift;
      out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
      return;
    }
    case Type::UINT: {
      std::uint64_t v = t.bits == 64 ? word : word & ((std::uint64_t{1} << t.bits) - 1);
      out.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
      return;
    }
    case Type::FLOAT:
      if (t.bits == 32) {
        appendFloat(std::bit_cast<float>(static_cast<std::uint32_t>(word)), out, json);
      } else {
        appendDouble(std::bit_cast<double>(word), out, json);
      }
      return;
    default:
      return;
  }
}

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

// Reads element i of a list of scalars `t` as a word.
std::uint64_t listWord(const Type& t, capnp::AnyList::Reader list, unsigned i) {
  return withScalarType(t, [&]<typename W>() {
    return Codec<W>::toWord(static_cast<W>(list.as<capnp::List<W>>()[i]));
  });
}

// Writes word `word` of scalar type `t` as element i of a list.
void setListWord(const Type& t, capnp::AnyList::Builder list, unsigned i, std::uint64_t word) {
  withScalarType(t,
                 [&]<typename W>() { list.as<capnp::List<W>>().set(i, Codec<W>::fromWord(word)); });
}

const char* jsonKind(capnp::JsonValue::Which which) {
  switch (which) {
    case capnp::JsonValue::NULL_:
      return "null";
    case capnp::JsonValue::BOOLEAN:
      return "a boolean";
    case capnp::JsonValue::NUMBER:
      return "a number";
    case capnp::JsonValue::STRING:
      return "a string";
    case capnp::JsonValue::ARRAY:
      return "an array";
    case capnp::JsonValue::OBJECT:
      return "an object";
    default:
      return "a call";
  }
}

}  // namespace

Type parseType(std::string_view name) {
  std::string_view rest = name;
  Type t = parseAt(rest, name);
  if (!rest.empty()) throw ValueError("unsupported type name \"" + std::string(name) + "\"");
  return t;
}

void appendJsonString(std::string_view text, std::string& out) {
  out += '"';
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static constexpr char HEX[] = "0123456789abcdef";
          out += "\\u00";
          out += HEX[(c >> 4) & 15];
          out += HEX[c & 15];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

Values::Values(const PluginInfo& plugin, const TaskInfo& task) : plugin_(plugin) {
  for (const auto& name : task.argTypes) args_.push_back(parseType(name));
  slots_ = slotsOf(args_);
  result_ = parseType(task.resultType);
  json_.setMaxNestingDepth(64);
}

bool Values::lineIsText() const {
  return args_.size() == 1 &&
         (args_[0].scalar() || args_[0].kind == Type::TEXT || args_[0].kind == Type::DATA);
}

capnp::StructSchema Values::structSchema(const Type& type) {
  if (!schemasLoaded_) {
    schemasLoaded_ = true;
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

std::uint64_t Values::wordFromText(const Type& type, std::string_view raw) {
  std::string_view text = trim(raw);
  auto bad = [&](const char* what) -> std::uint64_t {
    throw ValueError(quoted(raw) + " is not " + what + " (" + type.name + ")");
  };
  const char* end = text.data() + text.size();
  switch (type.kind) {
    case Type::BOOL:
      if (text == "true" || text == "1") return 1;
      if (text == "false" || text == "0") return 0;
      return bad("a boolean: true, false, 1 or 0");
    case Type::INT: {
      std::int64_t v = 0;
      auto r = std::from_chars(text.data(), end, v);
      if (text.empty() || r.ptr != end || r.ec != std::errc()) {
        return bad(r.ec == std::errc::result_out_of_range ? "in range" : "an integer");
      }
      const std::int64_t lo = type.bits == 64 ? std::numeric_limits<std::int64_t>::min()
                                              : -(std::int64_t{1} << (type.bits - 1));
      const std::int64_t hi = type.bits == 64 ? std::numeric_limits<std::int64_t>::max()
                                              : (std::int64_t{1} << (type.bits - 1)) - 1;
      if (v < lo || v > hi) return bad("in range");
      return static_cast<std::uint64_t>(v);
    }
    case Type::UINT: {
      std::uint64_t v = 0;
      auto r = std::from_chars(text.data(), end, v);
      if (text.empty() || r.ptr != end || r.ec != std::errc()) {
        return bad(r.ec == std::errc::result_out_of_range ? "in range" : "an unsigned integer");
      }
      if (type.bits < 64 && v >= (std::uint64_t{1} << type.bits)) return bad("in range");
      return v;
    }
    case Type::FLOAT: {
      double v = 0;
      auto r = std::from_chars(text.data(), end, v);
      if (text.empty() || r.ptr != end || r.ec != std::errc()) return bad("a number");
      if (type.bits == 32) return std::bit_cast<std::uint32_t>(static_cast<float>(v));
      return std::bit_cast<std::uint64_t>(v);
    }
    default:
      return bad("a scalar");
  }
}

std::uint64_t Values::wordFromJson(const Type& type, capnp::JsonValue::Reader json) {
  auto bad = [&]() -> std::uint64_t {
    throw ValueError(std::string("expected ") + type.name + ", got " + jsonKind(json.which()));
  };
  switch (json.which()) {
    case capnp::JsonValue::BOOLEAN:
      if (type.kind != Type::BOOL) return bad();
      return json.getBoolean() ? 1 : 0;
    case capnp::JsonValue::STRING: {
      if (type.kind == Type::BOOL) return bad();
      auto s = json.getString();
      if (type.kind == Type::FLOAT) {
        if (s == "NaN") return wordFromText(type, "nan");
        if (s == "Infinity") return wordFromText(type, "inf");
        if (s == "-Infinity") return wordFromText(type, "-inf");
      }
      return wordFromText(type, std::string_view(s.begin(), s.size()));
    }
    case capnp::JsonValue::NUMBER: {
      double v = json.getNumber();
      if (type.kind == Type::BOOL) return bad();
      if (type.kind == Type::FLOAT) {
        if (type.bits == 32) return std::bit_cast<std::uint32_t>(static_cast<float>(v));
        return std::bit_cast<std::uint64_t>(v);
      }
      constexpr double EXACT = 9007199254740992.0;  // 2^53: beyond, give integers as strings
      if (v != std::floor(v) || std::abs(v) > EXACT) {
        throw ValueError("expected " + type.name +
                         ", got a number that is not an exact integer (give integers past 2^53 "
                         "as strings)");
      }
      char buf[32];
      auto r = std::to_chars(buf, buf + sizeof buf, static_cast<std::int64_t>(v));
      return wordFromText(type, std::string_view(buf, static_cast<std::size_t>(r.ptr - buf)));
    }
    default:
      return bad();
  }
}

void Values::parseJson(std::string_view text, capnp::MallocMessageBuilder& message) {
  auto root = message.initRoot<capnp::JsonValue>();
  try {
    json_.decodeRaw(kj::ArrayPtr<const char>(text.data(), text.size()), root);
  } catch (const kj::Exception& e) {
    throw ValueError("not valid JSON: " + quoted(text) + " (" + e.getDescription().cStr() + ")");
  }
}

void Values::fromText(const Type& type, std::string_view text, capnp::AnyStruct::Builder tuple,
                      unsigned slot) {
  if (type.scalar()) return putWord(tuple, slot, wordFromText(type, text));
  auto out = tuple.getPointerSection()[slot];
  if (type.kind == Type::TEXT) return codec::writeText(out, text);
  if (type.kind == Type::DATA) {
    return codec::writeData(out, std::as_bytes(std::span(text.data(), text.size())));
  }
  capnp::MallocMessageBuilder message;
  parseJson(text, message);
  pointerFromJson(type, message.getRoot<capnp::JsonValue>(), out);
}

void Values::fromJson(const Type& type, capnp::JsonValue::Reader json,
                      capnp::AnyStruct::Builder tuple, unsigned slot) {
  if (type.scalar()) return putWord(tuple, slot, wordFromJson(type, json));
  pointerFromJson(type, json, tuple.getPointerSection()[slot]);
}

void Values::pointerFromJson(const Type& type, capnp::JsonValue::Reader json,
                             capnp::AnyPointer::Builder out) {
  auto expect = [&](capnp::JsonValue::Which which, const char* what) {
    if (json.which() != which) {
      throw ValueError("expected " + type.name + " as " + what + ", got " + jsonKind(json.which()));
    }
  };
  switch (type.kind) {
    case Type::TEXT: {
      expect(capnp::JsonValue::STRING, "a string");
      auto s = json.getString();
      return codec::writeText(out, std::string_view(s.begin(), s.size()));
    }
    case Type::DATA: {
      if (json.isString()) {
        auto s = json.getString();
        return codec::writeData(out, std::as_bytes(std::span(s.begin(), s.size())));
      }
      expect(capnp::JsonValue::ARRAY, "an array of byte values");
      auto array = json.getArray();
      auto data = out.initAs<capnp::Data>(array.size());
      const Type byte{Type::UINT, 8, {}, "uint8", 0};
      for (unsigned i = 0; i < array.size(); ++i) {
        data[i] = static_cast<kj::byte>(wordFromJson(byte, array[i]));
      }
      return;
    }
    case Type::LIST: {
      expect(capnp::JsonValue::ARRAY, "an array");
      auto array = json.getArray();
      const Type& element = type.elements[0];
      if (element.scalar()) {
        auto list = out.initAsAnyList(listElementSize(element), array.size());
        for (unsigned i = 0; i < array.size(); ++i) {
          setListWord(element, list, i, wordFromJson(element, array[i]));
        }
      } else {
        auto list = out.initAsAnyList(capnp::ElementSize::POINTER, array.size())
                        .as<capnp::List<capnp::AnyPointer>>();
        for (unsigned i = 0; i < array.size(); ++i) pointerFromJson(element, array[i], list[i]);
      }
      return;
    }
    case Type::TUPLE: {
      expect(capnp::JsonValue::ARRAY, "an array");
      auto array = json.getArray();
      if (array.size() != type.elements.size()) {
        throw ValueError("expected " + type.name + " as an array of " +
                         std::to_string(type.elements.size()) + " values, got " +
                         std::to_string(array.size()));
      }
      auto shape = shapeOf(type.elements);
      auto tuple = out.initAsAnyStruct(shape.dataWords, shape.pointers);
      auto slots = slotsOf(type.elements);
      for (unsigned i = 0; i < array.size(); ++i)
        fromJson(type.elements[i], array[i], tuple, slots[i]);
      return;
    }
    case Type::STRUCT: {
      capnp::StructSchema schema = structSchema(type);
      expect(capnp::JsonValue::OBJECT, "an object");
      try {
        json_.decode(json, out.initAs<capnp::DynamicStruct>(schema));
      } catch (const kj::Exception& e) {
        throw ValueError("not a " + type.name + ": " + e.getDescription().cStr());
      }
      return;
    }
    default:
      return;  // scalars are written by fromJson
  }
}

void Values::argsFromText(const std::vector<std::string>& texts, capnp::AnyStruct::Builder out) {
  for (unsigned i = 0; i < args_.size(); ++i) {
    try {
      fromText(args_[i], texts[i], out, slots_[i]);
    } catch (const ValueError& e) {
      throw ValueError("argument " + std::to_string(i + 1) + ": " + e.what());
    }
  }
}

void Values::argsFromLine(std::string_view line, capnp::AnyStruct::Builder out) {
  if (lineIsText()) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return fromText(args_[0], line, out, slots_[0]);
  }
  if (args_.empty() && trim(line).empty()) return;
  capnp::MallocMessageBuilder message;
  parseJson(line, message);
  auto json = message.getRoot<capnp::JsonValue>().asReader();
  if (args_.size() == 1) return fromJson(args_[0], json, out, slots_[0]);
  if (!json.isArray() || json.getArray().size() != args_.size()) {
    throw ValueError("expected a JSON array of the task's " + std::to_string(args_.size()) +
                     " arguments");
  }
  auto array = json.getArray();
  for (unsigned i = 0; i < args_.size(); ++i) {
    try {
      fromJson(args_[i], array[i], out, slots_[i]);
    } catch (const ValueError& e) {
      throw ValueError("argument " + std::to_string(i + 1) + ": " + e.what());
    }
  }
}

void Values::resultText(capnp::AnyStruct::Reader tuple, std::string& out) {
  if (result_.scalar()) return appendScalar(result_, getWord(tuple, 0), out, false);
  auto in = tuple.getPointerSection()[0];
  if (result_.kind == Type::TEXT) {
    out += codec::readText(in);
  } else if (result_.kind == Type::DATA) {
    auto bytes = codec::readData(in);
    out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  } else {
    pointerJson(result_, in, out);
  }
}

void Values::resultJson(capnp::AnyStruct::Reader tuple, std::string& out) {
  writeJson(result_, tuple, 0, out);
}

void Values::writeJson(const Type& type, capnp::AnyStruct::Reader tuple, unsigned slot,
                       std::string& out) {
  if (type.scalar()) return appendScalar(type, getWord(tuple, slot), out, true);
  pointerJson(type, tuple.getPointerSection()[slot], out);
}

void Values::pointerJson(const Type& type, capnp::AnyPointer::Reader in, std::string& out) {
  switch (type.kind) {
    case Type::TEXT:
      return appendJsonString(codec::readText(in), out);
    case Type::DATA: {
      out += '[';
      bool first = true;
      for (std::byte b : codec::readData(in)) {
        if (!first) out += ',';
        first = false;
        out += std::to_string(static_cast<unsigned>(b));
      }
      out += ']';
      return;
    }
    case Type::LIST: {
      const Type& element = type.elements[0];
      out += '[';
      if (element.scalar()) {
        codec::expectList(in, listElementSize(element), "a list of scalars of that size");
        auto list = in.getAs<capnp::AnyList>();
        for (unsigned i = 0; i < list.size(); ++i) {
          if (i > 0) out += ',';
          appendScalar(element, listWord(element, list, i), out, true);
        }
      } else {
        auto list = in.getAs<capnp::AnyList>();
        if (list.size() > 0 && list.getElementSize() != capnp::ElementSize::POINTER) {
          throw DecodeError("expected a list of pointers");
        }
        auto pointers = list.as<capnp::List<capnp::AnyPointer>>();
        for (unsigned i = 0; i < pointers.size(); ++i) {
          if (i > 0) out += ',';
          pointerJson(element, pointers[i], out);
        }
      }
      out += ']';
      return;
    }
    case Type::TUPLE: {
      auto tuple = codec::readStruct(in);
      auto shape = shapeOf(type.elements);
      codec::checkTupleSize(tuple, shape.dataWords, shape.pointers);
      auto slots = slotsOf(type.elements);
      out += '[';
      for (unsigned i = 0; i < type.elements.size(); ++i) {
        if (i > 0) out += ',';
        writeJson(type.elements[i], tuple, slots[i], out);
      }
      out += ']';
      return;
    }
    case Type::STRUCT: {
      capnp::StructSchema schema = structSchema(type);
      if (!in.isNull() && !in.isStruct()) throw DecodeError("expected a struct pointer");
      auto value = in.getAs<capnp::DynamicStruct>(schema);
      kj::String text = json_.encode(capnp::DynamicValue::Reader(value), capnp::Type(schema));
      out.append(text.begin(), text.size());
      return;
    }
    default:
      return;
  }
}

}  // namespace plugpool::cli
