#include "plugpool/pool.h"

#include <algorithm>
#include <string>
#include <thread>

#include "core.h"
#include "launcher.h"
#include "local_link.h"
#include "remote_link.h"
#include "paths.h"

namespace plugpool {

std::size_t defaultChunksize(std::size_t items, unsigned workers) {
  const std::size_t chunks = 4 * static_cast<std::size_t>(std::max(1u, workers));
  return std::max<std::size_t>(1, (items + chunks - 1) / chunks);
}

Pool::Pool(Options options) {
  if (options.workers < 0) {
    throw UsageError("workers must be 1 or more, or 0 for one per core; got " +
                     std::to_string(options.workers));
  }
  if (options.workers == 0) {
    options.workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  std::vector<std::string> paths;
  for (const auto& spec : options.plugins) paths.push_back(detail::findPlugin(spec));
  const bool fork = options.startMethod == StartMethod::FORK;
  if (fork && options.remote) {
    throw UsageError("remote workers are started by a launcher: StartMethod::FORK cannot be used");
  }
  std::string worker =
      fork ? std::string() : detail::findWorkerExecutable(options.workerExecutable);
  const detail::LinkConfig links{options.stopTimeout, options.idleMemoryTimeout,
                                 options.maxMessageBytes};
  std::unique_ptr<detail::Transport> transport;
  if (options.remote) {
    transport = detail::newRemoteTransport(*options.remote, std::move(worker), links);
  } else {
    auto launcher = fork ? detail::newForkLauncher() : detail::newPosixLauncher();
    transport = detail::newLocalTransport(std::move(launcher), std::move(worker), links);
  }
  core_ =
      std::make_shared<detail::Core>(std::move(options), std::move(paths), std::move(transport));
  callbacks_ = std::make_shared<detail::CallbackQueue>();
}

namespace {
Options withWorkers(int workers, std::vector<std::string> plugins) {
  Options options;
  options.workers = workers;
  options.plugins = std::move(plugins);
  return options;
}
}  // namespace

Pool::Pool(int workers, std::vector<std::string> plugins)
    : Pool(withWorkers(workers, std::move(plugins))) {}

Pool::~Pool() {
  shutdown(/*wait=*/true);
  callbacks_->stop();
}

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
  auto ref = detail::bindByName(core_->plugins(), plugin, name, argTypes, resultType);
  ref.timeout = core_->options().taskTimeout;
  return ref;
}

std::shared_ptr<detail::Call> Pool::newCall(const detail::TaskRef& task) const {
  core_->checkOpen();
  return std::make_shared<detail::Call>(task, core_, callbacks_);
}

bool Pool::streamWindowGrows(std::size_t asked) const {
  return asked == 0 && core_->options().streamWindow == 0;
}

std::size_t Pool::streamWindow(std::size_t asked) const {
  if (asked != 0) return asked;
  if (core_->options().streamWindow != 0) return core_->options().streamWindow;
  return 4 * static_cast<std::size_t>(workers());
}

void Pool::close() {
  core_->close();
}

void Pool::join() {
  core_->join();
}

void Pool::shutdown(bool wait, bool cancelPending) {
  if (cancelPending) {
    core_->cancelQueued();
  } else {
    core_->close();
  }
  if (wait) core_->join();
}

void Pool::terminateWorkers() {
  core_->terminate(detail::Stop::TERMINATE);
}

void Pool::killWorkers() {
  core_->terminate(detail::Stop::KILL);
}

bool Pool::closed() const {
  return core_->closed();
}

}  // namespace plugpool
