#include "values.h"

#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include <capnp/dynamic.h>
#include <kj/exception.h>

#include "convert.h"
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
    case Type::INT:
      out.append(buf, std::to_chars(buf, buf + sizeof buf, values::signedOf(t, word)).ptr);
      return;
    case Type::UINT:
      out.append(buf, std::to_chars(buf, buf + sizeof buf, values::unsignedOf(t, word)).ptr);
      return;
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

// A Cap'n Proto type's name in messages, as the canonical names say it: "float64",
// "list<text>", "struct Point", "enum Color".
std::string typeName(capnp::Type type) {
  switch (type.which()) {
    case capnp::schema::Type::VOID:
      return "void";
    case capnp::schema::Type::BOOL:
      return "bool";
    case capnp::schema::Type::INT8:
      return "int8";
    case capnp::schema::Type::INT16:
      return "int16";
    case capnp::schema::Type::INT32:
      return "int32";
    case capnp::schema::Type::INT64:
      return "int64";
    case capnp::schema::Type::UINT8:
      return "uint8";
    case capnp::schema::Type::UINT16:
      return "uint16";
    case capnp::schema::Type::UINT32:
      return "uint32";
    case capnp::schema::Type::UINT64:
      return "uint64";
    case capnp::schema::Type::FLOAT32:
      return "float32";
    case capnp::schema::Type::FLOAT64:
      return "float64";
    case capnp::schema::Type::TEXT:
      return "text";
    case capnp::schema::Type::DATA:
      return "data";
    case capnp::schema::Type::LIST:
      return "list<" + typeName(type.asList().getElementType()) + ">";
    case capnp::schema::Type::ENUM:
      return std::string("enum ") + type.asEnum().getShortDisplayName().cStr();
    case capnp::schema::Type::STRUCT:
      return values::structName(type.asStruct());
    case capnp::schema::Type::INTERFACE:
      return "interface";
    default:
      return "AnyPointer";
  }
}

// The parsed Type of a scalar Cap'n Proto type, for the word conversions; nullopt if it is
// not a scalar.
std::optional<Type> scalarType(capnp::Type type) {
  switch (type.which()) {
    case capnp::schema::Type::BOOL:
      return Type{Type::BOOL, 1, {}, "bool", 0};
    case capnp::schema::Type::INT8:
    case capnp::schema::Type::INT16:
    case capnp::schema::Type::INT32:
    case capnp::schema::Type::INT64:
    case capnp::schema::Type::UINT8:
    case capnp::schema::Type::UINT16:
    case capnp::schema::Type::UINT32:
    case capnp::schema::Type::UINT64:
    case capnp::schema::Type::FLOAT32:
    case capnp::schema::Type::FLOAT64:
      return parseType(typeName(type));
    default:
      return std::nullopt;
  }
}

// A ValueError for the value at field path `path` ("" at the top of a struct value).
ValueError at(const std::string& path, const std::string& message) {
  return ValueError(path.empty() ? message : "field " + path + ": " + message);
}

// A JSON number as JSON writes it (for messages).
std::string numberText(double v) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// What is wrong with text capnp::JsonCodec::decodeRaw refused, in plain words: its
// exceptions' descriptions carry the failed check ("expected !exhausted(); JSON message ends
// prematurely.", "expected endPtr == s.end() [e == ]; String does not contain valid floating
// number; s = 1e"), which says nothing to a user.
std::string plainJsonError(std::string_view description) {
  static const struct {
    std::string_view says, means;
  } KNOWN[] = {
      {"ends prematurely", "it ends before the value does"},
      {"Input remains after parsing", "more follows the value"},
      {"Unexpected input", "unexpected characters"},
      {"nested too deeply", "nested more than 64 deep"},
      {"Invalid escape", "a string has an invalid \\ escape"},
      {"Invalid hex digit", "a \\u escape has a character that is not a hex digit"},
      {"Expected number", "a number has no digits"},
  };
  for (const auto& known : KNOWN) {
    if (description.find(known.says) != std::string_view::npos) return std::string(known.means);
  }
  constexpr std::string_view NOT_A_NUMBER = "valid floating number; s = ";
  if (auto at = description.find(NOT_A_NUMBER); at != std::string_view::npos) {
    return std::string(description.substr(at + NOT_A_NUMBER.size())) + " is not a number";
  }
  // Anything else: its last clause, without the check before it.
  if (auto at = description.rfind("; "); at != std::string_view::npos) {
    description.remove_prefix(at + 2);
  }
  if (!description.empty() && description.back() == '.') description.remove_suffix(1);
  return std::string(description);
}

// The words of `line`, split at spaces and tabs.
std::vector<std::string_view> wordsOf(std::string_view line) {
  std::vector<std::string_view> words;
  for (line = trim(line); !line.empty(); line = trim(line)) {
    const std::size_t end = std::min(line.find(' '), line.find('\t'));
    words.push_back(line.substr(0, end));
    line.remove_prefix(std::min(end, line.size()));
  }
  return words;
}

}  // namespace

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

// JSON values into the wire (values/convert.h's From).
struct JsonFrom {
  using Value = capnp::JsonValue::Reader;
  Values& values;

  static void expect(const Type& type, const Value& json, capnp::JsonValue::Which which,
                     const char* what) {
    if (json.which() != which) {
      throw ValueError("expected " + type.name + " as " + what + ", got " + jsonKind(json.which()));
    }
  }
  std::uint64_t word(const Type& type, const Value& json) {
    return values.wordFromJson(type, json);
  }
  std::string_view text(const Type& type, const Value& json) {
    expect(type, json, capnp::JsonValue::STRING, "a string");
    auto s = json.getString();
    return {s.begin(), s.size()};
  }
  void data(const Type& type, const Value& json, capnp::AnyPointer::Builder out) {
    if (json.isString()) {
      auto s = json.getString();
      return codec::writeData(out, std::as_bytes(std::span(s.begin(), s.size())));
    }
    expect(type, json, capnp::JsonValue::ARRAY, "an array of byte values");
    auto array = json.getArray();
    auto bytes = out.initAs<capnp::Data>(array.size());
    const Type byte{Type::UINT, 8, {}, "uint8", 0};
    for (unsigned i = 0; i < array.size(); ++i) {
      bytes[i] = static_cast<kj::byte>(values.wordFromJson(byte, array[i]));
    }
  }
  std::vector<Value> elements(const Type& type, const Value& json) {
    expect(type, json, capnp::JsonValue::ARRAY, "an array");
    std::vector<Value> members;
    for (auto member : json.getArray()) members.push_back(member);
    return members;
  }
  void structValue(const Type&, capnp::StructSchema, const Value& json,
                   capnp::DynamicStruct::Builder out) {
    fillStruct(out, json, "");
  }

  // Struct values, field by field through the plugin's schema (not capnp::JsonCodec, which
  // ignores unknown fields and whose errors name neither the field nor the form): `json` must
  // be an object whose every name is a field of `out` (values::checkFieldNames), with at most
  // one member of a union, each value in the form the field's type takes at the top level
  // (a null leaves a pointer field unset). `path` is where `out` is, for messages: "" at the
  // top, then "points[0]", "points[0].x".
  void fillStruct(capnp::DynamicStruct::Builder out, const Value& json, const std::string& path) {
    const capnp::StructSchema schema = out.getSchema();
    if (!json.isObject()) {
      throw at(path, "expected " + values::structName(schema) + " as an object, got " +
                         jsonKind(json.which()));
    }
    std::vector<std::string> names;
    for (auto member : json.getObject()) names.emplace_back(member.getName().cStr());
    try {
      values::checkFieldNames(schema, names);
    } catch (const ValueError& e) {
      throw at(path, e.what());
    }
    std::optional<std::string> unionMember;
    for (auto member : json.getObject()) {
      const capnp::StructSchema::Field field =
          KJ_ASSERT_NONNULL(schema.findFieldByName(member.getName()));  // checked above
      const std::string name = member.getName().cStr();
      if (field.getProto().getDiscriminantValue() != capnp::schema::Field::NO_DISCRIMINANT) {
        if (unionMember) {
          throw at(path, *unionMember + " and " + name + " are members of one union: give one");
        }
        unionMember = name;
      }
      setField(out, field, member.getValue(), path.empty() ? name : path + "." + name);
    }
  }

  void setField(capnp::DynamicStruct::Builder out, capnp::StructSchema::Field field,
                const Value& json, const std::string& path) {
    const capnp::Type type = field.getType();
    if (field.getProto().isGroup()) {
      return fillStruct(out.init(field).as<capnp::DynamicStruct>(), json, path);
    }
    if (json.isNull() && (type.isText() || type.isData() || type.isList() || type.isStruct())) {
      return out.clear(field);  // unset (and, for a union member, the one that is set)
    }
    switch (type.which()) {
      case capnp::schema::Type::STRUCT:
        return fillStruct(out.init(field).as<capnp::DynamicStruct>(), json, path);
      case capnp::schema::Type::LIST:
        expectArray(type, json, path);
        return fillList(out.init(field, json.getArray().size()).as<capnp::DynamicList>(), json,
                        path);
      default: {
        std::vector<kj::byte> bytes;
        out.set(field, leaf(type, json, bytes, path));
      }
    }
  }

  void fillList(capnp::DynamicList::Builder out, const Value& json, const std::string& path) {
    const capnp::Type element = out.getSchema().getElementType();
    auto members = json.getArray();
    for (unsigned i = 0; i < members.size(); ++i) {
      const std::string at = path + "[" + std::to_string(i) + "]";
      const Value member = members[i];
      if (member.isNull() &&
          (element.isText() || element.isData() || element.isList() || element.isStruct())) {
        continue;  // left unset
      }
      switch (element.which()) {
        case capnp::schema::Type::STRUCT:
          fillStruct(out[i].as<capnp::DynamicStruct>(), member, at);
          break;
        case capnp::schema::Type::LIST:
          expectArray(element, member, at);
          fillList(out.init(i, member.getArray().size()).as<capnp::DynamicList>(), member, at);
          break;
        default: {
          std::vector<kj::byte> bytes;
          out.set(i, leaf(element, member, bytes, at));
        }
      }
    }
  }

  static void expectArray(capnp::Type type, const Value& json, const std::string& path) {
    if (!json.isArray()) {
      throw at(path, "expected " + typeName(type) + " as an array, got " + jsonKind(json.which()));
    }
  }

  // A scalar, enum, text or data value of `type`; text points into `json`, data into `bytes`.
  capnp::DynamicValue::Reader leaf(capnp::Type type, const Value& json,
                                   std::vector<kj::byte>& bytes, const std::string& path) {
    if (auto scalar = scalarType(type)) {
      std::uint64_t word;
      try {
        word = values.wordFromJson(*scalar, json);
      } catch (const ValueError& e) {
        throw at(path, e.what());
      }
      switch (scalar->kind) {
        case Type::BOOL:
          return word != 0;
        case Type::INT:
          return values::signedOf(*scalar, word);
        case Type::UINT:
          return values::unsignedOf(*scalar, word);
        default:
          return values::floatOf(*scalar, word);
      }
    }
    switch (type.which()) {
      case capnp::schema::Type::VOID:
        if (!json.isNull())
          throw at(path, std::string("expected null (void), got ") + jsonKind(json.which()));
        return capnp::VOID;
      case capnp::schema::Type::TEXT:
        if (!json.isString()) {
          throw at(path, std::string("expected text as a string, got ") + jsonKind(json.which()));
        }
        return json.getString();
      case capnp::schema::Type::DATA:
        if (json.isString()) {
          auto s = json.getString();
          return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.begin()), s.size());
        }
        if (!json.isArray()) {
          throw at(path, std::string("expected data as an array of byte values or a string, got ") +
                             jsonKind(json.which()));
        }
        for (unsigned i = 0; i < json.getArray().size(); ++i) {
          const Type byte{Type::UINT, 8, {}, "uint8", 0};
          try {
            bytes.push_back(static_cast<kj::byte>(values.wordFromJson(byte, json.getArray()[i])));
          } catch (const ValueError& e) {
            throw at(path + "[" + std::to_string(i) + "]", e.what());
          }
        }
        return capnp::Data::Reader(bytes.data(), bytes.size());
      case capnp::schema::Type::ENUM: {
        const capnp::EnumSchema schema = type.asEnum();
        if (json.isString()) {
          KJ_IF_MAYBE (enumerant, schema.findEnumerantByName(json.getString())) {
            return capnp::DynamicEnum(*enumerant);
          }
        }
        std::string names;
        const auto enumerants = schema.getEnumerants();
        for (unsigned i = 0; i < enumerants.size(); ++i) {
          if (i > 0) names += i + 1 == enumerants.size() ? " or " : ", ";
          names += enumerants[i].getProto().getName().cStr();
        }
        const std::string what =
            std::string("a ") + schema.getShortDisplayName().cStr() + ": " + names;
        if (json.isString()) throw at(path, quoted(json.getString().cStr()) + " is not " + what);
        if (json.isNumber()) throw at(path, numberText(json.getNumber()) + " is not " + what);
        throw at(path, "expected " + what + ", got " + jsonKind(json.which()));
      }
      default:
        throw at(path, "has type " + typeName(type) + ", which the command line cannot convert");
    }
  }
};

// Wire values as JSON, appended to `out` (values/convert.h's To).
struct JsonTo {
  using Value = void;
  Values& values;
  std::string& out;

  void scalar(const Type& type, std::uint64_t word) { appendScalar(type, word, out, true); }
  void text(const Type&, std::string_view text) { appendJsonString(text, out); }
  void data(const Type&, std::span<const std::byte> bytes) {
    out += '[';
    bool first = true;
    for (std::byte b : bytes) {
      if (!first) out += ',';
      first = false;
      out += std::to_string(static_cast<unsigned>(b));
    }
    out += ']';
  }
  template <typename Each>
  void list(const Type&, unsigned n, Each&& each) {
    out += '[';
    for (unsigned i = 0; i < n; ++i) {
      if (i > 0) out += ',';
      each(i);
    }
    out += ']';
  }
  template <typename Each>
  void tuple(const Type& type, unsigned n, Each&& each) {
    list(type, n, each);
  }
  void structValue(const Type&, capnp::DynamicStruct::Reader value) {
    kj::String text =
        values.json_.encode(capnp::DynamicValue::Reader(value), capnp::Type(value.getSchema()));
    out.append(text.begin(), text.size());
  }
};

Values::Values(const PluginInfo& plugin, const TaskInfo& task) : plugin_(plugin), schemas_(plugin) {
  for (const auto& name : task.argTypes) args_.push_back(parseType(name));
  slots_ = slotsOf(args_);
  result_ = parseType(task.resultType);
  json_.setMaxNestingDepth(64);
}

bool Values::lineIsText() const {
  return args_.size() == 1 &&
         (args_[0].scalar() || args_[0].kind == Type::TEXT || args_[0].kind == Type::DATA);
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
      try {
        return values::signedWord(type, v);
      } catch (const ValueError&) {
        return bad("in range");
      }
    }
    case Type::UINT: {
      std::uint64_t v = 0;
      auto r = std::from_chars(text.data(), end, v);
      if (text.empty() || r.ptr != end || r.ec != std::errc()) {
        return bad(r.ec == std::errc::result_out_of_range ? "in range" : "an unsigned integer");
      }
      try {
        return values::unsignedWord(type, v);
      } catch (const ValueError&) {
        return bad("in range");
      }
    }
    case Type::FLOAT: {
      double v = 0;
      auto r = std::from_chars(text.data(), end, v);
      if (text.empty() || r.ptr != end || r.ec != std::errc()) return bad("a number");
      return values::floatWord(type, v);
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
      if (type.kind == Type::FLOAT) return values::floatWord(type, v);
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
    throw ValueError("not valid JSON: " + quoted(text) + " (" +
                     plainJsonError(e.getDescription().cStr()) + ")");
  }
}

void Values::fromText(const Type& type, std::string_view text, capnp::AnyStruct::Builder tuple,
                      unsigned slot) {
  if (type.scalar()) return values::putWord(tuple, slot, wordFromText(type, text));
  auto out = tuple.getPointerSection()[slot];
  if (type.kind == Type::TEXT) return codec::writeText(out, text);
  if (type.kind == Type::DATA) {
    return codec::writeData(out, std::as_bytes(std::span(text.data(), text.size())));
  }
  capnp::MallocMessageBuilder message;
  parseJson(text, message);
  JsonFrom from{*this};
  values::encodePointer(from, schemas_, type, message.getRoot<capnp::JsonValue>().asReader(), out);
}

void Values::fromJson(const Type& type, capnp::JsonValue::Reader json,
                      capnp::AnyStruct::Builder tuple, unsigned slot) {
  JsonFrom from{*this};
  values::encode(from, schemas_, type, json, tuple, slot);
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
  // What the line should be, for messages.
  std::string signature = "(";
  for (const Type& t : args_) signature += (signature.size() > 1 ? ", " : "") + t.name;
  signature += ")";
  const std::string arguments =
      "the task's " + std::to_string(args_.size()) + " arguments " + signature;
  if (trim(line).empty()) {
    throw ValueError("an empty line; expected " + (args_.size() == 1
                                                       ? args_[0].name + " as JSON"
                                                       : "a JSON array of " + arguments));
  }
  capnp::MallocMessageBuilder message;
  try {
    parseJson(line, message);
  } catch (const ValueError& e) {
    // Words where a JSON array was meant ("a b" for two arguments): show the array.
    const bool list = args_.size() == 1 && args_[0].kind == Type::LIST;
    if (trim(line).front() == '[' || (args_.size() < 2 && !list)) throw;
    std::string hint =
        std::string(e.what()) + "; " +
        (list ? "a " + args_[0].name + " is a JSON array" : arguments + " go in a JSON array");
    const auto words = wordsOf(line);
    if (list || words.size() == args_.size()) {
      hint += ": [";
      for (std::size_t i = 0; i < words.size(); ++i) {
        if (i > 0) hint += ", ";
        const Type& type = list ? args_[0].elements[0] : args_[i];
        try {
          if (!type.scalar()) throw ValueError("not a scalar");
          appendScalar(type, wordFromText(type, words[i]), hint, true);
        } catch (const ValueError&) {
          appendJsonString(words[i], hint);
        }
      }
      hint += "]";
    }
    throw ValueError(hint);
  }
  auto json = message.getRoot<capnp::JsonValue>().asReader();
  if (args_.size() == 1) return fromJson(args_[0], json, out, slots_[0]);
  if (!json.isArray() || json.getArray().size() != args_.size()) {
    throw ValueError("expected a JSON array of " + arguments + ", got " +
                     (json.isArray() ? "an array of " + std::to_string(json.getArray().size())
                                     : std::string(jsonKind(json.which()))));
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
  if (result_.scalar()) return appendScalar(result_, values::getWord(tuple, 0), out, false);
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
  JsonTo to{*this, out};
  values::decode(to, schemas_, result_, tuple, 0);
}

void Values::pointerJson(const Type& type, capnp::AnyPointer::Reader in, std::string& out) {
  JsonTo to{*this, out};
  values::decodePointer(to, schemas_, type, in);
}

}  // namespace plugpool::cli
