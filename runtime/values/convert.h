// values/convert.h — the one type-driven traversal between task values on the wire and a
// front end's own values: the command line's JSON (runtime/cli/values.cc) and, through the
// same templates, any other. Internal.
//
// The traversal knows the wire (the tuple struct of codec.h, lists, nested tuples, struct
// values by their schema) and checks what it reads; a front end knows only its own values,
// told to it leaf by leaf. Errors: a value that does not fit its type is a ValueError (from
// the front end, or from here for a tuple of the wrong size); a malformed message is
// codec.h's DecodeError.
//
// Encoding, `From` provides, with Value a handle to one of its values:
//   std::uint64_t word(const Type&, const Value&)      a scalar's word, range-checked
//   std::string_view text(const Type&, const Value&)   TEXT; valid while the value lives
//   void data(const Type&, const Value&, capnp::AnyPointer::Builder out)   DATA, written
//   std::vector<Value> elements(const Type&, const Value&)   a LIST's or TUPLE's members
//   void structValue(const Type&, capnp::StructSchema, const Value&,
//                    capnp::DynamicStruct::Builder out)       STRUCT, written
// Decoding, `To` provides, with Value what it makes of one value (void: it appends):
//   Value scalar(const Type&, std::uint64_t word)
//   Value text(const Type&, std::string_view)
//   Value data(const Type&, std::span<const std::byte>)
//   Value list(const Type&, unsigned n, Each each)    each(i) gives member i; call each once,
//   Value tuple(const Type&, unsigned n, Each each)   in order
//   Value structValue(const Type&, capnp::DynamicStruct::Reader)
#pragma once

#include <string>

#include <capnp/dynamic.h>

#include "types.h"

namespace plugpool::values {

template <typename From>
void encodePointer(From& from, Schemas& schemas, const Type& type,
                   const typename From::Value& value, capnp::AnyPointer::Builder out);

// Writes `value` of `type` at `slot` of its section of `tuple`.
template <typename From>
void encode(From& from, Schemas& schemas, const Type& type, const typename From::Value& value,
            capnp::AnyStruct::Builder tuple, unsigned slot) {
  if (type.scalar()) return putWord(tuple, slot, from.word(type, value));
  encodePointer(from, schemas, type, value, tuple.getPointerSection()[slot]);
}

template <typename From>
void encodePointer(From& from, Schemas& schemas, const Type& type,
                   const typename From::Value& value, capnp::AnyPointer::Builder out) {
  switch (type.kind) {
    case Type::TEXT:
      return codec::writeText(out, from.text(type, value));
    case Type::DATA:
      return from.data(type, value, out);
    case Type::LIST: {
      const auto members = from.elements(type, value);
      const auto n = static_cast<unsigned>(members.size());
      const Type& element = type.elements[0];
      if (element.scalar()) {
        auto list = out.initAsAnyList(listElementSize(element), n);
        for (unsigned i = 0; i < n; ++i)
          setListWord(element, list, i, from.word(element, members[i]));
      } else {
        auto list =
            out.initAsAnyList(capnp::ElementSize::POINTER, n).as<capnp::List<capnp::AnyPointer>>();
        for (unsigned i = 0; i < n; ++i) encodePointer(from, schemas, element, members[i], list[i]);
      }
      return;
    }
    case Type::TUPLE: {
      const auto members = from.elements(type, value);
      if (members.size() != type.elements.size()) {
        throw ValueError("expected " + type.name + " as " + std::to_string(type.elements.size()) +
                         " values, got " + std::to_string(members.size()));
      }
      const TupleShape shape = shapeOf(type.elements);
      auto tuple = out.initAsAnyStruct(shape.dataWords, shape.pointers);
      const auto slots = slotsOf(type.elements);
      for (unsigned i = 0; i < members.size(); ++i) {
        encode(from, schemas, type.elements[i], members[i], tuple, slots[i]);
      }
      return;
    }
    case Type::STRUCT: {
      const capnp::StructSchema schema = schemas.of(type);
      return from.structValue(type, schema, value, out.initAs<capnp::DynamicStruct>(schema));
    }
    default:
      return;  // scalars are written by encode()
  }
}

template <typename To>
typename To::Value decodePointer(To& to, Schemas& schemas, const Type& type,
                                 capnp::AnyPointer::Reader in);

// What `to` makes of the value of `type` at `slot` of its section of `tuple`.
template <typename To>
typename To::Value decode(To& to, Schemas& schemas, const Type& type,
                          capnp::AnyStruct::Reader tuple, unsigned slot) {
  if (type.scalar()) return to.scalar(type, getWord(tuple, slot));
  return decodePointer(to, schemas, type, tuple.getPointerSection()[slot]);
}

template <typename To>
typename To::Value decodePointer(To& to, Schemas& schemas, const Type& type,
                                 capnp::AnyPointer::Reader in) {
  switch (type.kind) {
    case Type::TEXT:
      return to.text(type, codec::readText(in));
    case Type::DATA:
      return to.data(type, codec::readData(in));
    case Type::LIST: {
      const Type& element = type.elements[0];
      if (element.scalar()) {
        codec::expectList(in, listElementSize(element), "a list of scalars of that size");
        auto list = in.getAs<capnp::AnyList>();
        return to.list(type, list.size(),
                       [&](unsigned i) { return to.scalar(element, listWord(element, list, i)); });
      }
      auto list = in.getAs<capnp::AnyList>();
      if (list.size() > 0 && list.getElementSize() != capnp::ElementSize::POINTER) {
        throw DecodeError("expected a list of pointers");
      }
      auto pointers = list.as<capnp::List<capnp::AnyPointer>>();
      return to.list(type, pointers.size(),
                     [&](unsigned i) { return decodePointer(to, schemas, element, pointers[i]); });
    }
    case Type::TUPLE: {
      auto tuple = codec::readStruct(in);
      const TupleShape shape = shapeOf(type.elements);
      codec::checkTupleSize(tuple, shape.dataWords, shape.pointers);
      const auto slots = slotsOf(type.elements);
      return to.tuple(type, static_cast<unsigned>(type.elements.size()), [&](unsigned i) {
        return decode(to, schemas, type.elements[i], tuple, slots[i]);
      });
    }
    case Type::STRUCT: {
      const capnp::StructSchema schema = schemas.of(type);
      if (!in.isNull() && !in.isStruct()) throw DecodeError("expected a struct pointer");
      return to.structValue(type, in.getAs<capnp::DynamicStruct>(schema));
    }
    default:
      return to.scalar(type, 0);  // unreachable: scalars are read by decode()
  }
}

}  // namespace plugpool::values
