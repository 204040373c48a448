// plugpool/dynamic.h — calling tasks whose types are known only at run time.
//
// For tools that take a plugin and a task name from their user, such as the plugpool command
// line: they cannot name the task's C++ signature at compile time, so they bind it by name
// alone (Pool::dynamicTask), read its types from its manifest (TaskInfo: canonical type
// names, see codec.h), write each call's argument tuple themselves and read each result tuple
// themselves. Hosts that know their types should use Pool::task<Signature>: it checks the
// signature when binding and converts values for them.
//
//   plugpool::Pool pool(2, {"examples"});
//   plugpool::DynamicTask square = pool.dynamicTask("examples", "square");   // (int64) -> int64
//   std::vector<std::int64_t> in{1, 2, 3};
//   auto results = pool.imap(square, in, [](capnp::AnyStruct::Builder args, std::int64_t x) {
//     std::memcpy(args.getDataSection().begin(), &x, 8);   // one data word: the tuple (x)
//   });
//   for (const plugpool::DynamicResult& r : results) use(r.tuple().getDataSection());
//
// The wire form is codec.h's "tuple struct": one 64-bit data word per scalar argument (bool,
// intN, uintN, float32, float64) in order, one pointer per other argument (text, data, list,
// tuple, struct) in order. tupleShape() gives the section sizes of a list of type names; the
// argument structs handed to an encode function are already allocated with the task's
// argumentShape(). Scalars are stored as codec.h's Codec<T>::toWord does: integers
// sign- or zero-extended to 64 bits, float32 in the low 32 bits, little-endian.
//
// Trust: a tuple the caller writes wrong is the plugin's to reject — the plugin decodes
// arguments strictly and that item fails with TaskError of type plugpool::DecodeError; the
// worker and the pool are unaffected. Result tuples come from a worker, so a reader must
// expect kj::Exception from Cap'n Proto's lazy checks and validate what it reads; a result
// tuple smaller than its type's layout is already refused (ProtocolError for that item).
//
// Struct values: a plugin built with this SDK ships the schema nodes of the struct types its
// tasks name (PluginInfo::schemaNodes, abi.h convention 8). loadSchemas() puts them in a
// capnp::SchemaLoader, where "struct X@0x<id>" is loader.get(id).asStruct(); values of it are
// then readable and writable as capnp::DynamicStruct.
//
// Thread safety: DynamicTask and DynamicResult are immutable values; the free functions keep
// no state.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <capnp/any.h>

#include "plugpool/detail/call.h"
#include "plugpool/export.h"
#include "plugpool/manifest.h"

namespace capnp {
class SchemaLoader;
}

namespace plugpool {

// The sizes of a tuple struct's two sections.
struct TupleShape {
  std::uint16_t dataWords = 0;
  std::uint16_t pointers = 0;
};

// Whether canonical type name `type` is a scalar (bool, int8 … uint64, float32, float64),
// which travels in a data word; every other type travels as a pointer.
PLUGPOOL_API bool isScalarType(std::string_view type);

// The layout of a tuple of values of canonical type names `types`.
PLUGPOOL_API TupleShape tupleShape(const std::vector<std::string>& types);

// Loads `plugin.schemaNodes` into `loader`. Throws kj::Exception if a node is malformed or
// fails the loader's validation (nodes already loaded stay loaded).
PLUGPOOL_API void loadSchemas(const PluginInfo& plugin, capnp::SchemaLoader& loader);

// The type id in a struct type name "struct Name@0x<16 hex digits>", or 0 if `type` is not
// one.
PLUGPOOL_API std::uint64_t structTypeId(std::string_view type);

// A task bound by name only; its types are those of info(). Made by Pool::dynamicTask and
// used only with that Pool.
class DynamicTask {
 public:
  const std::string& plugin() const { return ref_.pluginName; }
  const std::string& name() const { return ref_.taskName; }
  const TaskInfo& info() const { return info_; }
  TupleShape argumentShape() const { return arguments_; }
  TupleShape resultShape() const { return result_; }
  std::chrono::milliseconds timeout() const { return ref_.timeout; }

  // The same task with a per-item timeout (0: none); see Task::withTimeout.
  DynamicTask withTimeout(std::chrono::milliseconds timeout) const {
    DynamicTask copy = *this;
    copy.ref_.timeout = timeout;
    return copy;
  }

 private:
  friend class Pool;
  friend struct detail::PoolImpl;
  DynamicTask(detail::TaskRef ref, TaskInfo info)
      : ref_(std::move(ref)),
        info_(std::move(info)),
        arguments_(tupleShape(info_.argTypes)),
        result_(tupleShape({info_.resultType})) {}
  detail::TaskRef ref_;
  TaskInfo info_;
  TupleShape arguments_, result_;
};

// One call's result tuple struct (holding the one result value, in slot 0 of its section),
// with a share of the received message it lives in: valid as long as this object lives.
// Copying is cheap (a shared pointer); a result keeps its whole chunk's message alive.
class DynamicResult {
 public:
  DynamicResult(capnp::AnyStruct::Reader tuple, std::shared_ptr<const void> keepAlive)
      : tuple_(tuple), keepAlive_(std::move(keepAlive)) {}
  capnp::AnyStruct::Reader tuple() const { return tuple_; }

 private:
  capnp::AnyStruct::Reader tuple_;
  std::shared_ptr<const void> keepAlive_;
};

}  // namespace plugpool
