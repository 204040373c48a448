#include "plugpool/errors.h"

#include <string.h>

#include <algorithm>
#include <iterator>
#include <string_view>

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

// "f(int) at src/a.cc:12", or what of it is known.
std::string describeFrame(const StackFrame& f) {
  std::string text = f.function.empty() ? "??" : f.function;
  if (!f.file.empty()) text += " at " + f.file + ":" + std::to_string(f.line);
  return text;
}

// The frame where the crash happened, for the message: the innermost one outside the C
// library's signal-raising calls (abort() and raise() put those on top).
const StackFrame* crashSite(const std::vector<StackFrame>& stack) {
  static constexpr std::string_view RAISING[] = {"raise", "abort", "gsignal", "pthread_kill"};
  for (const StackFrame& f : stack) {
    const std::string_view name = f.function;
    const bool raising = name.starts_with("__") || std::find(std::begin(RAISING), std::end(RAISING),
                                                             name) != std::end(RAISING);
    if (!raising) return &f;
  }
  return stack.empty() ? nullptr : &stack.front();
}

std::string crashMessage(int pid, const std::string& how, const std::string& plugin,
                         const std::string& task, const std::optional<std::uint64_t>& item,
                         const std::vector<StackFrame>& stack) {
  std::string message =
      "worker " + std::to_string(pid) + " " + how + " while running " + plugin + "." + task;
  if (item) message += " on item " + std::to_string(*item);
  if (const StackFrame* site = crashSite(stack)) message += ", in " + describeFrame(*site);
  return message;
}

}  // namespace

Error::Error(const std::string& what) : std::runtime_error(what) {}
Error::~Error() = default;

TaskError::TaskError(std::string plugin, std::string task, std::string remoteType,
                     std::string remoteMessage, std::optional<std::uint64_t> item, int workerPid)
    : Error(plugin + "." + task + " raised " + remoteType + ": " + remoteMessage),
      plugin_(std::move(plugin)),
      task_(std::move(task)),
      remoteType_(std::move(remoteType)),
      remoteMessage_(std::move(remoteMessage)),
      item_(item),
      workerPid_(workerPid) {}
TaskError::~TaskError() = default;

WorkerCrashed::WorkerCrashed(int pid, int signal, int exitStatus, std::string plugin,
                             std::string task, std::optional<std::uint64_t> item,
                             std::vector<StackFrame> stack, const std::string& how)
    : Error(crashMessage(pid, how.empty() ? detail::describeTermination(signal, exitStatus) : how,
                         plugin, task, item, stack)),
      pid_(pid),
      signal_(signal),
      exitStatus_(exitStatus),
      plugin_(std::move(plugin)),
      task_(std::move(task)),
      item_(item),
      stack_(std::move(stack)) {}
WorkerCrashed::~WorkerCrashed() = default;

std::string WorkerCrashed::stackTrace(std::size_t maxFrames) const {
  std::string text;
  for (std::size_t i = 0; i < stack_.size() && i < maxFrames; ++i) {
    text += "#" + std::to_string(i) + " " + describeFrame(stack_[i]) + "\n";
  }
  return text;
}

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
TaskTimeout::TaskTimeout(std::string plugin, std::string task, long long timeoutMs, int pid,
                         std::uint64_t item)
    : Error(plugin + "." + task + ": item " + std::to_string(item) +
            " did not finish within its timeout of " + std::to_string(timeoutMs) + " ms; worker " +
            std::to_string(pid) + " was stopped and replaced"),
      plugin_(std::move(plugin)),
      task_(std::move(task)),
      timeoutMs_(timeoutMs),
      item_(item) {}
TaskTimeout::~TaskTimeout() = default;
Cancelled::~Cancelled() = default;
PoolClosed::~PoolClosed() = default;
PoolBroken::~PoolBroken() = default;
WaitTimeout::~WaitTimeout() = default;
UsageError::~UsageError() = default;

}  // namespace plugpool
