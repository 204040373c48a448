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


def test_a_timeout_fails_its_item():
    with plugpool.Pool(1, [FAULTS], task_timeout=0.3) as p:
        with pytest.raises(plugpool.TaskTimeout):
            p.apply("faults.sleep_ms", (60000,))
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
