#include "plugin_loader.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string_view>
#include <system_error>

#include <capnp/common.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <boost/dll/shared_library.hpp>

namespace plugpool::detail {

namespace {

[[noreturn]] void refuse(const std::string& path, const std::string& why) {
  throw PluginLoadError(path + ": " + why);
}

// "_Z14missing_helperl" -> "missing_helper(long)"; anything that is not a mangled C++ name
// as it is.
std::string demangle(const std::string& symbol) {
  int status = 0;
  char* readable = ::abi::__cxa_demangle(symbol.c_str(), nullptr, nullptr, &status);
  std::string name = (status == 0 && readable != nullptr) ? readable : symbol;
  std::free(readable);
  return name;
}

// What to tell the user for dlerror()'s `why` ("<file>: <reason>"), without the leading
// path when it is the plugin's own (refuse() names it). An undefined symbol is demangled,
// with the link option that would have found it when the plugin was built.
std::string explainLoadFailure(const std::string& path, std::string why) {
  if (why.starts_with(path + ": ")) why.erase(0, path.size() + 2);
  static constexpr std::string_view UNDEFINED = "undefined symbol: ";
  const auto at = why.find(UNDEFINED);
  if (at == std::string::npos) return "cannot be loaded as a shared library: " + why;
  // glibc writes "undefined symbol: NAME" or "undefined symbol: NAME, version V".
  const auto from = at + UNDEFINED.size();
  const auto to = why.find(',', from);
  const std::string symbol =
      why.substr(from, to == std::string::npos ? std::string::npos : to - from);
  const std::string readable = demangle(symbol);
  std::string named = readable == symbol ? symbol : readable + " (" + symbol + ")";
  if (to != std::string::npos) named += why.substr(to);
  return why.substr(0, at) + "undefined symbol: " + named +
         "; neither the plugin nor a library it links to defines it (link plugins with "
         "-Wl,--no-undefined to be told when they are built)";
}

void checkDescriptor(const std::string& path, const abi::PluginDescriptor* d) {
  if (d == nullptr) refuse(path, "plugpool_plugin_v1() returned no descriptor");
  if (d->abiVersion != PLUGPOOL_ABI_VERSION) {
    refuse(path, "its descriptor is for plugpool ABI version " + std::to_string(d->abiVersion) +
                     ", this loader speaks " + std::to_string(PLUGPOOL_ABI_VERSION));
  }
  if (d->capnpVersion != CAPNP_VERSION) {
    refuse(path, "built with Cap'n Proto " + std::to_string(d->capnpVersion) +
                     ", this loader uses " + std::to_string(CAPNP_VERSION) +
                     "; rebuild the plugin against this SDK");
  }
  if (d->name == nullptr || *d->name == '\0') refuse(path, "the plugin has no name");
  if (d->taskCount > 0 && d->tasks == nullptr) refuse(path, "the task table is missing");
  std::set<std::string_view> names;
  for (std::uint32_t i = 0; i < d->taskCount; ++i) {
    const abi::TaskDescriptor& t = d->tasks[i];
    if (t.name == nullptr || *t.name == '\0')
      refuse(path, "task " + std::to_string(i) + " has no name");
    if (!names.insert(t.name).second) refuse(path, std::string("two tasks are named ") + t.name);
    if (t.invoke == nullptr || t.resultType == nullptr ||
        (t.argCount > 0 && t.argTypes == nullptr)) {
      refuse(path, std::string("task ") + t.name + " has an incomplete descriptor");
    }
  }
}

}  // namespace

LoadedPlugin loadPlugin(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) refuse(path, "no such file");
  if (std::filesystem::is_directory(path, ec)) refuse(path, "is a directory, not a plugin");

  namespace mode = boost::dll::load_mode;
  const auto flags = static_cast<mode::type>(mode::rtld_now | mode::rtld_local | RTLD_NODELETE);
  boost::dll::shared_library library;
  boost::dll::fs::error_code failed;
  library.load(path, flags, failed);
  if (failed) {
    // Boost.DLL reports every dlopen failure as EBADF, which says nothing; dlerror() has
    // the reason, and Boost leaves it set when it fails (it clears it only on success).
    const char* why = ::dlerror();
    refuse(path,
           why != nullptr ? explainLoadFailure(path, why) : "cannot be loaded as a shared library");
  }
  if (!library.has(abi::ABI_VERSION_SYMBOL)) {
    refuse(path,
           "not a plugpool plugin: it does not export plugpool_abi_version (did you forget "
           "PLUGPOOL_PLUGIN(...) in one of its source files?)");
  }
  const std::uint32_t version = library.get<const std::uint32_t>(abi::ABI_VERSION_SYMBOL);
  if (version != PLUGPOOL_ABI_VERSION) {
    refuse(path, "built for plugpool ABI version " + std::to_string(version) +
                     ", this loader speaks version " + std::to_string(PLUGPOOL_ABI_VERSION) +
                     "; rebuild the plugin against this SDK");
  }
  if (!library.has(abi::DESCRIPTOR_SYMBOL)) {
    refuse(path, "exports plugpool_abi_version but not plugpool_plugin_v1");
  }
  auto describe = library.get<const abi::PluginDescriptor*()>(abi::DESCRIPTOR_SYMBOL);
  LoadedPlugin plugin{path, describe(), nullptr};
  checkDescriptor(path, plugin.descriptor);
  if (library.has(abi::SCHEMAS_SYMBOL)) {
    plugin.schemas = library.get<const abi::SchemaTable*()>(abi::SCHEMAS_SYMBOL)();
    if (plugin.schemas != nullptr && plugin.schemas->count > 0 && plugin.schemas->nodes == nullptr)
      refuse(path, "its schema table is missing its nodes");
  }
  if (library.has(abi::RUNNING_ITEM_SYMBOL)) {
    plugin.runningItem = library.get<volatile std::uint32_t*()>(abi::RUNNING_ITEM_SYMBOL)();
    if (library.has(abi::SET_RUNNING_ITEM_SYMBOL)) {
      plugin.setRunningItem =
          library.get<void(volatile std::uint32_t*)>(abi::SET_RUNNING_ITEM_SYMBOL);
    }
  }
  if (library.has(abi::CHUNKS_SYMBOL)) {
    plugin.chunks = library.get<const abi::ChunkTable*()>(abi::CHUNKS_SYMBOL)();
    if (plugin.chunks != nullptr &&
        (plugin.chunks->count != plugin.descriptor->taskCount ||
         (plugin.chunks->count > 0 && plugin.chunks->invokeChunk == nullptr))) {
      refuse(path, "its chunk table does not have one entry per task");
    }
  }
  return plugin;  // `library` closes its handle; RTLD_NODELETE keeps the plugin mapped
}

PluginInfo manifestOf(const LoadedPlugin& plugin) {
  const abi::PluginDescriptor& d = *plugin.descriptor;
  PluginInfo info{d.name, plugin.path, d.abiVersion, {}, {}};
  for (std::uint32_t i = 0; i < d.taskCount; ++i) {
    const abi::TaskDescriptor& t = d.tasks[i];
    TaskInfo task{t.name, t.doc != nullptr ? t.doc : "", {}, t.resultType};
    for (std::uint32_t a = 0; a < t.argCount; ++a) task.argTypes.emplace_back(t.argTypes[a]);
    info.tasks.push_back(std::move(task));
  }
  if (plugin.schemas != nullptr) {
    for (std::uint32_t i = 0; i < plugin.schemas->count; ++i) {
      try {
        info.schemaNodes.push_back(encodeSchemaNode(plugin.schemas->nodes[i]));
      } catch (const kj::Exception& e) {
        refuse(plugin.path, std::string("its schema node ") + std::to_string(i) +
                                " cannot be read: " + e.getDescription().cStr());
      }
    }
  }
  return info;
}

std::string encodeSchemaNode(capnp::schema::Node::Reader node) {
  capnp::MallocMessageBuilder message;
  message.setRoot(node);
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

}  // namespace plugpool::detail
