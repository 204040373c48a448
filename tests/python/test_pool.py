"""`import plugpool` with real workers: the calls of multiprocessing.Pool and
concurrent.futures, the conversions by declared type and their errors, crashes, timeouts,
cancellation, Ctrl-C, threads, zero-copy data, and no worker left after each test.

Run by meson (`meson test -C build python`) with PYTHONPATH set to the built module and
PLUGPOOL_TEST_FIXTURES to the fixture plugins' folder.
"""

import asyncio
import concurrent.futures
import os
import signal
import threading
import time

import pytest

import plugpool

FAULTS = os.path.join(os.environ.get("PLUGPOOL_TEST_FIXTURES", ""), "libfaults.so")


def children():
    """The pids whose parent is this process."""
    me, pids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == me:
            pids.append(int(entry))
    return pids


@pytest.fixture(autouse=True)
def no_worker_left():
    yield
    deadline = time.monotonic() + 10
    while children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children() == [], "worker processes left behind"


@pytest.fixture
def pool():
    with plugpool.Pool(2, ["examples"]) as p:
        yield p


# --- the lesson's examples ---------------------------------------------------------------

def test_the_first_example_squares_a_range():
    p = plugpool.Pool(4, ["examples"])
    assert p.map("examples.square", range(10)) == [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    p.close()
    p.join()


def test_slow_tasks_run_in_parallel():
    with plugpool.Pool(2, ["examples"]) as p:
        start = time.monotonic()
        assert p.map("examples.slow_task", range(4), chunksize=1) == [0, 1, 4, 9]
        parallel = time.monotonic() - start
    assert parallel < 4 * 0.1 * 0.9  # 100 ms each, serially 0.4 s


# --- the calls ---------------------------------------------------------------------------

def test_every_call_of_multiprocessing_pool(pool):
    square = pool.task("examples", "square")
    assert square.arg_types == ["int64"] and square.result_type == "int64"
    assert square.doc == "Returns x * x."
    assert square(7) == 49
    assert pool.apply(square, (3,)) == 9
    assert pool.map(square, range(1000), chunksize=7) == [i * i for i in range(1000)]
    assert pool.starmap("examples.add", [(1, 2), (0.5, 0.25)]) == [3.0, 0.75]
    assert list(pool.imap(square, range(100))) == [i * i for i in range(100)]
    assert sorted(pool.imap_unordered(square, range(100), chunksize=3)) == \
        [i * i for i in range(100)]
    r = pool.apply_async(square, (5,))
    assert r.get(timeout=30) == 25 and r.ready() and r.successful()
    assert pool.map_async(square, [1, 2]).get() == [1, 4]
    assert pool.starmap_async("examples.add", [(1, 1)]).get() == [2.0]
    got = []
    done = threading.Event()
    pool.apply_async(square, (6,), callback=lambda v: (got.append(v), done.set()))
    assert done.wait(30) and got == [36]
    assert "examples" in pool.tasks() and "square" in pool.tasks()["examples"]["tasks"]


def test_submit_returns_a_real_concurrent_future(pool):
    futures = [pool.submit("examples.square", i) for i in range(20)]
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 20
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == \
        sorted(i * i for i in range(20))

    async def main():
        return await asyncio.wrap_future(pool.submit("examples.square", 12))
    assert asyncio.run(main()) == 144


def test_imap_unordered_is_lazy_over_an_endless_generator(pool):
    def endless():
        i = 0
        while True:
            yield i
            i += 1
    seen = 0
    for _ in pool.imap_unordered("examples.square", endless(), chunksize=100):
        seen += 1
        if seen == 20000:
            break
    assert seen == 20000


def test_a_failed_item_of_imap_raises_in_its_place_and_the_stream_goes_on(pool):
    results = pool.imap("examples.set_offset", [1, 2, -3, 4], chunksize=1)
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(plugpool.TaskError, match="negative offset -3"):
        next(results)
    assert list(results) == [4]
    with pytest.raises(TypeError, match="expected int64, got str"):
        list(pool.imap_unordered("examples.square", [1, "x"]))


def test_imap_unordered_runs_in_flat_memory():
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def endless():
        i = 0
        while True:
            yield i
            i += 1
    with plugpool.Pool(2, ["examples"]) as p:
        results = p.imap_unordered("examples.square", endless(), chunksize=10)
        for _ in range(20000):  # warm-up: the window, the buffers, the allocator
            next(results)
        before = rss()
        for _ in range(300000):
            next(results)
        grown = rss() - before
        results.close()
    # 15 items' worth of anything kept per item would be far more than this.
    assert grown < 16 << 20, f"RSS grew by {grown} bytes over 300 000 items"


def test_initializer_runs_once_in_each_worker_before_any_work():
    with plugpool.Pool(2, ["examples"], initializer="examples.set_offset",
                       initargs=(1000,)) as p:
        assert p.map("examples.add_offset", range(20), chunksize=1) == \
            [1000 + i for i in range(20)]


def test_an_initializer_that_fails_or_does_not_fit_fails_the_start():
    with pytest.raises(plugpool.StartError, match="initializer"):
        plugpool.Pool(1, ["examples"], initializer="examples.set_offset", initargs=(-1,))
    with pytest.raises(TypeError, match="expected int64, got str"):
        plugpool.Pool(1, ["examples"], initializer="examples.set_offset", initargs=("x",))
    with pytest.raises(TypeError, match="takes 1 arguments, got 2"):
        plugpool.Pool(1, ["examples"], initializer="examples.set_offset", initargs=(1, 2))
    with pytest.raises(plugpool.PluginError, match="no task"):
        plugpool.Pool(1, ["examples"], initializer="examples.nope")
    with pytest.raises(TypeError, match="nothing is pickled"):
        plugpool.Pool(1, ["examples"], initializer=print)


def test_callbacks_run_on_plugpools_thread_with_the_gil(pool):
    threads = []
    done = threading.Event()
    future = pool.submit("examples.square", 3)
    future.add_done_callback(lambda f: threads.append(("future", threading.get_ident())))
    pool.apply_async("examples.sleep_ms", (50,),
                     callback=lambda v: (threads.append(("apply", threading.get_ident())),
                                         done.set()))
    assert future.result(30) == 9 and done.wait(30)
    errors = []
    failed = threading.Event()
    pool.map_async("examples.fail", [1], error_callback=lambda e: (errors.append(e),
                                                                    failed.set()))
    assert failed.wait(30) and isinstance(errors[0], plugpool.TaskError)
    assert {name for name, _ in threads} == {"future", "apply"}
    apply_thread = dict(threads)["apply"]
    assert apply_thread != threading.get_ident()


def test_threads_share_one_pool(pool):
    results = {}

    def work(k):
        results[k] = pool.map("examples.square", range(k * 100, k * 100 + 500), chunksize=13)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results[k] == [i * i for i in range(k * 100, k * 100 + 500)] for k in range(6))


def test_shutdown_with_cancel_futures_cancels_what_has_not_started():
    p = plugpool.Pool(1, ["examples"])
    # The worker is up, and has told the pool its chunks are slow: it gets only a couple of
    # chunks ahead (chunksInFlight), so most of the queued ones are still in the host.
    p.apply("examples.sleep_ms", (50,))
    running = p.submit("examples.sleep_ms", 1000)
    queued = [p.submit("examples.sleep_ms", 1000) for _ in range(5)]
    time.sleep(0.3)
    p.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) == 1000
    outcomes = [type(f.exception(0)).__name__ if f.exception(0) else "done" for f in queued]
    assert "Cancelled" in outcomes, outcomes
    with pytest.raises(plugpool.PoolClosed):
        p.submit("examples.square", 1)


def test_kill_workers_and_terminate_workers_end_the_pool():
    for stop in ("kill_workers", "terminate_workers"):
        p = plugpool.Pool(1, [FAULTS])
        r = p.apply_async("faults.sleep_ms", (60000,))
        time.sleep(0.2)
        start = time.monotonic()
        getattr(p, stop)()
        assert time.monotonic() - start < 10
        with pytest.raises(plugpool.Cancelled):
            r.get(timeout=30)
        p.join()


# --- values ------------------------------------------------------------------------------

def test_values_convert_by_the_declared_types(pool):
    assert pool.apply("examples.upper", ("héllo",)) == "HéLLO"
    assert pool.apply("examples.sum", ((i for i in range(10)),)) == 45
    assert pool.apply("examples.sort_words", (["b", "a"],)) == ["a", "b"]
    assert pool.apply("examples.min_max", ([3.5, -1, 8],)) == (-1.0, 8.0)
    assert sorted(pool.apply("examples.word_count", ("to be or not to be",))) == \
        [("be", 2), ("not", 1), ("or", 1), ("to", 2)]
    for data in (b"\x00\x01", bytearray(b"ab"), memoryview(b"xyz")):
        assert pool.apply("examples.echo_bytes", (data,)) == bytes(data)
    square = {"name": "sq", "points": [{"x": 0, "y": 0}, {"x": 2, "y": 0}, {"x": 2, "y": 2},
                                       {"x": 0, "y": 2}]}
    stats = pool.apply("examples.polygon_stats", (square,))
    assert stats == {"name": "sq", "vertices": 4, "area": 4.0, "perimeter": 8.0,
                     "centroid": {"x": 1.0, "y": 1.0}}


def test_values_that_do_not_fit_fail_before_anything_is_sent(pool):
    sent = pool.stats()["chunks_sent"]
    with pytest.raises(OverflowError):
        pool.apply("examples.square", (2 ** 63,))
    with pytest.raises(TypeError, match="expected int64, got str"):
        pool.map("examples.square", [1, 2, "3"])
    with pytest.raises(TypeError):
        pool.apply("examples.square", (True,))  # a bool is not an int64
    with pytest.raises(TypeError):
        pool.apply("examples.upper", (b"bytes",))
    with pytest.raises(TypeError, match="takes 2 arguments, got 1"):
        pool.apply("examples.add", (1,))
    with pytest.raises(TypeError, match='struct Polygon has no field "nope"; its fields are name, points'):
        pool.apply("examples.polygon_stats", ({"nope": 1},))
    with pytest.raises(TypeError, match="nothing is pickled"):
        pool.map(lambda x: x, [1])
    assert pool.stats()["chunks_sent"] == sent


def test_large_data_results_are_not_copied(pool):
    big = bytes(range(256)) * (8 << 12)  # 8 MiB
    back = pool.apply("examples.echo_bytes", (big,))
    assert isinstance(back, memoryview) and back.readonly and back == big
    numpy = pytest.importorskip("numpy")

    def address(view):
        return numpy.frombuffer(view, dtype=numpy.uint8).__array_interface__["data"][0]

    def mapping(addr):
        for line in open("/proc/self/maps"):
            span, *rest = line.split()
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= addr < hi:
                return line
        return ""
    # The result is read where the worker wrote it: in the pool's shared region (a fresh
    # pool's, whose region no earlier result still holds), once for every get().
    with plugpool.Pool(1, ["examples"]) as fresh:
        r = fresh.apply_async("examples.echo_bytes", (big,))
        first, second = r.get(), r.get()
        assert address(first) == address(second)
        assert "memfd:plugpool-shared" in mapping(address(first))
        del first, second, r
    array = numpy.arange(1 << 20, dtype=numpy.uint8)
    assert pool.apply("examples.echo_bytes", (array,)) == array.tobytes()


# --- failures ----------------------------------------------------------------------------

def test_errors_are_plugpool_errors_with_their_fields(pool):
    with pytest.raises(plugpool.TaskError) as e:
        pool.map("examples.fail", [1, 2], chunksize=1)
    assert e.value.type == "std::runtime_error" and e.value.task == "examples.fail"
    assert "fail called with 1" in e.value.message and e.value.item == 0
    with pytest.raises(plugpool.PluginError):
        pool.task("examples", "nope")
    with pytest.raises(plugpool.WaitTimeout):
        pool.apply_async("examples.sleep_ms", (2000,)).get(timeout=0.05)
    assert issubclass(plugpool.WaitTimeout, TimeoutError)


def test_a_crash_fails_only_its_item_and_the_pool_goes_on():
    with plugpool.Pool(2, [FAULTS]) as p:
        with pytest.raises(plugpool.WorkerCrashed) as e:
            p.map("faults.segfault_if_negative", [1, -1, 2], chunksize=1)
        assert e.value.signal == signal.SIGSEGV
        assert p.map("faults.segfault_if_negative", [4, 5]) == [4, 5]



def test_a_crashed_item_alone_is_retried_and_the_others_run_once(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("PLUGPOOL_TEST_RUNS", str(runs))  # faults.logged_chaos logs there
    # Item 2 crashes its worker the first time (low bits 5), inside one chunk of four.
    items = [0 << 3, 1 << 3, (2 << 3) | 5, 3 << 3]
    with plugpool.Pool(1, [FAULTS], crash_retries=1) as p:
        assert p.map("faults.logged_chaos", items, chunksize=4) == ["r0", "r1", "r2", "r3"]
    assert sorted(runs.read_text().split()) == ["0", "1", "2", "2", "3"]


def test_a_timeout_fails_its_item():
    with plugpool.Pool(1, [FAULTS], task_timeout=0.3) as p:
        with pytest.raises(plugpool.TaskTimeout) as e:
            p.apply("faults.sleep_ms", (60000,))
        assert e.value.item == 0
        assert p.apply("faults.sleep_ms", (1,)) == 1


def test_ctrl_c_cancels_the_call_and_raises_keyboard_interrupt():
    with plugpool.Pool(1, [FAULTS]) as p:
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            p.apply("faults.sleep_ms", (60000,))
        assert time.monotonic() - start < 10
        assert p.apply("faults.sleep_ms", (1,)) == 1
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            p.map("faults.sleep_ms", [60000, 60000, 60000], chunksize=1)
        timer.join()
        assert p.apply("faults.sleep_ms", (1,)) == 1


def test_the_gil_is_released_while_waiting(pool):
    count = 0
    stop = threading.Event()

    def spin():
        nonlocal count
        while not stop.is_set():
            count += 1
    t = threading.Thread(target=spin)
    t.start()
    pool.apply("examples.sleep_ms", (300,))
    stop.set()
    t.join()
    assert count > 1000


def test_terminate_cancels_unfinished_work():
    p = plugpool.Pool(1, [FAULTS])
    r = p.apply_async("faults.sleep_ms", (60000,))
    time.sleep(0.2)
    p.terminate()
    with pytest.raises(plugpool.Cancelled):
        r.get(timeout=30)
    with pytest.raises(plugpool.PoolClosed):
        p.apply("faults.sleep_ms", (1,))
    p.join()


def test_an_interpreter_that_exits_with_a_pool_open_waits_for_its_work_and_ends():
    import subprocess
    import sys
    script = ("import plugpool\n"
              "p = plugpool.Pool(2, ['examples'])\n"
              "p.apply_async('examples.sleep_ms', (300,), callback=lambda v: print('callback', v))\n"
              "print('leaving')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=os.environ)
    assert (run.returncode, run.stdout) == (0, "leaving\ncallback 300\n"), run.stderr
