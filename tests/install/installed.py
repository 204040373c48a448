"""What the install tests check of an installed plugpool, wherever it was put: check_install.py
stages `meson install --destdir`, check_debian.py unpacks the .deb packages. Both then call
check(ROOT, ...) with ROOT the installed prefix inside their temporary folder (STAGE/usr/local,
UNPACKED/usr); nothing is installed at the prefix itself.

1. Every installed file the README promises must be under ROOT.
2. pkg-config reads plugpool.pc and plugpool-sdk.pc from ROOT/LIBDIR/pkgconfig;
   `--define-variable=prefix=ROOT` points their paths at ROOT. Both say `license` is MIT.
3. `capnp compile -oc++` generates the C++ of the plugin's own schema (SOURCE_DIR/mytypes.capnp)
   and of the installed examples schema (`schemadir`/geometry.capnp) into the temporary folder.
4. g++ builds SOURCE_DIR/mytasks.cc (with mytypes.capnp.c++) into libmytasks.so with the flags
   of plugpool-sdk and -Wl,--no-undefined, and copies it into plugpool-sdk's `plugindir`.
5. Decoys where only a build tree's library would look: an unrelated plugin (SOURCE_DIR/
   mystats.cc, plugin "mystats") as LIBDIR/../plugins/libexamples.so, and a plugpool-worker
   that fails, in LIBDIR. An installed library searches only its documented places, so
   neither may be picked up below.
6. g++ builds SOURCE_DIR/host.cc (with both schemas' .capnp.c++) with the flags of plugpool and
   an rpath to its libdir.
7. The host runs without LD_LIBRARY_PATH, PLUGPOOL_WORKER or PLUGPOOL_PLUGIN_PATH: it must load
   ROOT's libplugpool, which must start ROOT's plugpool-worker (found relative to the library)
   and find both plugins by bare name in ROOT's plugin folder; its struct tasks must answer.
8. CMake builds the same plugin and host from SOURCE_DIR/CMakeLists.txt with
   CMAKE_PREFIX_PATH=ROOT (find_package(plugpool 0.1), plugpool::sdk, plugpool::plugpool), which
   must report plugpool's version and its MIT licence; `cmake --install` puts the plugin into
   plugpool_PLUGIN_DIR, and the host must run as in 7.
9. ROOT/bin/plugpool runs the same way: it must load ROOT's libplugpool (through its
   $ORIGIN-relative RUNPATH, as ldd reports), `plugpool tasks examples` must list ROOT's
   examples plugin, `plugpool run examples square 7` must print 49, and
   `plugpool run mytasks worker_executable` must name ROOT's worker.
10. No process may still run from the temporary folder.
Every failure ends the program (sys.exit with the reason); the caller removes its folder.
"""
import glob
import os
import re
import subprocess
import sys

WARNINGS = ["-Wall", "-Wextra", "-Wpedantic", "-Werror"]


def clean_environment():
    """os.environ without what would send a build or a pool elsewhere: meson test's
    LD_LIBRARY_PATH points at the build tree, PLUGPOOL_WORKER and PLUGPOOL_PLUGIN_PATH at the
    build tree's worker or plugins, PKG_CONFIG_* at other .pc files."""
    return {k: v for k, v in os.environ.items()
            if k not in ("LD_LIBRARY_PATH", "PLUGPOOL_WORKER", "PLUGPOOL_PLUGIN_PATH",
                         "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR")}


def run(env, *args, timeout=300, **kwargs):
    """Runs ARGS with ENV, echoing the command and its output; ends the test if it fails."""
    print("$", " ".join(args), flush=True)
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                                **kwargs)
    except subprocess.TimeoutExpired:
        sys.exit(f"{args[0]} did not finish within {timeout} s")
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    sys.stdout.flush()
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


HOST_OUTPUT = (r"cube: 1 8 27\n"
               r"greet: hello, plugpool\n"
               r"square: 49\n"
               r"bounds: -1\.\.7 2\.\.2\n"
               r"polygon_stats: unit square, area 1, perimeter 4\n"
               r"library: (?P<library>.+)\n"
               r"worker: (?P<worker>.+)")


def check_host(env, host, tmp, libdir, worker):
    """Runs HOST (host.cc, however it was built) and checks what it printed."""
    out = run(env, host, cwd=tmp)
    match = re.fullmatch(HOST_OUTPUT, out)
    if not match:
        sys.exit(f"{host}: output does not match {HOST_OUTPUT!r}")
    real = os.path.realpath
    if os.path.dirname(real(match["library"])) != real(libdir):
        sys.exit(f"{host} loaded {match['library']}, not the installed library in {libdir}")
    if real(match["worker"]) != real(worker):
        sys.exit(f"{host}: the pool ran {match['worker']}, not the installed worker {worker}")


def check(root, source_dir, tmp, env, expected_extra=()):
    """Checks the plugpool installed at ROOT (an absolute prefix inside TMP) as the module
    docstring says, building the out-of-tree plugin and host of SOURCE_DIR in TMP. ENV is the
    environment for every command (clean_environment()); EXPECTED_EXTRA lists further paths,
    relative to ROOT, that must exist."""
    env = dict(env)
    pcfiles = glob.glob(os.path.join(root, "**", "pkgconfig", "plugpool.pc"), recursive=True)
    if len(pcfiles) != 1:
        sys.exit(f"expected one plugpool.pc under {root}, found {pcfiles}")
    env["PKG_CONFIG_PATH"] = os.path.dirname(pcfiles[0])

    def pkg_config(*args):
        return run(env, "pkg-config", "--define-variable=prefix=" + root, *args).split()

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
        os.path.join(libdir, "cmake", "plugpool", "plugpoolConfig.cmake"),
        os.path.join(libdir, "cmake", "plugpool", "plugpoolConfigVersion.cmake"),
        os.path.join(schemadir, "wire.capnp"),
        os.path.join(schemadir, "geometry.capnp"),
        os.path.join(schemadir, "imagefeatures.capnp"),
    ] + [os.path.join(includedir, "plugpool", h)
         for h in ("pool.h", "errors.h", "future.h", "stream.h", "manifest.h", "sdk.h",
                   "codec.h", "abi.h")] + [os.path.join(root, p) for p in expected_extra]
    missing = [f for f in expected if not os.path.exists(f)]
    if missing:
        sys.exit(f"not installed: {missing}")
    for pc in ("plugpool", "plugpool-sdk"):
        licence = pkg_config("--variable=license", pc)
        if licence != ["MIT"]:
            sys.exit(f"{pc}.pc: license is {licence}, expected MIT")

    # The plugin's own schema and the installed examples schema, generated as a user would.
    generated = os.path.join(tmp, "generated")
    os.mkdir(generated)
    run(env, "capnp", "compile", "-oc++:" + generated, "--src-prefix=" + source_dir,
        os.path.join(source_dir, "mytypes.capnp"))
    run(env, "capnp", "compile", "-oc++:" + generated, "--src-prefix=" + schemadir,
        os.path.join(schemadir, "geometry.capnp"))
    mytypes_cxx = os.path.join(generated, "mytypes.capnp.c++")
    geometry_cxx = os.path.join(generated, "geometry.capnp.c++")

    plugin = os.path.join(tmp, "libmytasks.so")
    run(env, "g++", "-std=c++20", "-O2", *WARNINGS, "-shared", "-fPIC", "-fvisibility=hidden",
        "-I", generated, os.path.join(source_dir, "mytasks.cc"), mytypes_cxx, "-o", plugin,
        *pkg_config("--cflags", "--libs", "plugpool-sdk"), "-Wl,--no-undefined")
    run(env, "cp", plugin, plugindir)

    # The decoys (docstring, step 5).
    decoys = os.path.join(os.path.dirname(libdir), "plugins")
    os.makedirs(decoys, exist_ok=True)
    run(env, "g++", "-std=c++20", "-O2", *WARNINGS, "-shared", "-fPIC", "-fvisibility=hidden",
        os.path.join(source_dir, "mystats.cc"), "-o", os.path.join(decoys, "libexamples.so"),
        *pkg_config("--cflags", "--libs", "plugpool-sdk"), "-Wl,--no-undefined")
    decoy_worker = os.path.join(libdir, "plugpool-worker")
    with open(decoy_worker, "w") as f:
        f.write("#!/bin/sh\necho 'the decoy worker in LIBDIR ran' >&2\nexit 1\n")
    os.chmod(decoy_worker, 0o755)
    host = os.path.join(tmp, "host")
    run(env, "g++", "-std=c++20", "-O2", *WARNINGS, "-I", generated,
        os.path.join(source_dir, "host.cc"), mytypes_cxx, geometry_cxx, "-o", host,
        *pkg_config("--cflags", "--libs", "plugpool"), "-Wl,-rpath," + libdir)
    check_host(env, host, tmp, libdir, worker)

    # The same plugin and host built with CMake (SOURCE_DIR/CMakeLists.txt), whose install step
    # puts the plugin into plugpool_PLUGIN_DIR in place of the one above.
    cmake_build = os.path.join(tmp, "cmake-build")
    configured = run(env, "cmake", "-S", source_dir, "-B", cmake_build, "-G", "Ninja",
                     "-DCMAKE_PREFIX_PATH=" + root, "-DCMAKE_BUILD_TYPE=Release",
                     "-DCMAKE_CXX_FLAGS=" + " ".join(WARNINGS))
    version = pkg_config("--modversion", "plugpool")[0]
    if f"-- plugpool {version}, license MIT" not in configured.splitlines():
        sys.exit(f"find_package(plugpool) did not report version {version} and license MIT")
    run(env, "cmake", "--build", cmake_build)
    run(env, "cmake", "--install", cmake_build)
    check_host(env, os.path.join(cmake_build, "host"), tmp, libdir, worker)

    # The command line, from ROOT with the same environment as the host.
    real = os.path.realpath
    lib_lines = [line for line in run(env, "ldd", cli).splitlines() if "libplugpool.so" in line]
    lib_match = re.fullmatch(r"\s*libplugpool\.so\S* => (\S+) \(0x[0-9a-f]+\)",
                             lib_lines[0]) if len(lib_lines) == 1 else None
    if not lib_match or os.path.dirname(real(lib_match[1])) != real(libdir):
        sys.exit(f"{cli} does not load the installed library in {libdir}: {lib_lines}")
    tasks = run(env, cli, "tasks", "examples", cwd=tmp).splitlines()
    installed_examples = os.path.join(plugindir, "libexamples.so")
    if not tasks or not re.fullmatch(rf"examples \({re.escape(installed_examples)}\): \d+ tasks",
                                     tasks[0]):
        sys.exit(f"plugpool tasks examples: expected the first line to name {installed_examples}")
    for name, signature in (("square", "(int64) -> int64"),
                            ("polygon_stats", "(struct Polygon@")):
        if not any(re.match(rf"  {name}\s+{re.escape(signature)}", t) for t in tasks):
            sys.exit(f"plugpool tasks examples: no line for {name} {signature}")
    square = run(env, cli, "run", "examples", "square", "7", cwd=tmp)
    if square != "49":
        sys.exit(f"plugpool run examples square 7: printed {square!r}, expected '49'")
    cli_worker = run(env, cli, "run", "mytasks", "worker_executable", cwd=tmp)
    if real(cli_worker) != real(worker):
        sys.exit(f"plugpool ran the worker {cli_worker}, not the installed worker {worker}")

    left = processes_running_from(tmp)
    if left:
        sys.exit(f"processes still running from the installed tree: {left}")
