#include "plugpool/dynamic.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include <capnp/any.h>
#include <capnp/message.h>
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

Initializer dynamicInitializer(
    std::string plugin, std::string task,
    std::function<void(capnp::AnyStruct::Builder, const PluginInfo&, const TaskInfo&)> encode) {
  Initializer init;
  init.plugin_ = std::move(plugin);
  init.task_ = std::move(task);
  init.dynamicEncode_ = std::move(encode);
  return init;
}

void Initializer::resolve(const PluginInfo& plugin, const TaskInfo& info) {
  argTypes_ = info.argTypes;
  resultType_ = info.resultType;
  const TupleShape shape = tupleShape(argTypes_);
  dataWords_ = shape.dataWords;
  pointers_ = shape.pointers;
  auto message = std::make_shared<capnp::MallocMessageBuilder>();
  auto args = message->getRoot<capnp::AnyPointer>().initAsAnyStruct(dataWords_, pointers_);
  auto encode = std::exchange(dynamicEncode_, nullptr);
  encode(args, plugin, info);
  // Every worker gets a copy of what was written once.
  encode_ = [message](capnp::AnyStruct::Builder out) {
    auto from = message->getRoot<capnp::AnyPointer>().getAs<capnp::AnyStruct>().asReader();
    auto data = from.getDataSection();
    std::memcpy(out.getDataSection().begin(), data.begin(),
                std::min(data.size(), out.getDataSection().size()));
    auto pointers = from.getPointerSection();
    for (unsigned i = 0; i < pointers.size() && i < out.getPointerSection().size(); ++i) {
      out.getPointerSection()[i].set(pointers[i]);
    }
  };
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
