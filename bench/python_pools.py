#!/usr/bin/env python3
"""The Python side of plugpool-bench: one workload, once, on Python's own pools.

usage: python_pools.py WORKLOAD --workers N [--items N] [--chunksize N] [--samples N]
                       [--rounds N] [--mib N]

Runs WORKLOAD on multiprocessing.Pool and, where it applies, on
concurrent.futures.ProcessPoolExecutor, both with N workers started with the "spawn" method
(fresh interpreters, as plugpool's workers are fresh processes), and prints one JSON object:

    {"pool": {...}, "executor": {...} | null, "python": "3.11.2"}

Each side's object holds raw measurements (seconds, microseconds, milliseconds) and a
"check" value that plugpool-bench compares with its own, so both sides provably did the
same work. Pools are started and warmed up (every worker has answered) before anything is
timed, except in `startup`, which times exactly that.

The functions here are the twins of the tasks in plugins/bench/bench.cc.
"""
import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

MASK64 = (1 << 64) - 1

# --- the tasks (twins of plugins/bench/bench.cc) -----------------------------------------


def square(x):
    return x * x


def noop():
    return None


def echo(data):
    return data


def sha256_chain(seed, rounds):
    h = seed.to_bytes(8, "little", signed=True)
    for _ in range(rounds):
        h = hashlib.sha256(h).digest()
    return int.from_bytes(h[:8], "little", signed=True)


# --- making pools whose every worker is up -------------------------------------------------

_barrier = None


def _set_barrier(barrier):
    global _barrier
    _barrier = barrier


def _meet(_):
    # Returns only once every worker of the pool is inside this call at once.
    _barrier.wait()
    return os.getpid()


def start_pool(ctx, workers):
    """A multiprocessing.Pool whose every worker has answered."""
    pool = ctx.Pool(workers, initializer=_set_barrier, initargs=(ctx.Barrier(workers),))
    pool.map(_meet, range(workers), chunksize=1)
    return pool


def start_executor(ctx, workers):
    """A ProcessPoolExecutor whose every worker has answered (3.11 starts them on demand)."""
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_set_barrier,
                             initargs=(ctx.Barrier(workers),))
    list(ex.map(_meet, range(workers)))
    return ex


def stop_pool(pool):
    pool.close()
    pool.join()


# --- workloads -----------------------------------------------------------------------------


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def run_map(ctx, args, chunksize):
    """map of `items` squares; chunksize None is each pool's own default."""
    items = list(range(args.items))
    pool = start_pool(ctx, args.workers)
    pool.map(square, range(1000))  # warm-up
    seconds, results = timed(lambda: pool.map(square, items, chunksize))
    stop_pool(pool)
    out = {"pool": {"seconds": seconds, "check": sum(results) & MASK64}, "executor": None}
    if chunksize is not None:
        # Executor.map's default chunksize is 1: a million futures would measure nothing but
        # that, so the executor runs only with an explicit chunksize.
        with start_executor(ctx, args.workers) as ex:
            list(ex.map(square, range(1000), chunksize=100))
            seconds, results = timed(lambda: list(ex.map(square, items, chunksize=chunksize)))
        out["executor"] = {"seconds": seconds, "check": sum(results) & MASK64}
    return out


def run_imap(ctx, args):
    """imap_unordered of `items` squares, chunksize 1 (executor: map, chunksize 1)."""
    pool = start_pool(ctx, args.workers)
    pool.map(square, range(1000))
    seconds, total = timed(lambda: sum(pool.imap_unordered(square, range(args.items), 1)))
    stop_pool(pool)
    out = {"pool": {"seconds": seconds, "check": total & MASK64}}
    with start_executor(ctx, args.workers) as ex:
        list(ex.map(square, range(1000)))
        seconds, total = timed(lambda: sum(ex.map(square, range(args.items), chunksize=1)))
    out["executor"] = {"seconds": seconds, "check": total & MASK64}
    return out


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[int(rank) - 1]


def latencies(call, samples):
    for _ in range(min(100, samples)):
        call()  # warm-up
    times = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    times.sort()
    return {"median_us": statistics.median(times), "p99_us": percentile(times, 99),
            "samples": samples}


def run_apply(ctx, args):
    """Round trips of apply(noop) (executor: submit(noop).result())."""
    pool = start_pool(ctx, args.workers)
    out = {"pool": latencies(lambda: pool.apply(noop), args.samples)}
    stop_pool(pool)
    with start_executor(ctx, args.workers) as ex:
        out["executor"] = latencies(lambda: ex.submit(noop).result(), args.samples)
    return out


def run_echo(ctx, args):
    """One `mib` MiB bytes payload to a worker and back (apply / submit), on a pool that has
    carried one such payload already: the first, cold round trip is reported beside it."""
    payload = os.urandom(args.mib << 20)

    def once(call):
        first, back = timed(call)
        seconds, back = timed(call)
        if back != payload:
            sys.exit("python_pools.py: echo returned different bytes")
        return {"seconds": seconds, "first_seconds": first, "check": len(back)}

    pool = start_pool(ctx, args.workers)
    out = {"pool": once(lambda: pool.apply(echo, (payload,)))}
    stop_pool(pool)
    with start_executor(ctx, args.workers) as ex:
        out["executor"] = once(lambda: ex.submit(echo, payload).result())
    return out


def run_cpu(ctx, args):
    """`items` sha256_chain calls: serially in this process, then on each pool."""
    seeds = list(range(args.items))
    rounds = [args.rounds] * args.items
    serial, results = timed(lambda: [sha256_chain(s, args.rounds) for s in seeds])
    check = sum(results) & MASK64
    pool = start_pool(ctx, args.workers)
    pool.starmap(sha256_chain, [(0, 1)] * 10)
    seconds, results = timed(lambda: pool.starmap(sha256_chain, zip(seeds, rounds)))
    stop_pool(pool)
    out = {"pool": {"serial_s": serial, "seconds": seconds, "check": sum(results) & MASK64,
                    "serial_check": check}}
    with start_executor(ctx, args.workers) as ex:
        list(ex.map(sha256_chain, [0] * 10, [1] * 10))
        seconds, results = timed(lambda: list(ex.map(sha256_chain, seeds, rounds)))
    out["executor"] = {"serial_s": serial, "seconds": seconds, "check": sum(results) & MASK64,
                       "serial_check": check}
    return out


def run_startup(ctx, args):
    """From creating a pool until every worker has answered, then shutting it down."""
    barrier = ctx.Barrier(args.workers)

    def measure(start, stop):
        t0 = time.perf_counter()
        pool = start()
        t1 = time.perf_counter()
        stop(pool)
        t2 = time.perf_counter()
        return {"start_ms": (t1 - t0) * 1e3, "stop_ms": (t2 - t1) * 1e3,
                "total_ms": (t2 - t0) * 1e3}

    def pool_start():
        pool = ctx.Pool(args.workers, initializer=_set_barrier, initargs=(barrier,))
        pool.map(_meet, range(args.workers), chunksize=1)
        return pool

    def executor_start():
        ex = ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_set_barrier,
                                 initargs=(barrier,))
        list(ex.map(_meet, range(args.workers)))
        return ex

    out = {"pool": measure(pool_start, stop_pool)}
    barrier.reset()
    out["executor"] = measure(executor_start, lambda ex: ex.shutdown(wait=True))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["map_tiny", "map_tiny_c10000", "imap_c1",
                                             "apply_rtt", "echo_64mib", "cpu_scaling",
                                             "startup"])
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--items", type=int, help="default: the issue's count for WORKLOAD")
    parser.add_argument("--chunksize", type=int, default=0, help="0: the pool's default")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    if args.items is None:
        args.items = {"imap_c1": 20_000, "cpu_scaling": 400}.get(args.workload, 1_000_000)
    ctx = mp.get_context("spawn")
    runs = {
        "map_tiny": lambda: run_map(ctx, args, args.chunksize or None),
        "map_tiny_c10000": lambda: run_map(ctx, args, args.chunksize or 10_000),
        "imap_c1": lambda: run_imap(ctx, args),
        "apply_rtt": lambda: run_apply(ctx, args),
        "echo_64mib": lambda: run_echo(ctx, args),
        "cpu_scaling": lambda: run_cpu(ctx, args),
        "startup": lambda: run_startup(ctx, args),
    }
    result = runs[args.workload]()
    result["python"] = platform.python_version()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
