#include "plugpool/pool.h"

#include <algorithm>
#include <thread>

#include "core.h"
#include "launcher.h"
#include "paths.h"

namespace plugpool {

std::size_t defaultChunksize(std::size_t items, unsigned workers) {
  const std::size_t chunks = 4 * static_cast<std::size_t>(std::max(1u, workers));
  return std::max<std::size_t>(1, (items + chunks - 1) / chunks);
}

Pool::Pool(Options options) {
  if (options.workers == 0) options.workers = std::max(1u, std::thread::hardware_concurrency());
  options.chunksInFlight = std::max(1u, options.chunksInFlight);
  std::vector<std::string> paths;
  for (const auto& spec : options.plugins) paths.push_back(detail::findPlugin(spec));
  const bool fork = options.startMethod == StartMethod::FORK;
  std::string worker = fork ? std::string() : detail::findWorkerExecutable(options.workerExecutable);
  auto launcher = fork ? detail::newForkLauncher() : detail::newPosixLauncher();
  core_ = std::make_unique<detail::Core>(std::move(options), std::move(paths), std::move(worker),
                                         std::move(launcher));
}

namespace {
Options withWorkers(unsigned workers, std::vector<std::string> plugins) {
  Options options;
  options.workers = workers;
  options.plugins = std::move(plugins);
  return options;
}
}  // namespace

Pool::Pool(unsigned workers, std::vector<std::string> plugins)
    : Pool(withWorkers(workers, std::move(plugins))) {}

Pool::~Pool() = default;

unsigned Pool::workers() const {
  return core_->workers();
}
const std::vector<PluginInfo>& Pool::plugins() const {
  return core_->plugins();
}
Stats Pool::stats() const {
  return core_->stats();
}

detail::TaskRef Pool::bind(std::string_view plugin, std::string_view name,
                           const std::vector<std::string>& argTypes,
                           const std::string& resultType) const {
  const auto& plugins = core_->plugins();
  for (std::uint32_t p = 0; p < plugins.size(); ++p) {
    if (plugins[p].name != plugin) continue;
    std::uint32_t t = detail::bindTask(plugins[p], name, argTypes, resultType);
    return {p, t, plugins[p].name, plugins[p].tasks[t].name};
  }
  std::string names;
  for (const auto& p : plugins) names += (names.empty() ? "" : ", ") + p.name;
  throw PluginError("no plugin named \"" + std::string(plugin) +
                    "\" in this pool; it has: " + (names.empty() ? "(none)" : names));
}

void Pool::submit(const std::shared_ptr<detail::Call>& call, detail::ChunkRequest chunk) {
  std::size_t index = call->addChunk();
  core_->submit(call, index, std::move(chunk));
}

}  // namespace plugpool
