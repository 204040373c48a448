#!/usr/bin/env python3
"""The Python side of plugpool-bench: one workload, once, on Python's own pools.

usage: python_pools.py WORKLOAD --workers N [--items N] [--chunksize N] [--samples N]
                       [--rounds N] [--mib N] [--images DIR]
                       [--side pool|plugpool] [--module-path DIR] [--bench-plugin PATH]
                       [--imagefeatures-plugin PATH]

Runs WORKLOAD on multiprocessing.Pool and, where it applies, on
concurrent.futures.ProcessPoolExecutor, both with N workers started with the "spawn" method
(fresh interpreters, as plugpool's workers are fresh processes), and prints one JSON object:

    {"pool": {...}, "executor": {...} | null, "python": "3.11.2"}

With --side plugpool it runs the same WORKLOAD (map_tiny, imap_c1, apply_rtt, image_job) from
Python through plugpool.Pool instead (`import plugpool`, found in --module-path), with the
same workers, warm-up and raw fields, on the bench plugin's tasks (imagefeatures' for
image_job), and prints {"plugpool": {...}, "python": "3.11.2"}.

Each side's object holds raw measurements (seconds, microseconds, milliseconds) and a
"check" value that plugpool-bench compares with its own, so both sides provably did the
same work. Pools are started and warmed up (every worker has answered) before anything is
timed, except in `startup`, which times exactly that.

The functions here are the twins of the tasks in plugins/bench/bench.cc, and
extract_features that of plugins/imagefeatures' `features` (with Pillow and numpy).
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


# Pillow and numpy are imported on first use (by image_job only), so that no other workload's
# workers pay for them.
_image, _np = None, None
_FORMATS = {"PNG": "png", "JPEG": "jpeg"}
_COLOR_SPACES = {1: "gray", 2: "gray+alpha", 3: "rgb", 4: "rgba"}


def _import_imaging():
    global _image, _np
    if _image is None:
        try:
            from PIL import Image
            import numpy
        except ImportError as e:
            raise ImportError(f"image_job needs Pillow and numpy ({e}; Debian: python3-pil "
                              "python3-numpy, which setup.sh installs)") from e
        _image, _np = Image, numpy


def extract_features(path):
    """The imagefeatures plugin's `features` of one PNG or JPEG file, with Pillow and numpy:
    the same dict plugpool gives for its ImageFeatures (imagefeatures.capnp), computed on the
    same 8-bit samples (palette expanded to RGB(A), 16-bit gray scaled to 8 bits)."""
    _import_imaging()
    np = _np
    with _image.open(path) as im:
        fmt = _FORMATS.get(im.format)
        if fmt is None:
            raise ValueError(f"{path}: not a PNG or JPEG file")
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
        elif im.mode == "1":
            im = im.convert("L")
        if im.mode in ("I", "I;16", "I;16B"):  # 16-bit gray, scaled as libpng's png_set_scale_16
            wide = np.asarray(im).astype(np.uint32)
            pixels = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        elif im.mode in ("L", "LA", "RGB", "RGBA"):
            pixels = np.asarray(im)
        else:
            raise ValueError(f"{path}: unsupported mode {im.mode}")
    height, width = pixels.shape[:2]
    samples = pixels.reshape(height * width, -1)
    channels = samples.shape[1]
    mean = samples.mean(axis=0, dtype=np.float64)
    stddev = samples.std(axis=0, dtype=np.float64)
    histogram = np.concatenate([np.bincount(samples[:, c] >> 5, minlength=8)
                                for c in range(channels)])
    m = mean.tolist()
    return {"path": path, "format": fmt, "width": width, "height": height,
            "channels": channels, "colorSpace": _COLOR_SPACES[channels], "mean": m,
            "stddev": stddev.tolist(), "histogram": histogram.tolist(),
            "brightness": 0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2] if channels >= 3 else m[0]}


# --- making pools whose every worker is up -------------------------------------------------

_barrier = None


def _set_barrier(barrier):
    global _barrier
    _barrier = barrier


def _meet(_):
    # Returns only once every worker of the pool is inside this call at once.
    _barrier.wait()
    return os.getpid()


def _meet_with_imaging(_):
    _import_imaging()
    return _meet(_)


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


def image_paths(folder):
    """Every regular file directly in `folder`, sorted by name (as plugpool-bench lists them)."""
    return sorted(e.path for e in os.scandir(folder) if e.is_file())


def image_raw(seconds, results):
    """The raw fields of image_job: the time, and each image's size, channels and means (in
    path order) for plugpool-bench to compare with the other side's; "check" is all pixels."""
    sizes = [[r["width"], r["height"], r["channels"]] for r in results]
    return {"seconds": seconds, "images": len(results),
            "check": sum(w * h for w, h, _ in sizes), "sizes": sizes,
            "means": [list(r["mean"]) for r in results]}


def run_images(ctx, args):
    """Pool.map(extract_features, paths) with the default chunksize (executor: map, its
    default chunksize 1); every worker has imported Pillow and numpy before the timing."""
    try:
        _import_imaging()  # here first: a clear message, not a worker's traceback
    except ImportError as e:
        sys.exit(f"python_pools.py: {e}")
    paths = image_paths(args.images)
    pool = start_pool(ctx, args.workers)
    pool.map(_meet_with_imaging, range(args.workers), chunksize=1)
    pool.map(extract_features, paths[:args.workers])
    out = {"pool": image_raw(*timed(lambda: pool.map(extract_features, paths)))}
    stop_pool(pool)
    with start_executor(ctx, args.workers) as ex:
        list(ex.map(_meet_with_imaging, range(args.workers)))
        list(ex.map(extract_features, paths[:args.workers]))
        out["executor"] = image_raw(*timed(lambda: list(ex.map(extract_features, paths))))
    return out


# --- the same workloads from Python through plugpool.Pool (--side plugpool) ---------------


def import_plugpool(module_path):
    if module_path:
        sys.path.insert(0, module_path)
    try:
        import plugpool
    except ImportError as e:
        sys.exit(f"python_pools.py: cannot import plugpool from {module_path or 'sys.path'}: {e}")
    return plugpool


def plugpool_side(args):
    """WORKLOAD through plugpool.Pool, as a Python user would call it, with the same warm-up
    and raw fields as the Python side's mp.Pool run."""
    plugpool = import_plugpool(args.module_path)
    workers = args.workers
    if args.workload == "image_job":
        paths = image_paths(args.images)
        with plugpool.Pool(workers, [args.imagefeatures_plugin]) as pool:
            features = pool.task("imagefeatures", "features")
            pool.map(features, paths[:workers], 1)  # warm-up
            return image_raw(*timed(lambda: pool.map(features, paths)))
    with plugpool.Pool(workers, [args.bench_plugin]) as pool:
        square = pool.task("bench", "square")
        if args.workload == "map_tiny":
            items = list(range(args.items))
            pool.map(square, range(1000))  # warm-up
            seconds, results = timed(lambda: pool.map(square, items, args.chunksize or None))
            return {"seconds": seconds, "check": sum(results) & MASK64}
        if args.workload == "imap_c1":
            pool.map(square, range(1000))
            seconds, total = timed(lambda: sum(pool.imap_unordered(square, range(args.items), 1)))
            return {"seconds": seconds, "check": total & MASK64}
        if args.workload == "apply_rtt":
            noop = pool.task("bench", "noop")
            return latencies(lambda: pool.apply(noop), args.samples)
    sys.exit(f"python_pools.py: --side plugpool does not run {args.workload}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["map_tiny", "map_tiny_c10000", "imap_c1",
                                             "apply_rtt", "echo_64mib", "cpu_scaling",
                                             "startup", "image_job"])
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--items", type=int, help="default: the issue's count for WORKLOAD")
    parser.add_argument("--chunksize", type=int, default=0, help="0: the pool's default")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--images", help="image_job: the folder of images (make_images)")
    parser.add_argument("--side", choices=["pool", "plugpool"], default="pool",
                        help="pool: Python's own pools; plugpool: through plugpool.Pool")
    parser.add_argument("--module-path", help="--side plugpool: the folder holding plugpool/")
    parser.add_argument("--bench-plugin", default="bench",
                        help="--side plugpool: the bench plugin (path or name)")
    parser.add_argument("--imagefeatures-plugin", default="imagefeatures",
                        help="--side plugpool: the imagefeatures plugin (path or name)")
    args = parser.parse_args()
    if args.workload == "image_job" and not args.images:
        parser.error("image_job needs --images DIR")
    if args.items is None:
        args.items = {"imap_c1": 20_000, "cpu_scaling": 400}.get(args.workload, 1_000_000)
    if args.side == "plugpool":
        result = {"plugpool": plugpool_side(args), "python": platform.python_version()}
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return
    ctx = mp.get_context("spawn")
    runs = {
        "map_tiny": lambda: run_map(ctx, args, args.chunksize or None),
        "map_tiny_c10000": lambda: run_map(ctx, args, args.chunksize or 10_000),
        "imap_c1": lambda: run_imap(ctx, args),
        "apply_rtt": lambda: run_apply(ctx, args),
        "echo_64mib": lambda: run_echo(ctx, args),
        "cpu_scaling": lambda: run_cpu(ctx, args),
        "startup": lambda: run_startup(ctx, args),
        "image_job": lambda: run_images(ctx, args),
    }
    result = runs[args.workload]()
    result["python"] = platform.python_version()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
