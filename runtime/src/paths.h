// paths.h — finding the worker executable and plugins by name. Internal.
#pragma once

#include <string>
#include <vector>

#include "plugpool/detail/call.h"
#include "plugpool/manifest.h"

namespace plugpool::detail {

// The worker executable to start: `configured` if not empty, else $PLUGPOOL_WORKER if set
// and not empty; either must name an executable file. Else the first executable of:
// plugpool-worker next to libplugpool when libplugpool is its build tree's own, the installed
// worker relative to libplugpool's folder (libdir/../libexec/plugpool-worker in a default
// install: right wherever the installed tree was copied), the installed worker at the
// configured prefix. Throws StartError: `configured` or $PLUGPOOL_WORKER names no executable
// file (saying which), or none was found (naming every place looked at).
std::string findWorkerExecutable(const std::string& configured);

// The absolute path of a plugin given as a path (contains '/') or a bare name, looked for in
// the folders Options::plugins lists (the build tree's plugins/ only for the build tree's own
// libplugpool). Throws PluginError naming every place looked at.
std::string findPlugin(const std::string& spec);

// Checks the manifest of the plugin loaded from findPlugin(spec): a bare name must find a
// plugin of that name, not another plugin that happens to have that file name. Throws
// PluginError naming the file and both names.
void checkFoundPlugin(const std::string& spec, const PluginInfo& plugin);

// Finds task `name` in `plugin` and checks its signature. Returns its index.
// Throws PluginError: no such task (listing the plugin's tasks), or a different signature
// (naming both).
std::uint32_t bindTask(const PluginInfo& plugin, std::string_view name,
                       const std::vector<std::string>& argTypes, const std::string& resultType);

// Binds task `name` of the plugin named `plugin` among `plugins`, checking its signature.
// Throws PluginError: no such plugin (listing those there), or as bindTask.
TaskRef bindByName(const std::vector<PluginInfo>& plugins, std::string_view plugin,
                   std::string_view name, const std::vector<std::string>& argTypes,
                   const std::string& resultType);

}  // namespace plugpool::detail
