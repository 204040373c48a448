#include "plugpool/dynamic.h"

#include <array>
#include <cstring>

#include <capnp/schema-loader.h>
#include <capnp/serialize.h>
#include <kj/array.h>

#include "core.h"
#include "paths.h"
#include "plugpool/pool.h"

namespace plugpool {

bool isScalarType(std::string_view type) {
  static constexpr std::array<std::string_view, 11> SCALARS = {
      "bool",   "int8",   "int16",  "int32",   "int64",  "uint8",
      "uint16", "uint32", "uint64", "float32", "float64"};
  for (auto s : SCALARS) {
    if (type == s) return true;
  }
  return false;
}

TupleShape tupleShape(const std::vector<std::string>& types) {
  TupleShape shape;
  for (const auto& t : types) {
    if (isScalarType(t)) {
      ++shape.dataWords;
    } else {
      ++shape.pointers;
    }
  }
  return shape;
}

void loadSchemas(const PluginInfo& plugin, capnp::SchemaLoader& loader) {
  for (const std::string& bytes : plugin.schemaNodes) {
    // FlatArrayMessageReader needs aligned words: copy.
    auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), bytes.data(), words.size() * sizeof(capnp::word));
    capnp::FlatArrayMessageReader message(words);
    loader.load(message.getRoot<capnp::schema::Node>());
  }
}

std::uint64_t structTypeId(std::string_view type) {
  constexpr std::string_view PREFIX = "struct ";
  if (type.substr(0, PREFIX.size()) != PREFIX) return 0;
  auto at = type.rfind("@0x");
  if (at == std::string_view::npos || type.size() - at != 3 + 16) return 0;
  std::uint64_t id = 0;
  for (char c : type.substr(at + 3)) {
    int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return 0;
    id = id << 4 | static_cast<std::uint64_t>(digit);
  }
  return id;
}

DynamicTask Pool::dynamicTask(std::string_view plugin, std::string_view name) const {
  for (const PluginInfo& p : core_->plugins()) {
    if (p.name != plugin) continue;
    if (const TaskInfo* info = p.find(name)) {
      return DynamicTask(bind(plugin, name, info->argTypes, info->resultType), *info);
    }
  }
  // Not there: bind's error names what is there instead.
  bind(plugin, name, {}, {});
  throw PluginError("no task \"" + std::string(name) + "\" in plugin " + std::string(plugin));
}

}  // namespace plugpool
