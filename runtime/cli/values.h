// values.h — the plugpool command line's conversions between text, JSON and task values,
// driven by the canonical type names of a task's manifest (plugpool/codec.h). Internal to
// the CLI.
//
// Text forms (a command-line argument, or one input line of a one-argument task):
//   bool              true, false, 1, 0
//   int8 … uint64     decimal, range-checked for the type
//   float32, float64  decimal or exponent notation, nan, inf
//   text              the string as it is
//   data              the string's bytes as they are
//   anything else     its JSON form (below)
// JSON forms (a JSON input line, or a composite value in text form):
//   bool              true / false
//   integers          a number with no fraction, or a string of decimal digits (needed past
//                     2^53, where JSON numbers lose precision; Cap'n Proto's JSON codec
//                     writes 64-bit integers as such strings)
//   floats            a number, or "NaN", "Infinity", "-Infinity"
//   text              a string
//   data              an array of byte values (as Cap'n Proto's JSON codec), or a string
//                     (its UTF-8 bytes)
//   list<T>           an array
//   (A, B, …)         an array of exactly that many values
//   struct X@0x…      an object of its fields by name, each in its type's form above (an enum
//                     by enumerant name, a group or union as an object of its members, at
//                     most one of a union; null leaves a pointer field unset), through the
//                     plugin's schema. A name that is not a field is refused
//                     (values::checkFieldNames); errors name the field ("field points[0].x:").
// Output: results print in the same forms; writeJson writes integers as bare numbers, floats
// that are not finite as the strings above, and data as an array of byte values; struct values
// are written by capnp::JsonCodec (64-bit integers as strings), in a form they are read back in.
//
// The traversal of lists, tuples and structs is values/convert.h's, shared with every other
// front end; this file says how each value is written in text and JSON. Every conversion
// error is a ValueError whose what() names the problem for a human.
// Thread safety: a Values object is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <capnp/any.h>
#include <capnp/compat/json.h>
#include <capnp/message.h>

#include "plugpool/manifest.h"
#include "types.h"

namespace plugpool::cli {

using values::parseType;
using values::Type;
using values::ValueError;

// Converts values of the types of one task, using the struct schemas `plugin` ships.
class Values {
 public:
  // Throws ValueError if the task's type names do not parse. Struct types whose schema the
  // plugin does not ship are reported when a value of them is converted.
  Values(const PluginInfo& plugin, const TaskInfo& task);

  const std::vector<Type>& argTypes() const { return args_; }
  const Type& resultType() const { return result_; }

  // Whether an input line is one argument in text form (a one-argument task whose argument is
  // a scalar, text or data) rather than a JSON array of the arguments.
  bool lineIsText() const;

  // Writes argument tuple `out` (already sized for the task) from one text form per argument.
  // Throws ValueError naming the argument.
  void argsFromText(const std::vector<std::string>& texts, capnp::AnyStruct::Builder out);
  // Writes argument tuple `out` from one input line: its text form if lineIsText(), else a
  // JSON array of the arguments (or, for a task of one argument, that argument's JSON form).
  void argsFromLine(std::string_view line, capnp::AnyStruct::Builder out);

  // Appends the result held by result tuple `tuple` in text form (text and data as they
  // are, composite values as one line of JSON).
  void resultText(capnp::AnyStruct::Reader tuple, std::string& out);
  // Appends the result held by `tuple` as JSON.
  void resultJson(capnp::AnyStruct::Reader tuple, std::string& out);

 private:
  friend struct JsonFrom;
  friend struct JsonTo;
  void fromText(const Type& type, std::string_view text, capnp::AnyStruct::Builder tuple,
                unsigned slot);
  void fromJson(const Type& type, capnp::JsonValue::Reader json, capnp::AnyStruct::Builder tuple,
                unsigned slot);
  std::uint64_t wordFromText(const Type& type, std::string_view text);
  std::uint64_t wordFromJson(const Type& type, capnp::JsonValue::Reader json);
  void parseJson(std::string_view text, capnp::MallocMessageBuilder& message);
  void pointerJson(const Type& type, capnp::AnyPointer::Reader in, std::string& out);

  const PluginInfo& plugin_;
  std::vector<Type> args_;
  std::vector<unsigned> slots_;  // each argument's index within its section
  Type result_;
  values::Schemas schemas_;
  capnp::JsonCodec json_;
};

// Appends `text` as a JSON string.
void appendJsonString(std::string_view text, std::string& out);

}  // namespace plugpool::cli
