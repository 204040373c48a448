"""plugpool: a process pool whose tasks are C++ functions in plugins, called by name.

    import plugpool
    with plugpool.Pool(4, ["examples"]) as pool:
        print(pool.map("examples.square", range(10)))      # [0, 1, 4, 9, ..., 81]

Like multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor, but nothing is pickled:
each worker loads the plugins, and arguments and results travel as Cap'n Proto messages,
converted by the task's declared types (int, float, bool, str, bytes-like data, lists,
tuples, dicts for structs). A task that crashes or hangs fails only its own item
(WorkerCrashed, TaskTimeout); the worker is replaced and the pool goes on.

Tasks are named "plugin.task", or bound once with pool.task("plugin", "task").
"""

import atexit
import concurrent.futures
import os
import threading
import weakref

from . import _errors, _plugpool
from ._errors import *  # noqa: F401,F403 (the error hierarchy is part of the API)

__all__ = ["Pool", "Task", "AsyncResult"] + _errors.__all__

# Pools still open when the interpreter exits are shut down first, waiting for their work as
# concurrent.futures' executors do: their callbacks run Python, which must still be there.
_open_pools = weakref.WeakSet()


@atexit.register
def _shut_down_open_pools():
    for pool in list(_open_pools):
        pool.shutdown(wait=True)
    # shutdown() returns once the work is done; its callbacks may still be running Python.
    _plugpool.drain_callbacks()


class Task:
    """A task bound by name: callable as pool.apply(task, ...) would be, with its manifest's
    `arg_types`, `result_type` and `doc`."""

    def __init__(self, pool, bound):
        self._pool, self._bound = pool, bound

    plugin = property(lambda self: self._bound.plugin)
    name = property(lambda self: self._bound.name)
    arg_types = property(lambda self: list(self._bound.arg_types))
    result_type = property(lambda self: self._bound.result_type)
    doc = property(lambda self: self._bound.doc)
    signature = property(lambda self: self._bound.signature)

    def __call__(self, *args):
        return self._pool.apply(self, args)

    def __repr__(self):
        return f"<plugpool.Task {self.plugin}.{self.name} {self.signature}>"


class AsyncResult:
    """multiprocessing's AsyncResult: get(timeout), wait(timeout), ready(), successful()."""

    def __init__(self, future, callback=None, error_callback=None):
        self._future = future
        if callback is not None or error_callback is not None:
            def done():
                try:
                    value = future.result(0)
                except BaseException as e:  # noqa: B902 (handed to the error callback)
                    if error_callback is not None:
                        error_callback(e)
                else:
                    if callback is not None:
                        callback(value)
            future.add_done_callback(done)

    def get(self, timeout=None):
        return self._future.result(timeout)

    def wait(self, timeout=None):
        self._future.wait(timeout)

    def ready(self):
        return self._future.done()

    def successful(self):
        if not self._future.done():
            raise ValueError(f"{self!r} not ready")
        return self._future.successful()


class Pool:
    """A pool of `processes` worker processes (default: one per core), each loading every
    plugin in `plugins` (paths, or names found in $PLUGPOOL_PLUGIN_PATH and the install).

    initializer, initargs: a task "plugin.task" each worker runs once with initargs before
        any other work (e.g. to load a model); its arguments are converted by its declared
        types. If it fails, the pool does not start (StartError) rather than respawning
        workers that fail the same way.
    maxtasksperchild: replace a worker after this many items (None: never).
    task_timeout: seconds an item may run (None: no limit); past it, the item fails with
        TaskTimeout and its worker is replaced.
    crash_retries: times an item whose worker crashed while running it is sent again before it
        fails (alone: the items of its chunk that had run keep their results).
    limits: a dict of per-worker limits: memory_bytes, cpu_seconds, open_files.

    `with Pool(...) as pool:` ends by closing the pool and waiting for its work (shutdown),
    unlike multiprocessing.Pool.__exit__, which terminates it. Call terminate() to drop work.
    A pool still open when the interpreter exits is shut down the same way first.
    """

    def __init__(self, processes=None, plugins=(), *, initializer=None, initargs=(),
                 maxtasksperchild=None, task_timeout=None, crash_retries=0, limits=None,
                 start_timeout=None):
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        limits = dict(limits or {})
        unknown = set(limits) - {"memory_bytes", "cpu_seconds", "open_files"}
        if unknown:
            raise TypeError(f"unknown limits: {', '.join(sorted(unknown))}")
        init = None
        if initializer is not None:
            if not isinstance(initializer, str) or "." not in initializer:
                raise TypeError("initializer is a task named \"plugin.task\", run once in each "
                                "worker before any other work (nothing is pickled)")
            plugin, _, name = initializer.rpartition(".")
            init = (plugin, name)
        self._pool = _plugpool._Pool(
            processes or 0, [os.fspath(p) for p in plugins],
            max_tasks_per_child=maxtasksperchild or 0,
            task_timeout_ms=round((task_timeout or 0) * 1000),
            crash_retries=crash_retries,
            memory_bytes=limits.get("memory_bytes", 0),
            cpu_seconds=limits.get("cpu_seconds", 0),
            open_files=limits.get("open_files", 0),
            start_timeout_ms=round((start_timeout or 0) * 1000),
            initializer=init, initargs=tuple(initargs))
        self._tasks = {}
        self._lock = threading.Lock()
        _open_pools.add(self)

    # --- tasks ----------------------------------------------------------------------------

    def task(self, plugin, name=None):
        """The task `name` of `plugin` (or "plugin.task" as one string), bound once."""
        if name is None:
            plugin, _, name = plugin.rpartition(".")
        with self._lock:
            task = self._tasks.get((plugin, name))
            if task is None:
                task = self._tasks[(plugin, name)] = Task(self, self._pool.task(plugin, name))
        return task

    def tasks(self):
        """The plugins' manifests: {plugin: {"path": ..., "tasks": {name: {...}}}}."""
        return {name: {"path": path,
                       "tasks": {t: {"arg_types": a, "result_type": r, "doc": d}
                                 for t, a, r, d in tasks}}
                for name, path, tasks in self._pool.plugins()}

    def _bound(self, func):
        if isinstance(func, Task):
            return func._bound
        if isinstance(func, str):
            return self.task(func)._bound
        raise TypeError(f"a task is named \"plugin.task\" or bound with pool.task(), "
                        f"not {type(func).__name__} (plugpool runs C++ tasks; nothing is pickled)")

    # --- multiprocessing.Pool -------------------------------------------------------------

    def apply(self, func, args=(), kwds=None):
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        if kwds:
            raise TypeError("plugpool tasks take positional arguments only")
        future = self._pool.map_async(self._bound(func), [tuple(args)], 1, star=True, single=True)
        return AsyncResult(future, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        future = self._pool.map_async(self._bound(func), iterable, chunksize or 0)
        return AsyncResult(future, callback, error_callback)

    def starmap(self, func, iterable, chunksize=None):
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        future = self._pool.map_async(self._bound(func), iterable, chunksize or 0, star=True)
        return AsyncResult(future, callback, error_callback)

    def imap(self, func, iterable, chunksize=1):
        """Results in input order, lazily: at most a few chunks per worker are out at once,
        so an endless iterable runs in flat memory."""
        return self._stream(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func, iterable, chunksize=1):
        """Results as their chunks finish, lazily, as imap."""
        return self._stream(func, iterable, chunksize, ordered=False)

    def _stream(self, func, iterable, chunksize, ordered):
        # A few chunks per worker out at once, and for small chunks at least about a hundred
        # items, so that the workers never wait for the host.
        chunksize = max(1, chunksize)
        window = max(4 * self._pool.processes(), 128 // chunksize)
        return self._pool.stream(self._bound(func), iterable, chunksize, window, ordered)

    # --- concurrent.futures.Executor ------------------------------------------------------

    def submit(self, fn, /, *args):
        """A concurrent.futures.Future of fn(*args): works with wait(), as_completed() and
        asyncio.wrap_future()."""
        outcome = concurrent.futures.Future()
        outcome.set_running_or_notify_cancel()
        future = self._pool.map_async(self._bound(fn), [args], 1, star=True, single=True)

        def settle():
            try:
                outcome.set_result(future.result(0))
            except BaseException as e:  # noqa: B902 (the future's own exception)
                outcome.set_exception(e)
        future.add_done_callback(settle)
        return outcome

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._pool.shutdown(wait, cancel_futures)

    # --- life -----------------------------------------------------------------------------

    def close(self):
        self._pool.close()

    def join(self):
        self._pool.join()

    def terminate(self):
        self._pool.terminate_workers()

    def terminate_workers(self):
        self._pool.terminate_workers()

    def kill_workers(self):
        self._pool.kill_workers()

    def stats(self):
        return self._pool.stats()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown(wait=True)
        return False

    def __repr__(self):
        return f"<plugpool.Pool processes={self._pool.processes()}>"
