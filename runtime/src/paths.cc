#include "paths.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <boost/dll/runtime_symbol_info.hpp>

#include "plugpool/errors.h"

namespace plugpool::detail {

namespace fs = std::filesystem;

namespace {

// The directory libplugpool itself was loaded from (located by one of its own functions).
fs::path libraryDirectory() {
  std::error_code ec;
  // Normalized: loaded through an rpath such as $ORIGIN/.., the path reads "bin/../lib.so",
  // whose parent's parent would otherwise be "bin" instead of the tree's top.
  return fs::path(boost::dll::symbol_location_ptr(&findPlugin, ec))
      .lexically_normal()
      .parent_path();
}

// Whether libplugpool, in `library`, is a build tree's (build/runtime/) and not an installed
// copy: only that one looks for the worker and plugins the build tree holds. meson puts the
// mark next to the library it builds and never installs it (runtime/meson.build).
bool inBuildTree(const fs::path& library) {
  std::error_code ec;
  return fs::is_regular_file(library / "plugpool-build-tree.txt", ec);
}

bool isExecutableFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

// Appends `p` unless the list already holds the same path (a default install has the
// relative and the absolute install path the same).
void addUnique(std::vector<fs::path>& paths, const fs::path& p) {
  fs::path normal = p.lexically_normal();
  for (const auto& q : paths) {
    if (q.lexically_normal() == normal) return;
  }
  paths.push_back(p);
}

std::vector<fs::path> pluginDirectories() {
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("PLUGPOOL_PLUGIN_PATH")) {
    std::stringstream in(env);
    for (std::string dir; std::getline(in, dir, ':');) {
      if (!dir.empty()) dirs.emplace_back(dir);
    }
  }
  // The build tree's plugins, for the build tree's own libplugpool only: the same rule
  // applied to an installed library would search a folder beside libdir that nobody made
  // for plugpool (<prefix>/lib/plugins for lib/x86_64-linux-gnu).
  fs::path library = libraryDirectory();
  if (inBuildTree(library)) dirs.push_back(library.parent_path() / "plugins");
  // Installed: libdir/plugpool/plugins, found from where this library was loaded first (the
  // plugins installed with it, wherever the tree was copied), then at the configured prefix.
  addUnique(dirs, library / PLUGPOOL_PLUGINDIR_FROM_LIBDIR);
  addUnique(dirs, PLUGPOOL_INSTALL_PLUGINDIR);
  return dirs;
}

}  // namespace

std::string findWorkerExecutable(const std::string& configured) {
  // Named by the host or by the environment: that file or nothing, never a search.
  auto named = [](const std::string& file, const std::string& by) {
    std::error_code ec;
    if (isExecutableFile(file)) return fs::absolute(file).string();
    const char* why = fs::exists(file, ec) ? "is not an executable file" : "does not exist";
    throw StartError(by + " names " + file + ", which " + why);
  };
  if (!configured.empty()) return named(configured, "Options::workerExecutable");
  if (const char* env = std::getenv("PLUGPOOL_WORKER"); env != nullptr && *env != '\0') {
    return named(env, "PLUGPOOL_WORKER");
  }
  // The build tree's worker, next to its libplugpool. Installed: libexecdir, found from
  // where this library was loaded first (the worker installed with it, wherever the tree
  // was copied), then at the configured prefix.
  std::vector<fs::path> candidates;
  fs::path library = libraryDirectory();
  if (inBuildTree(library)) candidates.push_back(library / "plugpool-worker");
  if (*PLUGPOOL_WORKER_FROM_LIBDIR != '\0')
    addUnique(candidates, library / PLUGPOOL_WORKER_FROM_LIBDIR);
  addUnique(candidates, PLUGPOOL_INSTALL_WORKER);
  std::string looked;
  for (const auto& c : candidates) {
    if (isExecutableFile(c)) return fs::absolute(c).string();
    looked += (looked.empty() ? "" : ", ") + c.string();
  }
  throw StartError("cannot find the plugpool-worker executable (looked at " + looked +
                   "); set Options::workerExecutable or PLUGPOOL_WORKER");
}

std::string findPlugin(const std::string& spec) {
  if (spec.find('/') != std::string::npos) {
    std::error_code ec;
    fs::path p = fs::absolute(spec, ec);
    return ec ? spec : p.lexically_normal().string();
  }
  std::string looked;
  for (const auto& dir : pluginDirectories()) {
    for (const auto& file : {"lib" + spec + ".so", spec + ".so"}) {
      std::error_code ec;
      fs::path p = dir / file;
      if (fs::is_regular_file(p, ec)) return fs::absolute(p).lexically_normal().string();
    }
    looked += (looked.empty() ? "" : ", ") + dir.string();
  }
  throw PluginError("no plugin named \"" + spec + "\" (looked for lib" + spec + ".so and " + spec +
                    ".so in " + looked + "); give a path or set PLUGPOOL_PLUGIN_PATH");
}

void checkFoundPlugin(const std::string& spec, const PluginInfo& plugin) {
  if (spec.find('/') != std::string::npos || plugin.name == spec) return;
  throw PluginError(plugin.path + " was found for the plugin name \"" + spec +
                    "\", but it is the plugin \"" + plugin.name +
                    "\"; remove or rename that file, or give a path to load it as \"" +
                    plugin.name + "\"");
}

std::uint32_t bindTask(const PluginInfo& plugin, std::string_view name,
                       const std::vector<std::string>& argTypes, const std::string& resultType) {
  for (std::uint32_t i = 0; i < plugin.tasks.size(); ++i) {
    const TaskInfo& task = plugin.tasks[i];
    if (task.name != name) continue;
    if (task.argTypes != argTypes || task.resultType != resultType) {
      throw PluginError(plugin.name + "." + task.name + " is " + task.signature() +
                        ", but was bound as " + formatSignature(argTypes, resultType));
    }
    return i;
  }
  std::string names;
  for (const auto& t : plugin.tasks) names += (names.empty() ? "" : ", ") + t.name;
  throw PluginError("plugin " + plugin.name + " has no task \"" + std::string(name) +
                    "\"; it has: " + (names.empty() ? "(none)" : names));
}

}  // namespace plugpool::detail

namespace plugpool::detail {

TaskRef bindByName(const std::vector<PluginInfo>& plugins, std::string_view plugin,
                   std::string_view name, const std::vector<std::string>& argTypes,
                   const std::string& resultType) {
  for (std::uint32_t p = 0; p < plugins.size(); ++p) {
    if (plugins[p].name != plugin) continue;
    std::uint32_t t = bindTask(plugins[p], name, argTypes, resultType);
    return {p, t, plugins[p].name, plugins[p].tasks[t].name};
  }
  std::string names;
  for (const auto& p : plugins) names += (names.empty() ? "" : ", ") + p.name;
  throw PluginError("no plugin named \"" + std::string(plugin) +
                    "\" in this pool; it has: " + (names.empty() ? "(none)" : names));
}

}  // namespace plugpool::detail
