#!/usr/bin/env bash
# setup.sh — from a fresh Debian 12 machine to a built, demonstrated or tested plugpool.
#
#   ./setup.sh demo    install what is missing, build what the demo needs into build/, run the
#                      pool_speedup demo
#   ./setup.sh bench [ARGS]  install what is missing, build into build/, run plugpool-bench
#                      (plugpool beside Python's pools; ARGS go to it, e.g. --quick, --json PATH)
#   ./setup.sh test    install what is missing, build into build/, run the whole test suite,
#                      then again in build-asan/ (AddressSanitizer + UndefinedBehaviorSanitizer)
#                      and build-tsan/ (ThreadSanitizer, suite tsan), then runs the libFuzzer
#                      targets (build-fuzz/, clang) for FUZZ_SECONDS each (default 60), ending
#                      with one line for all four: "N passed, N failed"
#
# Installing uses apt-get (through sudo when not root) and only for packages not yet
# installed. libboost1.81-dev replaces libboost1.74-dev if that is installed (they conflict).
set -euo pipefail
cd "$(dirname "$0")"

packages=(g++ libasan8 libubsan1 libtsan2 clang libclang-rt-14-dev meson ninja-build pkg-config
          python3 capnproto libcapnp-dev libboost1.81-dev catch2 libcli11-dev libpng-dev
          libjpeg62-turbo-dev zlib1g-dev libssl-dev nlohmann-json3-dev
          pybind11-dev python3-dev python3-pytest python3-numpy python3-pil
          slurmctld slurmd slurm-client munge iproute2
          cmake dpkg-dev debhelper lintian git)

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "setup.sh: installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# configure DIR [meson options...]: configures DIR (once; later runs apply the options again).
configure() {
  local dir=$1
  shift
  if [ -f "$dir/build.ninja" ]; then
    # (meson 1.0's `setup --reconfigure` ignores base options such as b_lundef: configure.)
    [ $# -eq 0 ] || meson configure "$dir" "$@" >/dev/null
    meson setup --reconfigure "$dir" >/dev/null
  else
    meson setup "$dir" "$@"
  fi
}

# build DIR [meson options...]: configures DIR, then builds all of it.
build() {
  configure "$@"
  ninja -C "$1"
}

# What the demo needs, and nothing else: the library, the worker, the examples plugin and the
# pool_speedup host.
demo_targets=(runtime/plugpool-worker plugins/libexamples.so examples/pool_speedup)

# Prints "N passed, N failed" over the given meson test logs (testlog[-SETUP].json), counting
# the pytest suite (meson test `python`) by its own cases (its JUnit report next to the log), with
# a line naming each test that did not pass just above it, where a CI log's tail shows it; fails
# if any test did not pass.
summarize() {
  python3 - "$@" <<'PY'
import json, os, sys
import xml.etree.ElementTree as ET
results = []  # (name, result)
for path in sys.argv[1:]:
    build = os.path.basename(os.path.dirname(os.path.dirname(path)))
    for line in open(path):
        if not line.strip():
            continue
        entry = json.loads(line)
        name = f"{build}: {entry['name']}"
        junit = os.path.join(os.path.dirname(path), "pytest.xml")
        if entry["name"].endswith(" / python") and entry["result"] == "OK" and os.path.exists(junit):
            for case in ET.parse(junit).getroot().iter("testcase"):
                bad = any(c.tag in ("failure", "error") for c in case)
                results.append((f"{name} :: {case.get('name')}", "FAIL" if bad else "OK"))
        else:
            results.append((name, entry["result"]))
failures = [(name, result) for name, result in results if result != "OK"]
for name, result in failures:
    print(f"{result}: {name}")
passed = len(results) - len(failures)
print(f"{passed} passed, {len(failures)} failed")
sys.exit(1 if failures or not results else 0)
PY
}

case "${1:-}" in
  demo)
    install_missing
    configure build
    ninja -C build "${demo_targets[@]}"
    build/examples/pool_speedup
    ;;
  bench)
    install_missing
    build build
    shift
    build/bench/plugpool-bench "$@"
    ;;
  test)
    install_missing
    build build
    status=0
    meson test -C build --print-errorlogs || status=$?
    build build-asan -Db_sanitize=address,undefined -Dbuildtype=debug
    meson test -C build-asan --setup asan --no-suite memory --no-suite fork --no-suite install \
      --no-suite python --no-suite debian \
      --print-errorlogs \
      || status=$?
    build build-tsan -Db_sanitize=thread -Dbuildtype=debug
    meson test -C build-tsan --setup tsan --suite tsan --print-errorlogs || status=$?
    CXX=clang++ build build-fuzz -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false \
      -Dfuzz_seconds="${FUZZ_SECONDS:-60}"
    meson test -C build-fuzz --suite fuzz --print-errorlogs || status=$?
    summarize build/meson-logs/testlog.json build-asan/meson-logs/testlog-asan.json \
      build-tsan/meson-logs/testlog-tsan.json build-fuzz/meson-logs/testlog.json || status=1
    exit "$status"
    ;;
  *)
    echo "usage: ./setup.sh demo | test | bench [plugpool-bench options]" >&2
    exit 2
    ;;
esac
