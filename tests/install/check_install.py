#!/usr/bin/env python3
"""Installs plugpool into a temporary folder, builds an out-of-tree plugin and host against
the installed copy with only pkg-config and g++, and runs them.

usage: check_install.py MESON BUILD_DIR PREFIX SOURCE_DIR

1. `meson install -C BUILD_DIR --no-rebuild --destdir STAGE` puts the installed tree in
   STAGE/PREFIX (PREFIX as configured, e.g. /usr/local), as a packager stages it. Every
   installed file the README promises must be there.
2. pkg-config reads plugpool.pc and plugpool-sdk.pc from STAGE/PREFIX/LIBDIR/pkgconfig;
   `--define-variable=prefix=STAGE/PREFIX` points their paths at the staged copy.
3. g++ builds SOURCE_DIR/mytasks.cc into libmytasks.so with the flags of plugpool-sdk and
   -Wl,--no-undefined, and copies it into plugpool-sdk's `plugindir`.
4. g++ builds SOURCE_DIR/host.cc with the flags of plugpool and an rpath to its libdir.
5. The host runs without LD_LIBRARY_PATH, PLUGPOOL_WORKER or PLUGPOOL_PLUGIN_PATH: it must
   load the staged libplugpool, which must start the staged plugpool-worker (found relative
   to the library, since nothing is installed at PREFIX itself) and find both plugins by
   bare name in the staged plugin folder.
6. The staged command line, STAGE/PREFIX/bin/plugpool, runs the same way (no
   LD_LIBRARY_PATH, no PLUGPOOL_* variables): it must load the staged libplugpool (through
   its $ORIGIN-relative RUNPATH, as ldd reports), `plugpool tasks examples` must list the
   staged examples plugin, `plugpool run examples square 7` must print 49, and
   `plugpool run mytasks worker_executable` must name the staged worker.
7. No process may still run from the stage. The temporary folder is removed whatever
   happens; nothing is written outside it but meson's own install log in BUILD_DIR.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

meson, build_dir, prefix, source_dir = sys.argv[1:]
# What the commands below may not inherit: meson test's LD_LIBRARY_PATH points at the build
# tree, and these would send the pool to the build tree's worker or plugins.
env = {k: v for k, v in os.environ.items()
       if k not in ("LD_LIBRARY_PATH", "PLUGPOOL_WORKER", "PLUGPOOL_PLUGIN_PATH",
                    "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR")}


def run(*args, **kwargs):
    print("$", " ".join(args), flush=True)
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env,
                            **kwargs)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        sys.exit(f"{args[0]} exited with {result.returncode}")
    return result.stdout.strip()


def processes_running_from(folder):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if exe.startswith(folder):
            found.append(f"{pid} {exe}")
    return found


with tempfile.TemporaryDirectory(prefix="plugpool-install-") as tmp:
    stage = os.path.join(tmp, "stage")
    root = stage + prefix  # PREFIX is absolute
    run(meson, "install", "-C", build_dir, "--no-rebuild", "--quiet", "--destdir", stage)

    pcfiles = glob.glob(os.path.join(root, "**", "pkgconfig", "plugpool.pc"), recursive=True)
    if len(pcfiles) != 1:
        sys.exit(f"expected one plugpool.pc under {root}, found {pcfiles}")
    env["PKG_CONFIG_PATH"] = os.path.dirname(pcfiles[0])

    def pkg_config(*args):
        return run("pkg-config", "--define-variable=prefix=" + root, *args).split()

    libdir = pkg_config("--variable=libdir", "plugpool")[0]
    plugindir = pkg_config("--variable=plugindir", "plugpool-sdk")[0]
    worker = pkg_config("--variable=worker", "plugpool")[0]
    includedir = pkg_config("--variable=includedir", "plugpool")[0]
    schemadir = pkg_config("--variable=schemadir", "plugpool")[0]
    cli = os.path.join(root, "bin", "plugpool")
    expected = [
        cli,
        os.path.join(libdir, "libplugpool.so"),
        worker,
        os.path.join(plugindir, "libexamples.so"),
        os.path.join(plugindir, "libimagefeatures.so"),
        os.path.join(libdir, "pkgconfig", "plugpool-sdk.pc"),
        os.path.join(schemadir, "wire.capnp"),
        os.path.join(root, "share", "doc", "plugpool", "LICENSE"),
    ] + [os.path.join(includedir, "plugpool", h)
         for h in ("pool.h", "errors.h", "future.h", "stream.h", "manifest.h", "sdk.h",
                   "codec.h", "abi.h")]
    missing = [f for f in expected if not os.path.exists(f)]
    if missing:
        sys.exit(f"not installed: {missing}")

    for pc in ("plugpool", "plugpool-sdk"):
        licence = pkg_config("--variable=license", pc)
        if licence != ["MIT"]:
            sys.exit(f"{pc}.pc: license is {licence}, expected MIT")

    warnings = ["-Wall", "-Wextra", "-Wpedantic", "-Werror"]
    plugin = os.path.join(tmp, "libmytasks.so")
    run("g++", "-std=c++20", "-O2", *warnings, "-shared", "-fPIC", "-fvisibility=hidden",
        os.path.join(source_dir, "mytasks.cc"), "-o", plugin,
        *pkg_config("--cflags", "--libs", "plugpool-sdk"), "-Wl,--no-undefined")
    run("cp", plugin, plugindir)
    host = os.path.join(tmp, "host")
    run("g++", "-std=c++20", "-O2", *warnings, os.path.join(source_dir, "host.cc"), "-o", host,
        *pkg_config("--cflags", "--libs", "plugpool"), "-Wl,-rpath," + libdir)
    out = run(host, cwd=tmp)

    real = os.path.realpath
    pattern = (r"cube: 1 8 27\n"
               r"greet: hello, plugpool\n"
               r"square: 49\n"
               r"library: (?P<library>.+)\n"
               r"worker: (?P<worker>.+)")
    match = re.fullmatch(pattern, out)
    if not match:
        sys.exit(f"host: output does not match {pattern!r}")
    if os.path.dirname(real(match["library"])) != real(libdir):
        sys.exit(f"host loaded {match['library']}, not the installed library in {libdir}")
    if real(match["worker"]) != real(worker):
        sys.exit(f"the pool ran {match['worker']}, not the installed worker {worker}")

    # The command line, from the staged tree with the same environment as the host.
    lib_lines = [line for line in run("ldd", cli).splitlines() if "libplugpool.so" in line]
    lib_match = re.fullmatch(r"\s*libplugpool\.so\S* => (\S+) \(0x[0-9a-f]+\)",
                             lib_lines[0]) if len(lib_lines) == 1 else None
    if not lib_match or os.path.dirname(real(lib_match[1])) != real(libdir):
        sys.exit(f"{cli} does not load the installed library in {libdir}: {lib_lines}")
    tasks = run(cli, "tasks", "examples", cwd=tmp).splitlines()
    staged_examples = os.path.join(plugindir, "libexamples.so")
    if not tasks or not re.fullmatch(rf"examples \({re.escape(staged_examples)}\): \d+ tasks",
                                     tasks[0]):
        sys.exit(f"plugpool tasks examples: expected the first line to name {staged_examples}")
    for name, signature in (("square", "(int64) -> int64"),
                            ("polygon_stats", "(struct Polygon@")):
        if not any(re.match(rf"  {name}\s+{re.escape(signature)}", t) for t in tasks):
            sys.exit(f"plugpool tasks examples: no line for {name} {signature}")
    square = run(cli, "run", "examples", "square", "7", cwd=tmp)
    if square != "49":
        sys.exit(f"plugpool run examples square 7: printed {square!r}, expected '49'")
    cli_worker = run(cli, "run", "mytasks", "worker_executable", cwd=tmp)
    if real(cli_worker) != real(worker):
        sys.exit(f"plugpool ran the worker {cli_worker}, not the installed worker {worker}")

    left = processes_running_from(tmp)
    if left:
        sys.exit(f"processes still running from the installed tree: {left}")
