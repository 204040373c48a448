#include "plugpool/local_plugin.h"

#include "paths.h"
#include "plugin_loader.h"

namespace plugpool {

LocalPlugin::LocalPlugin(const std::string& plugin) {
  try {
    auto loaded = detail::loadPlugin(detail::findPlugin(plugin));
    descriptor_ = loaded.descriptor;
    info_ = detail::manifestOf(loaded);
    detail::checkFoundPlugin(plugin, info_);
  } catch (const detail::PluginLoadError& e) {
    throw PluginError(e.what());
  }
}

const abi::TaskDescriptor* LocalPlugin::bind(std::string_view name,
                                             const std::vector<std::string>& argTypes,
                                             const std::string& resultType) const {
  return &descriptor_->tasks[detail::bindTask(info_, name, argTypes, resultType)];
}

}  // namespace plugpool
