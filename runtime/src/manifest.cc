#include "plugpool/manifest.h"

namespace plugpool {

std::string formatSignature(const std::vector<std::string>& argTypes,
                            const std::string& resultType) {
  std::string s = "(";
  for (std::size_t i = 0; i < argTypes.size(); ++i) s += (i > 0 ? ", " : "") + argTypes[i];
  return s + ") -> " + resultType;
}

std::string TaskInfo::signature() const {
  return formatSignature(argTypes, resultType);
}

const TaskInfo* PluginInfo::find(std::string_view task) const {
  for (const auto& t : tasks) {
    if (t.name == task) return &t;
  }
  return nullptr;
}

}  // namespace plugpool
