#!/usr/bin/env python3
"""Checks that `plugpool map` streams: ten million input lines through a pipe, in flat memory.

usage: check_cli_memory.py PLUGPOOL [LINES]
Pipes `seq 1 LINES` (default 10 000 000, about 79 MB of text) through `plugpool map examples
square` and reads every result: there must be LINES of them, in order (their sum is checked in
closed form), the exit status must be 0, and the peak resident memory of the whole pipeline
(sh, seq, plugpool and its workers; from wait4 on sh) must stay under PEAK_LIMIT_MIB — far
below the input's size, so the input cannot have been read into memory. Prints the figures.

The pipeline runs under `sh -c`, which forks each program: Linux carries ru_maxrss across
execve, so a program exec'd straight from this (larger) Python process would report Python's
peak as its own.
"""
import os
import subprocess
import sys
import time

PEAK_LIMIT_MIB = 32
HANG_GUARD = 600

plugpool = sys.argv[1]
lines = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000

started = time.monotonic()
proc = subprocess.Popen(
    ["sh", "-c", 'seq 1 "$1" | "$2" map examples square; exit $?', "sh", str(lines), plugpool],
    stdout=subprocess.PIPE)
count = total = 0
expected_next = 1
in_order = True
for raw in proc.stdout:
    value = int(raw)
    count += 1
    total += value
    if value != expected_next * expected_next:
        in_order = False
    expected_next += 1
    if time.monotonic() - started > HANG_GUARD:
        proc.kill()
        sys.exit("hung")
proc.stdout.close()
_, status, usage = os.wait4(proc.pid, 0)
proc.returncode = os.waitstatus_to_exitcode(status)
elapsed = time.monotonic() - started
peak_mib = usage.ru_maxrss / 1024
print(f"lines={lines} results={count} seconds={elapsed:.1f} peak_rss_mib={peak_mib:.1f}")

if proc.returncode != 0:
    sys.exit(f"plugpool map exited with {proc.returncode}")
if count != lines or not in_order:
    sys.exit(f"expected {lines} results in input order, got {count} (in order: {in_order})")
if total != lines * (lines + 1) * (2 * lines + 1) // 6:
    sys.exit("the results' sum is wrong")
if peak_mib >= PEAK_LIMIT_MIB:
    sys.exit(f"peak memory {peak_mib:.1f} MiB is not below {PEAK_LIMIT_MIB} MiB: not streamed")
