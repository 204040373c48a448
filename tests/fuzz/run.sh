#!/bin/sh
# run.sh FUZZER SEEDS WORKDIR SIDE SECONDS — one bounded fuzzing run (tests/fuzz/meson.build).
# Writes fresh seeds with SEEDS into WORKDIR/seeds, then fuzzes for SECONDS with the corpus in
# WORKDIR/corpus. Exits non-zero, with the crashing input in WORKDIR/artifacts/, if the fuzzer
# finds a crash, a sanitizer report, a leak, a timeout (10 s per input) or an out-of-memory.
set -eu
fuzzer=$1 seeds=$2 work=$3 side=$4 seconds=$5
rm -rf "$work/seeds"
mkdir -p "$work/corpus" "$work/artifacts"
"$seeds" "$work/seeds"
exec "$fuzzer" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" "$work/seeds/$side"
