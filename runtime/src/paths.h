// paths.h — finding the worker executable and plugins by name. Internal.
#pragma once

#include <string>
#include <vector>

#include "plugpool/detail/call.h"
#include "plugpool/manifest.h"

namespace plugpool::detail {

// The worker executable to start: `configured` if not empty, else the first executable of
// $PLUGPOOL_WORKER, plugpool-worker next to libplugpool (a build tree), the installed worker
// relative to libplugpool's folder (libdir/../libexec/plugpool-worker in a default install:
// right wherever the installed tree was copied), the installed worker at the configured
// prefix. Throws StartError naming every place looked at.
std::string findWorkerExecutable(const std::string& configured);

// The absolute path of a plugin given as a path (contains '/') or a bare name (see
// Options::plugins). Throws PluginError naming every place looked at.
std::string findPlugin(const std::string& spec);

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
