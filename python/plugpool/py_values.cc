#include "py_values.h"

#include <capnp/schema.h>

#include <string>

namespace plugpool::python {

namespace {

std::string typeName(py::handle value) {
  return Py_TYPE(value.ptr())->tp_name;
}

[[noreturn]] void wrongType(const std::string& expected, py::handle value) {
  raise(PyExc_TypeError, "expected " + expected + ", got " + typeName(value));
}

bool isStringLike(py::handle value) {
  return PyUnicode_Check(value.ptr()) || PyBytes_Check(value.ptr()) ||
         PyByteArray_Check(value.ptr());
}

// The members of an iterable (any but str, bytes and, unless `dictItems`, dict), owned.
std::vector<py::object> membersOf(const std::string& expected, py::handle value, bool dictItems) {
  if (isStringLike(value)) wrongType(expected, value);
  py::object source = py::reinterpret_borrow<py::object>(value);
  if (PyDict_Check(value.ptr())) {
    if (!dictItems) wrongType(expected, value);
    source = source.attr("items")();
  }
  PyObject* fast = PySequence_Fast(source.ptr(), "");
  if (fast == nullptr) {
    PyErr_Clear();
    wrongType(expected, value);
  }
  py::object sequence = py::reinterpret_steal<py::object>(fast);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  PyObject** items = PySequence_Fast_ITEMS(fast);
  std::vector<py::object> members;
  members.reserve(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i)
    members.push_back(py::reinterpret_borrow<py::object>(items[i]));
  return members;
}

// `value` as a Python int (anything with __index__ but bool), owned.
py::object indexOf(const std::string& expected, py::handle value) {
  if (PyBool_Check(value.ptr())) wrongType(expected, value);
  PyObject* index = PyNumber_Index(value.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    wrongType(expected, value);
  }
  return py::reinterpret_steal<py::object>(index);
}

[[noreturn]] void outOfRange(const std::string& expected, py::handle value) {
  raise(PyExc_OverflowError,
        py::str(value).cast<std::string>() + " is out of range for " + expected);
}

std::int64_t integerOf(const std::string& expected, py::handle value) {
  const py::object index = indexOf(expected, value);
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0) outOfRange(expected, value);
  return v;
}

std::uint64_t unsignedOf(const std::string& expected, py::handle value) {
  const py::object index = indexOf(expected, value);
  const unsigned long long v = PyLong_AsUnsignedLongLong(index.ptr());
  if (PyErr_Occurred()) {
    PyErr_Clear();
    outOfRange(expected, value);
  }
  return v;
}

double floatOf(const std::string& expected, py::handle value) {
  if (PyBool_Check(value.ptr()) || isStringLike(value)) wrongType(expected, value);
  const double v = PyFloat_AsDouble(value.ptr());
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    wrongType(expected, value);
  }
  return v;
}

std::string_view utf8Of(const std::string& expected, py::handle value) {
  if (!PyUnicode_Check(value.ptr())) wrongType(expected, value);
  Py_ssize_t size = 0;
  const char* text = PyUnicode_AsUTF8AndSize(value.ptr(), &size);
  if (text == nullptr) throw py::error_already_set();
  return {text, static_cast<std::size_t>(size)};
}

// Copies the bytes of a buffer-protocol object into `write(span)`.
template <typename Write>
void withBuffer(const std::string& expected, py::handle value, Write&& write) {
  if (!PyObject_CheckBuffer(value.ptr()) || PyUnicode_Check(value.ptr())) {
    wrongType(expected + " (bytes, bytearray, memoryview or another buffer)", value);
  }
  Py_buffer view;
  if (PyObject_GetBuffer(value.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0)
    throw py::error_already_set();
  try {
    write(std::span(static_cast<const std::byte*>(view.buf), static_cast<std::size_t>(view.len)));
  } catch (...) {
    PyBuffer_Release(&view);
    throw;
  }
  PyBuffer_Release(&view);
}

// --- Cap'n Proto struct values as dicts ----------------------------------------------------

void setDynamic(capnp::DynamicStruct::Builder out, capnp::StructSchema::Field field,
                py::handle value);

// Sets the fields of `out` from dict `value`, by name.
void fillStruct(capnp::DynamicStruct::Builder out, py::handle value, const std::string& what) {
  if (!PyDict_Check(value.ptr())) wrongType(what + " (a dict of its fields)", value);
  std::vector<std::string> names;
  for (auto [k, v] : py::reinterpret_borrow<py::dict>(value)) names.push_back(py::str(k));
  values::checkFieldNames(out.getSchema(), names);  // the refusal every front end shares
  for (auto [k, v] : py::reinterpret_borrow<py::dict>(value)) {
    const std::string name = py::str(k).cast<std::string>();
    KJ_IF_MAYBE (field, out.getSchema().findFieldByName(name)) {
      setDynamic(out, *field, v);
    } else {
      raise(PyExc_TypeError, what + " has no field \"" + name + "\"");
    }
  }
}

capnp::DynamicValue::Reader scalarValue(capnp::Type type, py::handle value,
                                        const std::string& what) {
  switch (type.which()) {
    case capnp::schema::Type::BOOL:
      if (!PyBool_Check(value.ptr())) wrongType(what + " (bool)", value);
      return value.ptr() == Py_True;
    case capnp::schema::Type::INT8:
    case capnp::schema::Type::INT16:
    case capnp::schema::Type::INT32:
    case capnp::schema::Type::INT64:
      return static_cast<int64_t>(integerOf(what, value));
    case capnp::schema::Type::UINT8:
    case capnp::schema::Type::UINT16:
    case capnp::schema::Type::UINT32:
    case capnp::schema::Type::UINT64:
      return static_cast<uint64_t>(unsignedOf(what, value));
    case capnp::schema::Type::FLOAT32:
    case capnp::schema::Type::FLOAT64:
      return floatOf(what, value);
    default:
      raise(PyExc_TypeError, what + ": unsupported field type");
  }
}

void fillList(capnp::DynamicList::Builder list, py::handle value, const std::string& what) {
  const auto members = membersOf(what, value, false);
  const capnp::Type element = list.getSchema().getElementType();
  for (unsigned i = 0; i < members.size(); ++i) {
    const std::string at = what + "[" + std::to_string(i) + "]";
    switch (element.which()) {
      case capnp::schema::Type::TEXT: {
        auto s = utf8Of(at + " (str)", members[i]);
        list.set(i, capnp::Text::Reader(s.data(), s.size()));
        break;
      }
      case capnp::schema::Type::DATA:
        withBuffer(at, members[i], [&](std::span<const std::byte> b) {
          list.set(i, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(b.data()), b.size()));
        });
        break;
      case capnp::schema::Type::STRUCT:
        fillStruct(list[i].as<capnp::DynamicStruct>(), members[i], at);
        break;
      case capnp::schema::Type::ENUM: {
        auto schema = element.asEnum();
        if (PyUnicode_Check(members[i].ptr())) {
          KJ_IF_MAYBE (e, schema.findEnumerantByName(py::str(members[i]).cast<std::string>())) {
            list.set(i, capnp::DynamicEnum(*e));
          } else {
            raise(PyExc_TypeError, at + ": no such enumerant");
          }
        } else {
          list.set(i, capnp::DynamicEnum(schema, static_cast<uint16_t>(integerOf(at, members[i]))));
        }
        break;
      }
      case capnp::schema::Type::LIST:
        fillList(list.init(i, static_cast<unsigned>(py::len(members[i]))).as<capnp::DynamicList>(),
                 members[i], at);
        break;
      default:
        list.set(i, scalarValue(element, members[i], at));
    }
  }
}

void setDynamic(capnp::DynamicStruct::Builder out, capnp::StructSchema::Field field,
                py::handle value) {
  const std::string what = std::string("field ") + field.getProto().getName().cStr();
  const capnp::Type type = field.getType();
  switch (type.which()) {
    case capnp::schema::Type::VOID:
      return out.set(field, capnp::VOID);
    case capnp::schema::Type::TEXT: {
      auto s = utf8Of(what + " (str)", value);
      return out.set(field, capnp::Text::Reader(s.data(), s.size()));
    }
    case capnp::schema::Type::DATA:
      return withBuffer(what, value, [&](std::span<const std::byte> b) {
        out.set(field, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(b.data()), b.size()));
      });
    case capnp::schema::Type::STRUCT:
      return fillStruct(out.init(field).as<capnp::DynamicStruct>(), value, what);
    case capnp::schema::Type::LIST: {
      const auto members = membersOf(what, value, false);
      fillList(out.init(field, static_cast<unsigned>(members.size())).as<capnp::DynamicList>(),
               value, what);
      return;
    }
    case capnp::schema::Type::ENUM: {
      auto schema = type.asEnum();
      if (PyUnicode_Check(value.ptr())) {
        KJ_IF_MAYBE (e, schema.findEnumerantByName(py::str(value).cast<std::string>())) {
          return out.set(field, capnp::DynamicEnum(*e));
        }
        raise(PyExc_TypeError, what + ": no such enumerant");
      }
      return out.set(field,
                     capnp::DynamicEnum(schema, static_cast<uint16_t>(integerOf(what, value))));
    }
    default:
      return out.set(field, scalarValue(type, value, what));
  }
}

py::object fromDynamic(capnp::DynamicValue::Reader value);

// (Data inside a struct is copied.)
py::object fromDynamicStruct(capnp::DynamicStruct::Reader value) {
  py::dict out;
  for (auto field : value.getSchema().getNonUnionFields()) {
    out[field.getProto().getName().cStr()] = fromDynamic(value.get(field));
  }
  KJ_IF_MAYBE (field, value.which()) {
    out[field->getProto().getName().cStr()] = fromDynamic(value.get(*field));
  }
  return out;
}

py::object fromDynamic(capnp::DynamicValue::Reader value) {
  switch (value.getType()) {
    case capnp::DynamicValue::VOID:
      return py::none();
    case capnp::DynamicValue::BOOL:
      return py::bool_(value.as<bool>());
    case capnp::DynamicValue::INT:
      return py::int_(value.as<int64_t>());
    case capnp::DynamicValue::UINT:
      return py::int_(value.as<uint64_t>());
    case capnp::DynamicValue::FLOAT:
      return py::float_(value.as<double>());
    case capnp::DynamicValue::TEXT: {
      auto t = value.as<capnp::Text>();
      return py::reinterpret_steal<py::object>(
          PyUnicode_DecodeUTF8(t.cStr(), static_cast<Py_ssize_t>(t.size()), "surrogateescape"));
    }
    case capnp::DynamicValue::DATA: {
      auto d = value.as<capnp::Data>();
      return py::bytes(reinterpret_cast<const char*>(d.begin()), d.size());
    }
    case capnp::DynamicValue::LIST: {
      auto list = value.as<capnp::DynamicList>();
      py::list out(list.size());
      for (unsigned i = 0; i < list.size(); ++i) out[i] = fromDynamic(list[i]);
      return out;
    }
    case capnp::DynamicValue::ENUM: {
      auto e = value.as<capnp::DynamicEnum>();
      KJ_IF_MAYBE (named, e.getEnumerant()) {
        return py::str(named->getProto().getName().cStr());
      }
      return py::int_(e.getRaw());
    }
    case capnp::DynamicValue::STRUCT:
      return fromDynamicStruct(value.as<capnp::DynamicStruct>());
    default:
      return py::none();
  }
}

// A large data result where it arrived: a read-only buffer that keeps its message alive.
struct Buffer {
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> keep;
};

}  // namespace

void raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

std::uint64_t PyFrom::word(const Type& type, const Value& value) {
  switch (type.kind) {
    case Type::BOOL:
      if (!PyBool_Check(value.ptr())) wrongType("bool", value);
      return value.ptr() == Py_True ? 1 : 0;
    case Type::INT: {
      const std::int64_t v = integerOf(type.name, value);
      try {
        return values::signedWord(type, v);
      } catch (const values::ValueError&) {
        raise(PyExc_OverflowError, std::to_string(v) + " is out of range for " + type.name);
      }
    }
    case Type::UINT: {
      const std::uint64_t v = unsignedOf(type.name, value);
      try {
        return values::unsignedWord(type, v);
      } catch (const values::ValueError&) {
        raise(PyExc_OverflowError, std::to_string(v) + " is out of range for " + type.name);
      }
    }
    case Type::FLOAT:
      return values::floatWord(type, floatOf(type.name, value));
    default:
      raise(PyExc_TypeError, "expected " + type.name);
  }
}

std::string_view PyFrom::text(const Type& type, const Value& value) {
  return utf8Of(type.name + " (str)", value);
}

void PyFrom::data(const Type& type, const Value& value, capnp::AnyPointer::Builder out) {
  withBuffer(type.name, value,
             [&](std::span<const std::byte> bytes) { codec::writeData(out, bytes); });
}

std::vector<PyFrom::Value> PyFrom::elements(const Type& type, const Value& value) {
  const bool pairs = type.kind == Type::LIST && type.elements[0].kind == Type::TUPLE &&
                     type.elements[0].elements.size() == 2;
  return membersOf(type.name, value, pairs);
}

void PyFrom::structValue(const Type& type, capnp::StructSchema, const Value& value,
                         capnp::DynamicStruct::Builder out) {
  fillStruct(out, value, type.name);
}

PyTo::Value PyTo::scalar(const Type& type, std::uint64_t word) {
  switch (type.kind) {
    case Type::BOOL:
      return py::bool_(word != 0);
    case Type::INT:
      return py::int_(values::signedOf(type, word));
    case Type::UINT:
      return py::int_(values::unsignedOf(type, word));
    default:
      return py::float_(values::floatOf(type, word));
  }
}

PyTo::Value PyTo::text(const Type&, std::string_view text) {
  return py::reinterpret_steal<py::object>(
      PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "surrogateescape"));
}

PyTo::Value PyTo::data(const Type&, std::span<const std::byte> bytes) {
  if (bytes.size() < LARGE_DATA || result == nullptr) {
    return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  return py::memoryview(py::cast(Buffer{bytes, std::make_shared<DynamicResult>(*result)}));
}

PyTo::Value PyTo::structValue(const Type&, capnp::DynamicStruct::Reader value) {
  return fromDynamicStruct(value);
}

void defineBuffer(py::module_& m) {
  py::class_<Buffer>(m, "_Buffer", py::buffer_protocol())
      .def_buffer([](Buffer& b) -> py::buffer_info {
        return py::buffer_info(const_cast<std::byte*>(b.bytes.data()), 1, "B", 1,
                               {static_cast<py::ssize_t>(b.bytes.size())}, {1}, /*readonly=*/true);
      });
}

}  // namespace plugpool::python
