// plugpool/errors.h — the one error vocabulary of plugpool, grouped by what the caller does.
//
// Every exception plugpool throws derives from plugpool::Error, so `catch (const
// plugpool::Error&)` is always enough. The subclasses say what to do next:
//
//   TaskError      the task itself threw (or its arguments did not decode). The remote type
//                  name and message say why. Other items are unaffected. Fix the input or task.
//   WorkerCrashed  the worker process running the item died (signal or exit status). The
//                  items it held fail; the pool replaces the worker and keeps serving. After
//                  a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) it names the item
//                  that was running and carries the worker's stack at the crash.
//   PluginError    a plugin cannot be used as asked: file missing or not a plugin, ABI or Cap'n
//                  Proto version mismatch, unknown plugin or task, or a signature that does not
//                  match the manifest. Raised early: at pool start or at bind time, before any
//                  work is sent. Fix the configuration.
//   StartError     the pool could not start (or restart) its workers: the worker executable
//                  is missing, or workers keep dying before they are ready.
//   ProtocolError  a worker sent a message that breaks the protocol (malformed, wrong size,
//                  unknown id). The worker is killed; its items fail with this error.
//   TaskTimeout    an item ran past its timeout (Options::taskTimeout or Task::withTimeout).
//                  Its worker was stopped and replaced; other chunks are unaffected. Fix the
//                  input or task, or raise the timeout.
//   Cancelled      the caller stopped the work: Future::cancel(), Pool::terminate(),
//                  terminateWorkers(), killWorkers(), or shutdown() with cancelPending. Nothing
//                  to retry unless you meant to.
//   PoolClosed     work was submitted after close(), shutdown() or terminate(), or a stream
//                  needed to send more of its input after that. Submit to a pool that is open.
//   PoolBroken     (a PoolClosed) the pool met an error it cannot go on from — its dispatcher
//                  failed, e.g. poll() refused its descriptors after RLIMIT_NOFILE was lowered
//                  below them — and stopped: its workers were killed, every unfinished and later
//                  call ends with this error naming the cause. The host goes on. Make a new pool.
//   WaitTimeout    get(timeout) or asCompleted(…, timeout) stopped waiting. Only the wait
//                  ended: the work goes on, and its result can still be waited for.
//   UsageError     the call is not allowed in the object's current state, e.g. join() before
//                  close(), successful() before the result is ready, or its arguments are
//                  invalid (a negative worker count). A bug in the caller.
//
// Thread safety: these are immutable values; copy and rethrow them freely across threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "plugpool/export.h"

namespace plugpool {

class PLUGPOOL_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what);
  ~Error() override;
};

class PLUGPOOL_API TaskError : public Error {
 public:
  TaskError(std::string plugin, std::string task, std::string remoteType, std::string remoteMessage,
            std::optional<std::uint64_t> item = std::nullopt, int workerPid = 0);
  ~TaskError() override;

  const std::string& plugin() const { return plugin_; }
  const std::string& task() const { return task_; }
  // The demangled type of what the task threw, e.g. "std::runtime_error".
  const std::string& remoteType() const { return remoteType_; }
  // The thrown exception's what().
  const std::string& remoteMessage() const { return remoteMessage_; }
  // Where it was thrown: the index in its call (as in map's input) of the item whose task
  // threw, and the worker process that ran it; nullopt and 0 where there was no such item
  // (a reply the host could not receive, a task run in-process by LocalPlugin).
  const std::optional<std::uint64_t>& item() const { return item_; }
  int workerPid() const { return workerPid_; }

 private:
  std::string plugin_, task_, remoteType_, remoteMessage_;
  std::optional<std::uint64_t> item_;
  int workerPid_;
};

// One frame of a crashed worker's stack, as the worker reported it: text for a human.
struct StackFrame {
  std::string function;  // demangled; empty if unknown
  std::string file;      // the source file, where the code has debug information; else empty
  unsigned line = 0;     // 0 if unknown
  std::uint64_t pc = 0;  // the program counter, in the worker's address space
};

class PLUGPOOL_API WorkerCrashed : public Error {
 public:
  // signal is the terminating signal number, or 0 if the worker exited with exitStatus (-1:
  // unknown). `item`: the index in its call of the item that was running, if known; `stack`:
  // the worker's stack at the crash, innermost first, if it reported one. `how`: what became
  // of the worker, in words, where its signal and status cannot say (a remote worker whose
  // connection was lost: "lost its connection to the host (Connection timed out)"); empty:
  // said from them.
  WorkerCrashed(int pid, int signal, int exitStatus, std::string plugin, std::string task,
                std::optional<std::uint64_t> item = std::nullopt,
                std::vector<StackFrame> stack = {}, const std::string& how = {});
  ~WorkerCrashed() override;

  int pid() const { return pid_; }
  int signal() const { return signal_; }
  int exitStatus() const { return exitStatus_; }
  const std::string& plugin() const { return plugin_; }
  const std::string& task() const { return task_; }
  // The index in the call (as in map's input) of the item that was running when the worker
  // died of a fatal signal; nullopt if unknown (another death, or a plugin that takes whole
  // chunks at once).
  const std::optional<std::uint64_t>& item() const { return item_; }
  // The worker's stack when a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) ended it,
  // innermost first, from the faulting instruction (for abort() and raise(), from inside the
  // C library); empty for other deaths (SIGKILL, an exit).
  const std::vector<StackFrame>& stack() const { return stack_; }
  // The first `maxFrames` frames, one per line: "#0 f(int) at src/plugin.cc:12".
  std::string stackTrace(std::size_t maxFrames = std::numeric_limits<std::size_t>::max()) const;

 private:
  int pid_, signal_, exitStatus_;
  std::string plugin_, task_;
  std::optional<std::uint64_t> item_;
  std::vector<StackFrame> stack_;
};

class PLUGPOOL_API PluginError : public Error {
 public:
  using Error::Error;
  ~PluginError() override;
};

class PLUGPOOL_API StartError : public Error {
 public:
  using Error::Error;
  ~StartError() override;
};

class PLUGPOOL_API ProtocolError : public Error {
 public:
  using Error::Error;
  ~ProtocolError() override;
};

class PLUGPOOL_API TaskTimeout : public Error {
 public:
  TaskTimeout(std::string plugin, std::string task, long long timeoutMs, unsigned items, int pid);
  // The call's item `item` ran past it (alone: the items around it were not lost).
  TaskTimeout(std::string plugin, std::string task, long long timeoutMs, int pid,
              std::uint64_t item);
  ~TaskTimeout() override;

  const std::string& plugin() const { return plugin_; }
  const std::string& task() const { return task_; }
  long long timeoutMs() const { return timeoutMs_; }  // per item
  // The index in its call of the item that ran past the timeout, if it is known (a worker
  // that says which item it runs); else a whole chunk timed out.
  std::optional<std::uint64_t> item() const { return item_; }

 private:
  std::string plugin_, task_;
  long long timeoutMs_;
  std::optional<std::uint64_t> item_;
};

class PLUGPOOL_API Cancelled : public Error {
 public:
  using Error::Error;
  ~Cancelled() override;
};

class PLUGPOOL_API PoolClosed : public Error {
 public:
  using Error::Error;
  ~PoolClosed() override;
};

class PLUGPOOL_API PoolBroken : public PoolClosed {
 public:
  using PoolClosed::PoolClosed;
  ~PoolBroken() override;
};

class PLUGPOOL_API WaitTimeout : public Error {
 public:
  using Error::Error;
  ~WaitTimeout() override;
};

class PLUGPOOL_API UsageError : public Error {
 public:
  using Error::Error;
  ~UsageError() override;
};

}  // namespace plugpool
