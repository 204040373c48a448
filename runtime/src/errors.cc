#include "plugpool/errors.h"

#include <string.h>

#include "termination.h"

namespace plugpool {

namespace detail {

std::string describeTermination(int signal, int exitStatus) {
  if (signal != 0) {
    const char* abbrev = sigabbrev_np(signal);
    return "was killed by signal " + std::to_string(signal) +
           (abbrev != nullptr ? std::string(" (SIG") + abbrev + ")" : "");
  }
  if (exitStatus >= 0) return "exited with status " + std::to_string(exitStatus);
  return "ended (exit status unknown)";
}

}  // namespace detail

namespace {

std::string crashMessage(int pid, int signal, int exitStatus, const std::string& plugin,
                         const std::string& task) {
  return "worker " + std::to_string(pid) + " " + detail::describeTermination(signal, exitStatus) +
         " while running " + plugin + "." + task;
}

}  // namespace

Error::Error(const std::string& what) : std::runtime_error(what) {}
Error::~Error() = default;

TaskError::TaskError(std::string plugin, std::string task, std::string remoteType,
                     std::string remoteMessage)
    : Error(plugin + "." + task + " raised " + remoteType + ": " + remoteMessage),
      plugin_(std::move(plugin)),
      task_(std::move(task)),
      remoteType_(std::move(remoteType)),
      remoteMessage_(std::move(remoteMessage)) {}
TaskError::~TaskError() = default;

WorkerCrashed::WorkerCrashed(int pid, int signal, int exitStatus, std::string plugin,
                             std::string task)
    : Error(crashMessage(pid, signal, exitStatus, plugin, task)),
      pid_(pid),
      signal_(signal),
      exitStatus_(exitStatus),
      plugin_(std::move(plugin)),
      task_(std::move(task)) {}
WorkerCrashed::~WorkerCrashed() = default;

PluginError::~PluginError() = default;
StartError::~StartError() = default;
ProtocolError::~ProtocolError() = default;
TaskTimeout::TaskTimeout(std::string plugin, std::string task, long long timeoutMs, unsigned items,
                         int pid)
    : Error(plugin + "." + task + " did not finish within its timeout of " +
            std::to_string(timeoutMs) + " ms per item" +
            (items > 1 ? " (a chunk of " + std::to_string(items) + " items)" : std::string()) +
            "; worker " + std::to_string(pid) + " was stopped and replaced"),
      plugin_(std::move(plugin)),
      task_(std::move(task)),
      timeoutMs_(timeoutMs) {}
TaskTimeout::~TaskTimeout() = default;
Cancelled::~Cancelled() = default;
PoolClosed::~PoolClosed() = default;
PoolBroken::~PoolBroken() = default;
WaitTimeout::~WaitTimeout() = default;
UsageError::~UsageError() = default;

}  // namespace plugpool
