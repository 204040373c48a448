#!/usr/bin/env python3
"""Builds plugpool's Debian packages from a copy of the source tree, checks them with lintian
and by their contents, unpacks them into a throwaway root, and builds and runs the install
test's out-of-tree plugin and host against that root.

usage: check_debian.py SOURCE_ROOT VERSION

Exits 77 (meson's "skipped") with the reason when the Debian packaging tools are missing
(`./setup.sh test` installs them: dpkg-dev, debhelper, lintian).

1. The source tree's files (git's tracked and untracked-but-not-ignored files, or the whole
   tree but build*/ and obj-*/ without git) are copied to TMP/src, which is made a git
   repository of its own with one commit.
2. `dpkg-buildpackage -b -us -uc` builds there (debian/rules: debhelper's meson build system
   in obj-<triplet>, then the example hosts as tests), with DEB_BUILD_OPTIONS=parallel=N.
   Afterwards `git status` in TMP/src must show nothing: whatever the build leaves is ignored
   by the committed .gitignore files.
3. The four packages, version VERSION (meson's project version, which debian/changelog must
   repeat), are there; lintian on the .changes reports no error (its whole output is shown).
4. Each package holds what it must and nothing else (PACKAGES below), and the packages that
   need the library at the same version say so.
5. All four are unpacked with `dpkg-deb -x` into TMP/root, and installed.check(TMP/root/usr)
   builds the plugin and host with pkg-config and with CMake against it and runs them and the
   command line (installed.py says what it checks).
TMP is removed on every way out (SIGTERM included), after the build's whole process group is
killed. Outside it, only the compiler cache (meson uses ccache when it is installed) is
written.
"""
import ctypes
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import installed  # noqa: E402

source_root, version = sys.argv[1:]
install_test_dir = os.path.join(source_root, "tests", "install")

missing = [tool for tool in ("dpkg-buildpackage", "dpkg-deb", "dpkg-architecture", "dh",
                             "lintian", "cmake")
           if shutil.which(tool) is None]
if missing:
    print(f"SKIP: the Debian packaging tools are not installed (no {', '.join(missing)}); "
          "`./setup.sh test` installs them (dpkg-dev, debhelper, lintian, cmake)")
    sys.exit(77)

multiarch = subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True,
                           text=True, check=True).stdout.strip()
arch = subprocess.run(["dpkg-architecture", "-qDEB_HOST_ARCH"], capture_output=True, text=True,
                      check=True).stdout.strip()
lib = "usr/lib/" + multiarch
doc = "usr/share/doc/"

# package: the regular files and symbolic links it holds (patterns, each of which must match
# at least one), beside its doc folder's copyright and changelog.gz.
PACKAGES = {
    "libplugpool0": [rf"{lib}/libplugpool\.so\.0",
                     rf"{lib}/libplugpool\.so\.{re.escape(version)}"],
    "libplugpool-dev": [
        r"usr/include/plugpool/(detail/)?[a-z_-]+\.h",
        rf"{lib}/libplugpool\.so",
        rf"{lib}/pkgconfig/plugpool\.pc", rf"{lib}/pkgconfig/plugpool-sdk\.pc",
        rf"{lib}/cmake/plugpool/plugpoolConfig\.cmake",
        rf"{lib}/cmake/plugpool/plugpoolConfigVersion\.cmake",
        r"usr/share/plugpool/wire\.capnp", r"usr/share/plugpool/geometry\.capnp",
        r"usr/share/plugpool/imagefeatures\.capnp",
    ],
    "plugpool": [r"usr/bin/plugpool", r"usr/libexec/plugpool-worker"],
    "plugpool-plugins": [rf"{lib}/plugpool/plugins/libexamples\.so",
                         rf"{lib}/plugpool/plugins/libimagefeatures\.so"],
}
# package: what its Depends must include.
SAME_VERSION = {
    "libplugpool-dev": [f"libplugpool0 (= {version})", "libcapnp-dev"],
    "plugpool": [f"libplugpool0 (= {version})"],
}

env = installed.clean_environment()
BUILD_TIMEOUT = 2100  # s; meson's timeout for the whole test is 2400 s


def stop(signum, frame):
    sys.exit(f"stopped by signal {signum}")  # unwinds: kills the build, removes TMP


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, stop)

# This process is a subreaper: whatever the build orphans (ninja runs each command in a process
# group of its own, so killing the build's group leaves them) is re-parented here, where
# descendants() finds it.
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def descendants():
    """The pids of this process's living descendants (zombies excluded)."""
    parents = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state != "Z":
            parents[int(name)] = int(ppid)
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def kill_descendants():
    """SIGKILLs this process's descendants until none is left (a process spawned meanwhile is a
    descendant too, found next round), reaping them."""
    for _ in range(200):
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        pids = descendants()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    print(f"warning: could not stop the processes {sorted(descendants())}", file=sys.stderr)


def copy_source(dest):
    """Copies the source tree's own files (not build folders or other output) to DEST."""
    if os.path.isdir(os.path.join(source_root, ".git")) or os.path.isfile(
            os.path.join(source_root, ".git")):
        listed = subprocess.run(["git", "-C", source_root, "ls-files", "-z", "--cached",
                                 "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            src = os.path.join(source_root, name)
            if not os.path.lexists(src):  # deleted but not yet committed
                continue
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name), follow_symlinks=False)
    else:
        shutil.copytree(source_root, dest, symlinks=True,
                        ignore=lambda d, names: [n for n in names if d == source_root and
                                                 (n.startswith(("build", "obj-")) or n == ".git")])


def package_files(deb):
    """The regular files and symbolic links in DEB, as paths without the leading './'."""
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    files = []
    for line in listing:
        kind, path = line[0], line.split(None, 5)[5].split(" -> ")[0]
        if kind in "-l":
            files.append(path.removeprefix("./"))
    return files


def check_packages(tmp):
    """Everything after the skip check, in the temporary folder TMP."""
    src = os.path.join(tmp, "src")
    copy_source(src)
    git = shutil.which("git") is not None
    if git:
        for args in (["init", "-q"], ["add", "-A"],
                     ["-c", "user.name=check_debian", "-c", "user.email=check_debian@localhost",
                      "commit", "-q", "-m", "the source tree as copied"]):
            installed.run(env, "git", "-C", src, *args)

    changelog_version = installed.run(env, "dpkg-parsechangelog", "-l",
                                      os.path.join(src, "debian", "changelog"), "-S", "Version")
    if changelog_version != version:
        sys.exit(f"debian/changelog is at version {changelog_version}, meson.build at {version}")

    # (Without meson test's random MALLOC_PERTURB_: the package's own tests set theirs.)
    build_env = {k: v for k, v in env.items() if k != "MALLOC_PERTURB_"}
    build_env["DEB_BUILD_OPTIONS"] = f"parallel={os.cpu_count() or 1}"
    print("$ dpkg-buildpackage -b -us -uc  (in", src + ")", flush=True)
    # On any way out (a failure, a timeout, SIGTERM from meson) the whole build — make, ninja,
    # the compilers in ninja's own process groups, the package's tests — is killed before TMP
    # is removed; and a build that succeeds must have left no process behind.
    build = subprocess.Popen(["dpkg-buildpackage", "-b", "-us", "-uc"], cwd=src, env=build_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = build.communicate(timeout=BUILD_TIMEOUT)
        left = descendants()
        if left:
            sys.exit(f"the package build left processes running: {sorted(left)}")
    except subprocess.TimeoutExpired:
        sys.exit(f"dpkg-buildpackage did not finish within {BUILD_TIMEOUT} s")
    finally:
        try:
            os.killpg(build.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        build.wait()
        kill_descendants()
    log = output.splitlines()
    if build.returncode != 0:
        print("\n".join(log[-150:]))
        sys.exit(f"dpkg-buildpackage exited with {build.returncode} (the last 150 lines above)")
    print("\n".join(line for line in log if re.match(r"\s*(dh_|dpkg-|debian/rules|\d+/\d+ )",
                                                     line)))

    if git:
        left = installed.run(env, "git", "-C", src, "status", "--porcelain")
        if left:
            sys.exit(f"the package build left files that git status shows:\n{left}")
    else:
        print("(git is not installed: not checking what the build left in the tree)")

    debs = {name: os.path.join(tmp, f"{name}_{version}_{arch}.deb") for name in PACKAGES}
    absent = [d for d in debs.values() if not os.path.exists(d)]
    if absent:
        sys.exit(f"not built: {absent}; built: {sorted(glob.glob(os.path.join(tmp, '*deb')))}")

    changes = os.path.join(tmp, f"plugpool_{version}_{arch}.changes")
    print("$ lintian --fail-on error --display-info", changes, flush=True)
    lint = subprocess.run(["lintian", "--fail-on", "error", "--display-info", changes],
                          capture_output=True, text=True, env=env, timeout=600)
    print(lint.stdout + lint.stderr)
    tags = [line for line in lint.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    print("lintian: " + ", ".join(f"{sum(t.startswith(k) for t in tags)} {name}"
                                  for k, name in (("E", "errors"), ("W", "warnings"),
                                                  ("I", "info"))))
    if lint.returncode != 0 or any(t.startswith("E: ") for t in tags):
        sys.exit(f"lintian reports errors (exit status {lint.returncode})")

    for name, patterns in PACKAGES.items():
        files = package_files(debs[name])
        docs = [f"{doc}{name}/copyright", f"{doc}{name}/changelog.gz"]
        unexpected = [f for f in files
                      if f not in docs and not any(re.fullmatch(p, f) for p in patterns)]
        lacking = [p for p in patterns if not any(re.fullmatch(p, f) for f in files)]
        lacking += [d for d in docs if d not in files]
        if unexpected or lacking:
            sys.exit(f"{name}: unexpected {unexpected}, missing {lacking}")
        depends = [d.strip() for d in
                   installed.run(env, "dpkg-deb", "--field", debs[name], "Depends").split(",")]
        for needed in SAME_VERSION.get(name, []):
            if not any(d == needed or d.startswith(needed + " (") for d in depends):
                sys.exit(f"{name}: Depends {depends} lacks {needed!r}")

    root = os.path.join(tmp, "root")
    for deb in debs.values():
        installed.run(env, "dpkg-deb", "-x", deb, root)
    work = os.path.join(tmp, "work")
    os.mkdir(work)
    installed.check(os.path.join(root, "usr"), install_test_dir, work, env,
                    expected_extra=[f"share/doc/{name}/copyright" for name in PACKAGES])
    left = installed.processes_running_from(tmp)
    if left:
        sys.exit(f"processes still running from the unpacked packages: {left}")


with tempfile.TemporaryDirectory(prefix="plugpool-debian-") as tmp:
    try:
        check_packages(tmp)
    finally:
        kill_descendants()  # before TMP goes: whatever still runs may write into it
