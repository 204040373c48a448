#!/usr/bin/env python3
"""Installs plugpool into a temporary folder, builds an out-of-tree plugin and host against
the installed copy, and runs them.

usage: check_install.py MESON BUILD_DIR PREFIX SOURCE_DIR

`meson install -C BUILD_DIR --no-rebuild --destdir STAGE` puts the installed tree in
STAGE/PREFIX (PREFIX as configured, e.g. /usr/local), as a packager stages it; then
installed.check(STAGE/PREFIX, ...) checks it (installed.py lists what), and that the licence
is installed as share/doc/plugpool/LICENSE. The temporary folder is removed whatever
happens; nothing is written outside it but meson's own install log in BUILD_DIR.
"""
import os
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import installed  # noqa: E402

meson, build_dir, prefix, source_dir = sys.argv[1:]
env = installed.clean_environment()

with tempfile.TemporaryDirectory(prefix="plugpool-install-") as tmp:
    stage = os.path.join(tmp, "stage")
    root = stage + prefix  # PREFIX is absolute
    installed.run(env, meson, "install", "-C", build_dir, "--no-rebuild", "--quiet",
                  "--destdir", stage)
    installed.check(root, source_dir, tmp, env,
                    expected_extra=[os.path.join("share", "doc", "plugpool", "LICENSE")])
