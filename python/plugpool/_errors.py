"""plugpool's errors, by what the caller should do (the C++ library's errors.h, in Python)."""

__all__ = [
    "Error", "TaskError", "WorkerCrashed", "TaskTimeout", "Cancelled", "PoolClosed",
    "PoolBroken", "PluginError", "StartError", "ProtocolError", "WaitTimeout", "UsageError",
]


class Error(Exception):
    """Every error of plugpool's own."""


class TaskError(Error):
    """A task raised (a C++ exception in the plugin): `type` is the exception's type,
    `message` its what(), `task` "plugin.task", `item` its index in the call (or None)."""

    def __init__(self, text, type=None, message=None, task=None, item=None, worker_pid=None):
        super().__init__(text)
        self.type, self.message, self.task, self.item = type, message, task, item
        self.worker_pid = worker_pid


class WorkerCrashed(Error):
    """The worker running the item died: `signal` (0 if none) or `exit_status` (-1 if none),
    `pid`, `task`, `item` (the item that was running, when known)."""

    def __init__(self, text, signal=0, exit_status=-1, pid=None, task=None, item=None):
        super().__init__(text)
        self.signal, self.exit_status, self.pid, self.task, self.item = (
            signal, exit_status, pid, task, item)


class TaskTimeout(Error):
    """An item ran past its timeout (seconds); its worker was stopped and replaced. `item`:
    its index in the call, when known (a local worker times each item)."""

    def __init__(self, text, task=None, timeout=None, item=None):
        super().__init__(text)
        self.task, self.timeout, self.item = task, timeout, item


class Cancelled(Error):
    """The work was cancelled (cancel(), terminate(), shutdown(cancel_futures=True))."""


class PoolClosed(Error):
    """The pool takes no more work (after close(), shutdown() or terminate())."""


class PoolBroken(PoolClosed):
    """The pool's dispatcher failed; it takes no more work. Make a new pool."""


class PluginError(Error):
    """A plugin or task cannot be used: missing, not a plugin, no such task."""


class StartError(Error):
    """Workers could not be started."""


class ProtocolError(Error):
    """A worker broke the protocol; it was replaced."""


class WaitTimeout(Error, TimeoutError):
    """A wait (get(timeout), result(timeout)) ran out of time; the work goes on."""


class UsageError(Error):
    """A call that is not allowed now (join() before close())."""
