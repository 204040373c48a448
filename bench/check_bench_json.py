#!/usr/bin/env python3
"""Runs `plugpool-bench --quick --json PATH` and checks that the report is complete and well
formed: every key with its figures and ratio, the machine's reference points, the run's
details. Correctness only: no figure is compared with any speed.

usage: check_bench_json.py PLUGPOOL_BENCH
"""
import json
import math
import os
import subprocess
import sys
import tempfile

KEYS = ["map_tiny", "map_tiny_c10000", "imap_c1", "apply_rtt", "echo_64mib", "cpu_scaling",
        "startup"]
# Extra fields each key must carry, beyond plugpool / python / ratio.
EXTRA = {
    "apply_rtt": ["plugpool_p99", "python_p99", "socketpair_ratio"],
    "echo_64mib": ["memcpy_fraction"],
    "cpu_scaling": ["per_core"],
    "startup": ["fraction_of_python"],
}
MACHINE = ["socketpair_rtt_us", "pipe_gbps", "memcpy_gbps", "cores", "socketpair_rtt_us_one_cpu",
           "socketpair_rtt_us_any_cpu", "pipe_gbps_one_cpu", "pipe_gbps_any_cpu"]


def positive(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def main():
    bench = sys.argv[1]
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        run = subprocess.run([bench, "--quick", "--json", path], capture_output=True, text=True,
                             timeout=540)
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        if run.returncode != 0:
            sys.exit(f"plugpool-bench exited with {run.returncode}")
        with open(path) as f:
            report = json.load(f)  # raises if it is not JSON

    for key in KEYS:
        entry = report.get(key)
        if not isinstance(entry, dict):
            problems.append(f"{key}: missing")
            continue
        for field in ["plugpool", "python", "ratio"] + EXTRA.get(key, []):
            if not positive(entry.get(field)):
                problems.append(f"{key}.{field}: {entry.get(field)!r} is not a positive number")
        if not isinstance(entry.get("target_met"), bool):
            problems.append(f"{key}.target_met is not a boolean")
        expected = entry.get("plugpool", 0) / entry.get("python", 1)
        if entry.get("unit") in ("us", "ms"):  # lower is better: the ratio is inverted
            expected = 1 / expected
        if positive(entry.get("ratio")) and not math.isclose(entry["ratio"], expected,
                                                             rel_tol=1e-9):
            problems.append(f"{key}.ratio {entry['ratio']} is not oriented as documented")
    machine = report.get("machine", {})
    for field in MACHINE:
        if not positive(machine.get(field)):
            problems.append(f"machine.{field}: {machine.get(field)!r} is not a positive number")
    if machine.get("cores") != os.cpu_count():
        problems.append(f"machine.cores {machine.get('cores')} != {os.cpu_count()}")
    if report.get("run", {}).get("quick") is not True:
        problems.append("run.quick is not true")

    for p in problems:
        print("check_bench_json:", p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check_bench_json: report complete ({len(KEYS)} keys and the machine)")


if __name__ == "__main__":
    main()
