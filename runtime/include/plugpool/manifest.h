// plugpool/manifest.h — what a plugin declares about itself, as the host sees it.
//
// A manifest is read by a worker from the plugin's descriptor (abi.h) and sent to the host in
// its Hello message: the host never loads plugins itself, so a plugin that crashes while
// loading cannot take the host down. Plain values; thread-safe to read.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "plugpool/export.h"

namespace plugpool {

struct TaskInfo {
  std::string name;
  std::string doc;
  std::vector<std::string> argTypes;  // canonical type names, see plugpool/codec.h
  std::string resultType;

  // "(int64, float64) -> text"
  PLUGPOOL_API std::string signature() const;
  bool operator==(const TaskInfo&) const = default;
};

struct PluginInfo {
  std::string name;  // as declared by PLUGPOOL_PLUGIN
  std::string path;  // the shared library the workers loaded
  std::uint32_t abiVersion = 0;
  std::vector<TaskInfo> tasks;
  // The Cap'n Proto schema nodes the plugin ships for the struct and enum types its tasks
  // name (abi.h convention 8); empty for a plugin without them. Each string is one message
  // in the standard framing (as capnp::messageToFlatArray writes it) whose root is a
  // capnp::schema::Node. For tools that learn types at run time: see plugpool/dynamic.h.
  std::vector<std::string> schemaNodes;

  // The task named `task`, or nullptr.
  PLUGPOOL_API const TaskInfo* find(std::string_view task) const;
  bool operator==(const PluginInfo&) const = default;
};

// "(int64, float64) -> text", the form signatures take in messages.
PLUGPOOL_API std::string formatSignature(const std::vector<std::string>& argTypes,
                                         const std::string& resultType);

}  // namespace plugpool
