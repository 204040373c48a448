#include "local_link.h"

#include <system_error>
#include <utility>

#include "plugpool/errors.h"
#include "process_link.h"

namespace plugpool::detail {

namespace {

class LocalTransport final : public Transport {
 public:
  LocalTransport(std::unique_ptr<Launcher> launcher, std::string executable, LinkConfig config)
      : launcher_(std::move(launcher)), executable_(std::move(executable)), config_(config) {}

  std::unique_ptr<WorkerLink> start(HostSession session, LinkEvents& events) override {
    SpawnedProcess process;
    try {
      process = launcher_->spawn(executable_);
    } catch (const std::system_error& e) {
      throw StartError((executable_.empty()
                            ? std::string("cannot fork a worker: ")
                            : "cannot start worker executable " + executable_ + ": ") +
                       e.what());
    }
    return newProcessLink(std::move(process), std::move(session), events, config_);
  }

 private:
  std::unique_ptr<Launcher> launcher_;
  std::string executable_;
  LinkConfig config_;
};

}  // namespace

std::unique_ptr<Transport> newLocalTransport(std::unique_ptr<Launcher> launcher,
                                             std::string executable, LinkConfig config) {
  return std::make_unique<LocalTransport>(std::move(launcher), std::move(executable), config);
}

}  // namespace plugpool::detail
