// plugpool/abi.h — the binary boundary between a plugin and the process that loads it.
//
// Plugin authors never use this header directly: sdk.h's PLUGPOOL_PLUGIN macro fills these
// structures in. It is public because it *is* the contract, and because the runtime (the
// worker, and plugpool::LocalPlugin in a host) reads the same structures.
//
// Conventions of the boundary (ABI version 1):
//
//  1. A plugin is a shared library exporting two symbols with C linkage and default
//     visibility (and optionally more, conventions 8 and 9); everything else in it should be
//     hidden (-fvisibility=hidden):
//       const uint32_t plugpool_abi_version;            // == PLUGPOOL_ABI_VERSION
//       const plugpool::abi::PluginDescriptor* plugpool_plugin_v1();
//     The loader reads plugpool_abi_version first and resolves nothing else unless it equals
//     the loader's own PLUGPOOL_ABI_VERSION. The descriptor symbol carries the version in its
//     name, so a loader can never call a descriptor function of another ABI by mistake.
//  2. The descriptor and everything it points to are immutable and live until the process
//     exits. Loaders load with RTLD_NOW | RTLD_LOCAL and never unload a plugin.
//  3. The plugin and the loader share one Cap'n Proto runtime (libcapnp/libkj are linked
//     dynamically; Debian's static archives are not PIC). The descriptor records the
//     CAPNP_VERSION the plugin was compiled with; the loader refuses a different one.
//  4. A task is called one item at a time through TaskDescriptor::invoke, or a chunk of items
//     at a time through its chunk entry (convention 9); both are noexcept: every exception
//     (from decoding, the task itself, or encoding) is caught inside the plugin and reported
//     through the sink as a (type name, message) pair. No C++ exception ever crosses the
//     boundary.
//  5. Arguments and results travel as a "tuple struct" (see codec.h): scalar values take one
//     64-bit data word each in order, all other values (text, data, lists, tuples, Cap'n
//     Proto structs) take one pointer each in order. The descriptor gives the sizes, so the
//     loader can allocate result structs without knowing the types.
//  6. Type names in the manifest (argTypes, resultType) are the canonical strings produced
//     by plugpool::Codec<T>::typeName(); a host binds a task only if they match exactly.
//  7. invoke and chunk entries may be called from any thread, but never concurrently for the
//     same result builder. Tasks must be safe to run concurrently with themselves if the loader
//     uses threads (plugpool's worker does not: one item at a time per process).
//  8. Optionally (added within ABI version 1, so older plugins stay loadable), a plugin also
//     exports, with C linkage and default visibility,
//       const plugpool::abi::SchemaTable* plugpool_schemas_v1();
//     the Cap'n Proto schema nodes of every struct and enum type its task signatures name
//     ("struct X@0x…"), with every node those need (field types, groups), each once. Tools
//     that learn a task's types at run time (the plugpool command line) need them to convert
//     such values; typed hosts compile the schema in and do not. A loader treats a missing
//     symbol as "no schemas" and calls it, like the descriptor, only after the version check.
//     The table and the nodes it points to obey convention 2.
//  9. Optionally (added within ABI version 1, so older plugins stay loadable), a plugin also
//     exports, with C linkage and default visibility,
//       const plugpool::abi::ChunkTable* plugpool_chunks_v1();
//     one chunk entry (InvokeChunkFn) per task, in the descriptor's task order, or null for a
//     task that has none. A chunk entry makes the calls invoke would make for each item of a
//     chunk, in item order, with the same results and the same failures, in one call across
//     the boundary: the plugin can then read and write a chunk of scalar tuples (convention 5)
//     as plain arrays of words. A loader treats a missing symbol as "no chunk entries" (and
//     calls invoke per item), calls it only after the version check, and refuses a table
//     whose count differs from the descriptor's taskCount. The table obeys convention 2.
// 10. Optionally (added within ABI version 1), a plugin also exports, with C linkage and
//     default visibility,
//       volatile std::uint32_t* plugpool_running_item_v1();
//     the address of a word its chunk entries set to the index in the chunk of each item just
//     before they call the task for it. The worker reads it only when a task has crashed the
//     process, to say which item was running (wire.capnp's Crash); it writes
//     0xffffffff ("unknown") there before each chunk. A loader treats a missing symbol as
//     "unknown".
// 11. Optionally (added within ABI version 1), with convention 10, a plugin also exports
//       void plugpool_set_running_item_v1(volatile std::uint32_t* word);
//     which makes its chunk entries write the running item's index to `word` from then on
//     (null: back to its own word), and plugpool_running_item_v1 return `word`. Each item's
//     result is wholly written before the next item's index is. A worker passes a word of its
//     reply log, which its host reads after the worker died, so that the items before the
//     one that was running keep their results. It calls it once, right after loading.
#pragma once

#include <cstddef>
#include <cstdint>

#include <capnp/any.h>
#include <capnp/common.h>
#include <capnp/list.h>
#include <capnp/schema.capnp.h>

// Bumped on any incompatible change to the structures below or to the tuple encoding.
#define PLUGPOOL_ABI_VERSION 1u

namespace plugpool::abi {

// Where a task reports a failure. The loader owns it; the strings are copied during the call.
struct ErrorSink {
  void* context;
  void (*report)(void* context, const char* type, std::size_t typeSize, const char* message,
                 std::size_t messageSize) noexcept;
};

// Runs one call: decodes `args`, calls the task, encodes the value into `result`, which the
// loader allocated with resultDataWords/resultPointers. On failure it calls sink->report
// exactly once and leaves `result` in an unspecified state.
using InvokeFn = void (*)(const capnp::AnyStruct::Reader* args, capnp::AnyStruct::Builder* result,
                          const ErrorSink* sink) noexcept;

// Where a chunk entry reports the failure of item `index` (its position in the chunk). The
// loader owns it; the strings are copied during the call.
struct ChunkErrorSink {
  void* context;
  void (*report)(void* context, std::uint32_t index, const char* type, std::size_t typeSize,
                 const char* message, std::size_t messageSize) noexcept;
};

// Runs one call per item of `args`, in order (convention 9): item i's value goes into
// (*results)[i]. The loader allocated `results` with args->size() structs of
// resultDataWords/resultPointers. A failed item is reported through sink->report exactly once,
// with its index, in increasing index order, and leaves its result unspecified; the items
// after it still run.
using InvokeChunkFn = void (*)(const capnp::List<capnp::AnyStruct>::Reader* args,
                               capnp::List<capnp::AnyStruct>::Builder* results,
                               const ChunkErrorSink* sink) noexcept;

struct TaskDescriptor {
  const char* name;  // unique within the plugin, e.g. "square"
  const char* doc;   // one line for humans
  std::uint32_t argCount;
  const char* const* argTypes;  // argCount canonical type names
  const char* resultType;       // canonical type name
  std::uint16_t argDataWords;   // the argument tuple's layout (convention 5)
  std::uint16_t argPointers;
  std::uint16_t resultDataWords;  // the result tuple's layout: one value
  std::uint16_t resultPointers;
  InvokeFn invoke;
};

struct PluginDescriptor {
  std::uint32_t abiVersion;    // == PLUGPOOL_ABI_VERSION when built
  std::uint32_t capnpVersion;  // CAPNP_VERSION when built (convention 3)
  const char* name;            // the plugin's name, how hosts address it, e.g. "examples"
  std::uint32_t taskCount;
  const TaskDescriptor* tasks;
};

// The schema nodes a plugin ships (convention 8): `count` nodes, each a Cap'n Proto
// schema.Node as capnp::Schema::getProto() returns it (pointing into the plugin's own
// generated code), in no particular order.
struct SchemaTable {
  std::uint32_t count;
  const capnp::schema::Node::Reader* nodes;
};

// The chunk entries a plugin ships (convention 9).
struct ChunkTable {
  std::uint32_t count;               // == PluginDescriptor::taskCount
  const InvokeChunkFn* invokeChunk;  // `count` entries in task order; null: call per item
};

// The exported symbols' names, for loaders.
inline constexpr const char* ABI_VERSION_SYMBOL = "plugpool_abi_version";
inline constexpr const char* DESCRIPTOR_SYMBOL = "plugpool_plugin_v1";
inline constexpr const char* SCHEMAS_SYMBOL = "plugpool_schemas_v1";                    // optional
inline constexpr const char* CHUNKS_SYMBOL = "plugpool_chunks_v1";                      // optional
inline constexpr const char* RUNNING_ITEM_SYMBOL = "plugpool_running_item_v1";          // optional
inline constexpr const char* SET_RUNNING_ITEM_SYMBOL = "plugpool_set_running_item_v1";  // optional
using DescriptorFn = const PluginDescriptor* (*)();
using SchemasFn = const SchemaTable* (*)();
using ChunksFn = const ChunkTable* (*)();
using RunningItemFn = volatile std::uint32_t* (*)();

}  // namespace plugpool::abi
