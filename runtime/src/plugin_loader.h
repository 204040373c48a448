// plugin_loader.h — loads a plugin shared library and checks its ABI. Internal; used by the
// worker and by LocalPlugin, so both apply exactly the same checks.
//
// Order of checks (abi.h convention 1): the file exists; it loads with RTLD_NOW | RTLD_LOCAL
// (so missing symbols are reported now, not at the first call); it exports
// plugpool_abi_version equal to ours; only then is plugpool_plugin_v1 resolved and called;
// its descriptor must agree on ABI and Cap'n Proto versions and be well-formed; so must the
// optional schema and chunk tables.
//
// Plugins are loaded with RTLD_NODELETE: a loaded plugin is never unloaded, whatever happens
// to the handle (abi.h convention 2).
#pragma once

#include <stdexcept>
#include <string>

#include <capnp/schema.capnp.h>

#include "plugpool/abi.h"
#include "plugpool/manifest.h"

namespace plugpool::detail {

// A plugin cannot be used; what() says why, for a human, and names the file.
class PluginLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LoadedPlugin {
  std::string path;
  const abi::PluginDescriptor* descriptor = nullptr;
  const abi::SchemaTable* schemas = nullptr;      // null: the plugin ships none (convention 8)
  const abi::ChunkTable* chunks = nullptr;        // null: the plugin ships none (convention 9)
  volatile std::uint32_t* runningItem = nullptr;  // null: not told (convention 10)
  // Moves runningItem to another word (convention 11); null if the plugin cannot.
  void (*setRunningItem)(volatile std::uint32_t*) = nullptr;

  // Task `task`'s chunk entry, or null: call it item by item through invoke.
  // REQUIRES: task < descriptor->taskCount.
  abi::InvokeChunkFn chunkEntry(unsigned task) const {
    return chunks != nullptr ? chunks->invokeChunk[task] : nullptr;
  }
};

// Throws PluginLoadError.
LoadedPlugin loadPlugin(const std::string& path);

// The plugin's manifest, its schema nodes included. Throws PluginLoadError if a schema node
// cannot be encoded.
PluginInfo manifestOf(const LoadedPlugin& plugin);

// One schema node as PluginInfo::schemaNodes holds it: a message whose root is the node.
// Throws kj::Exception if `node` cannot be read (a lazy check of a malformed message).
std::string encodeSchemaNode(capnp::schema::Node::Reader node);

}  // namespace plugpool::detail
