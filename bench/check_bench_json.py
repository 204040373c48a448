#!/usr/bin/env python3
"""Runs `plugpool-bench --quick --json PATH` and checks that the report is complete and well
formed: every key with its figures and ratio, the machine's reference points, the run's
details. Correctness only: no figure is compared with any speed. A quick run gives no
verdict: every "target_met" is null and the table says neither met nor missed.

The KEY_tcp keys (KEY through a remote pool over loopback TCP) are compared with KEY's
plugpool figure of the same run ("local", which must be KEY's "plugpool"), have no Python
figures (null) and no target.

The py_KEY keys (KEY's workload from Python through the plugpool module) are there, with no
target, if the module was built (--python-module), else absent and listed in run.skipped
(--no-python-module). image_job's images go to a temporary folder under TMPDIR, which is set
to a folder of this script's own: it must be empty again when the run ends.

usage: check_bench_json.py PLUGPOOL_BENCH --python-module | --no-python-module
"""
import json
import math
import os
import subprocess
import sys
import tempfile

KEYS = ["map_tiny", "map_tiny_c10000", "imap_c1", "apply_rtt", "echo_64mib", "cpu_scaling",
        "startup", "image_job"]
# Extra fields each key must carry, beyond plugpool / python / ratio.
EXTRA = {
    "apply_rtt": ["plugpool_p99", "python_p99", "socketpair_ratio"],
    "echo_64mib": ["memcpy_fraction"],
    "cpu_scaling": ["per_core"],
    "startup": ["fraction_of_python"],
}
# KEY_tcp: the key whose plugpool figure it is compared with, and its extra fields.
TCP_KEYS = {
    "map_tiny_tcp": ("map_tiny", []),
    "apply_rtt_tcp": ("apply_rtt", ["plugpool_p99", "local_p99"]),
    "echo_64mib_tcp": ("echo_64mib", ["plugpool_bytes_result", "local_bytes_result",
                                      "plugpool_first", "local_first"]),
}
# py_KEY: its extra fields.
PY_KEYS = {
    "py_map_tiny": [],
    "py_imap_c1": [],
    "py_apply_rtt": ["plugpool_p99", "python_p99"],
    "py_image_job": [],
}
QUICK_IMAGES = 60
MACHINE = ["socketpair_rtt_us", "pipe_gbps", "memcpy_gbps", "cores", "socketpair_rtt_us_one_cpu",
           "socketpair_rtt_us_any_cpu", "pipe_gbps_one_cpu", "pipe_gbps_any_cpu"]


def positive(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def check_ratio(problems, key, entry, other):
    """`ratio` is plugpool / `other`, inverted where lower is better."""
    if not all(positive(entry.get(f)) for f in ["plugpool", other, "ratio"]):
        return
    expected = entry["plugpool"] / entry[other]
    if entry.get("unit") in ("us", "ms"):  # lower is better: the ratio is inverted
        expected = 1 / expected
    if not math.isclose(entry["ratio"], expected, rel_tol=1e-9):
        problems.append(f"{key}.ratio {entry['ratio']} is not oriented as documented")


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in ("--python-module", "--no-python-module"):
        sys.exit(__doc__.strip().splitlines()[-1])
    bench, module_built = sys.argv[1], sys.argv[2] == "--python-module"
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        tmpdir = os.path.join(tmp, "tmp")
        os.mkdir(tmpdir)
        run = subprocess.run([bench, "--quick", "--json", path], capture_output=True, text=True,
                             timeout=540, env=dict(os.environ, TMPDIR=tmpdir))
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        if run.returncode != 0:
            sys.exit(f"plugpool-bench exited with {run.returncode}")
        with open(path) as f:
            report = json.load(f)  # raises if it is not JSON
        left = os.listdir(tmpdir)
        if any(name.startswith("plugpool-bench-images-") for name in left):
            problems.append(f"image folder left behind in TMPDIR: {left}")

    for key in KEYS:
        entry = report.get(key)
        if not isinstance(entry, dict):
            problems.append(f"{key}: missing")
            continue
        for field in ["plugpool", "python", "ratio"] + EXTRA.get(key, []):
            if not positive(entry.get(field)):
                problems.append(f"{key}.{field}: {entry.get(field)!r} is not a positive number")
        if "target_met" not in entry or entry["target_met"] is not None:
            problems.append(f"{key}.target_met: {entry.get('target_met')!r} is not null "
                            "(a quick run gives no verdict)")
        if not isinstance(entry.get("target"), str) or entry["target"].startswith("none"):
            problems.append(f"{key}.target: {entry.get('target')!r} is not a target")
        check_ratio(problems, key, entry, "python")
    skipped = report.get("run", {}).get("skipped")
    for key, extra in PY_KEYS.items():
        entry = report.get(key)
        if not module_built:
            if entry is not None:
                problems.append(f"{key}: present, though the module was not built")
            if not isinstance(skipped, list) or key not in skipped:
                problems.append(f"{key}: not in run.skipped {skipped!r}")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{key}: missing (the Python module was built)")
            continue
        for field in ["plugpool", "python", "ratio"] + extra:
            if not positive(entry.get(field)):
                problems.append(f"{key}.{field}: {entry.get(field)!r} is not a positive number")
        if entry.get("target") != "none" or "target_met" not in entry or entry["target_met"] \
                is not None:
            problems.append(f"{key}: target {entry.get('target')!r}, target_met "
                            f"{entry.get('target_met')!r}: expected none and null")
        if entry.get("unit") != report.get(key[3:], {}).get("unit"):
            problems.append(f"{key}.unit {entry.get('unit')!r} is not {key[3:]}'s")
        check_ratio(problems, key, entry, "python")
    if module_built and skipped != []:
        problems.append(f"run.skipped {skipped!r} is not empty, though the module was built")
    for key, (local, extra) in TCP_KEYS.items():
        entry = report.get(key)
        if not isinstance(entry, dict):
            problems.append(f"{key}: missing")
            continue
        for field in ["plugpool", "local", "ratio"] + extra:
            if not positive(entry.get(field)):
                problems.append(f"{key}.{field}: {entry.get(field)!r} is not a positive number")
        for field in ["python", "python_executor", "ratio_executor", "target_met"]:
            if field not in entry or entry[field] is not None:
                problems.append(f"{key}.{field}: {entry.get(field)!r} is not null")
        other = report.get(local, {})
        if entry.get("compared_with") != local or entry.get("unit") != other.get("unit"):
            problems.append(f"{key} is not compared with {local} in its unit")
        # Both are medians of the very same repetitions (the quick run has both keys).
        if entry.get("local") != other.get("plugpool"):
            problems.append(f"{key}.local {entry.get('local')!r} is not {local}'s plugpool figure")
        check_ratio(problems, key, entry, "local")
    machine = report.get("machine", {})
    for field in MACHINE:
        if not positive(machine.get(field)):
            problems.append(f"machine.{field}: {machine.get(field)!r} is not a positive number")
    if machine.get("cores") != os.cpu_count():
        problems.append(f"machine.cores {machine.get('cores')} != {os.cpu_count()}")
    if report.get("run", {}).get("quick") is not True:
        problems.append("run.quick is not true")
    if report.get("run", {}).get("params", {}).get("images") != QUICK_IMAGES:
        problems.append(f"run.params.images is not {QUICK_IMAGES}")
    for verdict in ("(met)", "(MISSED)"):
        if verdict in run.stdout:
            problems.append(f"the quick run's table prints a verdict: {verdict}")

    for p in problems:
        print("check_bench_json:", p, file=sys.stderr)
    if problems:
        sys.exit(1)
    from_python = f"{len(PY_KEYS)} from Python" if module_built else "no module: py_* skipped"
    print(f"check_bench_json: report complete ({len(KEYS)} keys, {len(TCP_KEYS)} over TCP, "
          f"{from_python}, and the machine)")


if __name__ == "__main__":
    main()
