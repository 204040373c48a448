#include "remote_link.h"

#include <algorithm>
#include <cstdlib>
#include <system_error>
#include <utility>

#include "plugpool/errors.h"
#include "rendezvous.h"
#include "tcp.h"

namespace plugpool {

LaunchCommand::LaunchCommand(std::vector<std::string> prefix) : prefixes{std::move(prefix)} {}

LaunchCommand LaunchCommand::spread(std::vector<std::vector<std::string>> prefixes) {
  LaunchCommand command;
  command.prefixes = std::move(prefixes);
  return command;
}

namespace detail {

namespace {

class RemoteTransport final : public Transport {
 public:
  RemoteTransport(std::vector<std::vector<std::string>> prefixes, std::string address,
                  Liveness liveness, std::string workerExecutable, LinkConfig config)
      : prefixes_(std::move(prefixes)),
        address_(std::move(address)),
        liveness_(liveness),
        executable_(std::move(workerExecutable)),
        config_(config) {
    config_.launcher = true;
    for (std::size_t i = 0; i < prefixes_.size(); ++i)
      placements_.push_back(std::make_shared<int>());
  }

  std::unique_ptr<WorkerLink> start(HostSession session, LinkEvents& events) override {
    // The prefix running the fewest workers (each link holds its placement while it lives).
    const std::size_t at =
        static_cast<std::size_t>(std::min_element(placements_.begin(), placements_.end(),
                                                  [](const auto& a, const auto& b) {
                                                    return a.use_count() < b.use_count();
                                                  }) -
                                 placements_.begin());
    UniqueFd listener = listenOn(address_);
    const Secret secret = newSecret();
    const auto argv =
        workerCommand(prefixes_[at], executable_, localEndpoint(listener.get()), liveness_);
    SpawnedProcess process;
    try {
      process = spawnCommand(argv, {std::string(SECRET_VARIABLE) + "=" + toHex(secret)});
    } catch (const std::system_error& e) {
      throw StartError("cannot start a remote worker with " + argv[0] + ": " + e.what());
    }
    auto rendezvous =
        std::make_unique<Rendezvous>(std::move(listener), secret, liveness_,
                                     [&events](const std::string& why) { events.refused(why); });
    return newProcessLink(std::move(process), std::move(session), events, config_,
                          std::move(rendezvous), placements_[at]);
  }

 private:
  std::vector<std::vector<std::string>> prefixes_;
  std::string address_;
  Liveness liveness_;
  std::string executable_;
  LinkConfig config_;
  std::vector<std::shared_ptr<int>> placements_;
};

}  // namespace

std::vector<std::string> workerCommand(const std::vector<std::string>& prefix,
                                       const std::string& workerExecutable,
                                       const std::string& endpoint, const Liveness& liveness) {
  std::vector<std::string> argv = prefix;
  argv.insert(argv.end(), {workerExecutable, "--connect", endpoint,
                           "--liveness=" + std::to_string(liveness.idle.count()) + "," +
                               std::to_string(liveness.interval.count()) + "," +
                               std::to_string(liveness.probes) + "," +
                               std::to_string(liveness.userTimeout.count())});
  return argv;
}

std::vector<std::string> slurmPrefix(const Slurm& slurm) {
  std::vector<std::string> prefix = {slurm.srun,
                                     "--exact",
                                     "--ntasks=1",
                                     "--nodes=1",
                                     "--cpus-per-task=" + std::to_string(slurm.cpusPerWorker),
                                     "--job-name=plugpool-worker",
                                     "--quiet"};
  prefix.insert(prefix.end(), slurm.extraArgs.begin(), slurm.extraArgs.end());
  return prefix;
}

std::unique_ptr<Transport> newRemoteTransport(const Remote& remote, std::string workerExecutable,
                                              LinkConfig config) {
  std::vector<std::vector<std::string>> prefixes;
  if (const auto* slurm = std::get_if<Slurm>(&remote.launcher)) {
    if (std::getenv("SLURM_JOB_ID") == nullptr) {
      throw StartError(
          "plugpool::Slurm starts workers as job steps of the allocation the host runs in, and "
          "there is none (SLURM_JOB_ID is not set): run the host inside salloc or sbatch");
    }
    if (slurm->cpusPerWorker == 0) throw UsageError("Slurm::cpusPerWorker must be 1 or more");
    prefixes.push_back(slurmPrefix(*slurm));
  } else {
    prefixes = std::get<LaunchCommand>(remote.launcher).prefixes;
    if (prefixes.empty() ||
        std::any_of(prefixes.begin(), prefixes.end(), [](const auto& p) { return p.empty(); })) {
      throw UsageError("LaunchCommand needs one or more command prefixes, none of them empty");
    }
  }
  std::string address = remote.address.empty() ? defaultAddress() : remote.address;
  // Fails now, in the constructor, if it cannot; and the workers are told the address it is
  // bound to, which must be one they can connect to.
  const std::string bound = localEndpoint(listenOn(address).get());
  if (bound.starts_with("0.0.0.0:") || bound.starts_with("[::]:")) {
    throw UsageError("Remote::address " + address +
                     " is a wildcard, which workers cannot connect to: give an address of this "
                     "host that they can reach");
  }
  return std::make_unique<RemoteTransport>(std::move(prefixes), std::move(address), remote.liveness,
                                           std::move(workerExecutable), config);
}

}  // namespace detail
}  // namespace plugpool
