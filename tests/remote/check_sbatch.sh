#!/bin/bash
# check_sbatch.sh README SCRIPT BIN_DIR... — checks that README shows SCRIPT (the sbatch
# example) as it is, then submits SCRIPT to the private Slurm cluster.py started (run as
# `cluster.py slurm --no-alloc -- check_sbatch.sh ...`), with BIN_DIRs first on PATH, waits
# for the job, and checks what it wrote: the squares of 1..20000 from the command line, and
# the host example's sum and nodes.
set -euo pipefail
readme=$1 script=$2
shift 2
# The README's ```bash block that starts as the script does.
shown=$(awk -v first="$(head -1 "$script")" '
  /^```/ { if (inside) exit; if ($0 == "```bash") { getline; if ($0 == first) { inside = 1; print; next } } }
  inside { print }' "$readme")
if [ "$shown" != "$(cat "$script")" ]; then
  echo "check_sbatch: the README does not show $script as it is" >&2
  diff <(echo "$shown") "$script" >&2 || true
  exit 1
fi
for dir in "$@"; do PATH=$dir:$PATH; done
export PATH
work=$(mktemp -d /tmp/plugpool-sbatch-XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! sbatch --wait --quiet --output=job.out "$script"; then
  echo "check_sbatch: the job failed; its output:" >&2
  cat job.out >&2 || true
  exit 1
fi
seq 1 20000 | awk '{ print $1 * $1 }' > expected.txt
if ! cmp -s squares.txt expected.txt; then
  echo "check_sbatch: squares.txt is not the squares of 1..20000" >&2
  head -3 squares.txt >&2 || true
  exit 1
fi
grep -qx 'sum of squares of 1..100000: 333338333350000' job.out
if ! grep -qx 'ran on: n1 n2' job.out; then
  echo "check_sbatch: the host's workers did not run on both nodes:" >&2
  cat job.out >&2
  exit 1
fi
echo "check_sbatch: the job ran on both nodes and wrote what it should"
