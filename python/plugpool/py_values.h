// py_values.h — Python's front end of values/convert.h: Python objects to and from task values,
// by the task's declared types. Internal to the module. REQUIRES the GIL throughout.
//
//   bool        only bool (True/False); an int is not a bool
//   ints        int, or anything with __index__ (numpy integers), not bool; range-checked:
//               OverflowError
//   floats      float, int, or anything with __float__ (numpy floats), not bool or str
//   text        str (UTF-8 on the wire)
//   data        any object with the buffer protocol (bytes, bytearray, memoryview, numpy
//               arrays), read in place and copied once, into the message
//   list<T>     any iterable but str, bytes and dict; list<(K, V)> also a dict (its items)
//   (A, B, …)   a tuple or other sequence of exactly that many values
//   struct X    a dict of field names (nested structs as dicts, lists as iterables, enums by
//               name or number)
// Results: bool, int, float, str (invalid UTF-8 as surrogate escapes), bytes (a data result of
// LARGE_DATA bytes or more: a read-only memoryview of it where it arrived, no copy), list,
// tuple, dict (structs). A value that does not fit its type is a TypeError, or an
// OverflowError for a number out of range, raised before anything is sent.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include <capnp/dynamic.h>
#include <pybind11/pybind11.h>

#include <plugpool/dynamic.h>

#include "types.h"

namespace plugpool::python {

namespace py = pybind11;
using values::Type;

inline constexpr std::size_t LARGE_DATA = std::size_t{1} << 20;

// Raises OverflowError (TypeError for `type`) with `message`.
[[noreturn]] void raise(PyObject* type, const std::string& message);

struct PyFrom {
  using Value = py::object;
  std::uint64_t word(const Type& type, const Value& value);
  std::string_view text(const Type& type, const Value& value);
  void data(const Type& type, const Value& value, capnp::AnyPointer::Builder out);
  std::vector<Value> elements(const Type& type, const Value& value);
  void structValue(const Type& type, capnp::StructSchema schema, const Value& value,
                   capnp::DynamicStruct::Builder out);
};

struct PyTo {
  using Value = py::object;
  // The result being decoded (null: data results are copied). A large data result's
  // memoryview keeps a share of its message, taken only then.
  const DynamicResult* result = nullptr;

  Value scalar(const Type& type, std::uint64_t word);
  Value text(const Type& type, std::string_view text);
  Value data(const Type& type, std::span<const std::byte> bytes);
  template <typename Each>
  Value list(const Type&, unsigned n, Each&& each) {
    py::list out(n);
    for (unsigned i = 0; i < n; ++i) out[i] = each(i);
    return out;
  }
  template <typename Each>
  Value tuple(const Type&, unsigned n, Each&& each) {
    py::tuple out(n);
    for (unsigned i = 0; i < n; ++i) out[i] = each(i);
    return out;
  }
  Value structValue(const Type& type, capnp::DynamicStruct::Reader value);
};

// Registers the class behind large data results (a buffer that keeps its message).
void defineBuffer(py::module_& m);

}  // namespace plugpool::python
