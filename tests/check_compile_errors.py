#!/usr/bin/env python3
"""Compiles the small files of tests/compile_errors/ and checks what the compiler says: a
mistake in a task signature, or a build without C++20, must give one readable error that
says what is wrong and what to do, not screens of template errors.

usage: check_compile_errors.py CASES_DIR SDK_INCLUDE RUNTIME_INCLUDE COMPILER...

Each case is compiled with -fsyntax-only and the warnings of this project's build:

- good_plugin.cc and host.cc with -std=c++20: no diagnostic at all (the control: the same
  command works when nothing is wrong);
- optional_argument.cc, optional_in_result.cc, optional_in_host.cc with -std=c++20: exactly
  one error, codec.h's static_assert listing the supported types, and the note naming the
  unsupported type (std::optional<long int>, also when it sits inside a std::vector);
- good_plugin.cc and host.cc with -std=c++17: the SDK's #error asking for -std=c++20, then
  only the missing include that stops the compiler there (nothing from the templates).
"""
import os
import re
import subprocess
import sys

cases_dir, sdk_include, runtime_include, *compiler = sys.argv[1:]
capnp = subprocess.run(["pkg-config", "--cflags", "capnp"], capture_output=True, text=True,
                       check=True).stdout.split()
# LC_ALL=C: plain quotes in the compiler's messages, whatever the caller's locale.
env = dict(os.environ, LC_ALL="C")

TYPE_ERROR = ("static assertion failed: plugpool: this type cannot be a task's argument or "
              "result. Supported: bool, int8_t ... int64_t, uint8_t ... uint64_t, float, double, "
              "std::string, std::string_view, plugpool::Bytes, std::span<const std::byte>, a "
              "Cap'n Proto struct")
CXX20_ERROR = '#error "plugpool needs C++20: compile with -std=c++20 (or -std=gnu++20)"'
CXX20_STOP = "fatal error: plugpool: stopping here, see the #error above"
# More than this many lines means the one error came with others' context (33 and 54 lines
# before these checks existed).
MOST_LINES = 16

# file, -std=, what the compiler must say: None (nothing), "c++20", or the unsupported type
CASES = [
    ("good_plugin.cc", "c++20", None),
    ("host.cc", "c++20", None),
    ("optional_argument.cc", "c++20", "std::optional<long int>"),
    ("optional_in_result.cc", "c++20", "std::optional<long int>"),
    ("optional_in_host.cc", "c++20", "std::optional<long int>"),
    ("good_plugin.cc", "c++17", "c++20"),
    ("host.cc", "c++17", "c++20"),
]


def problem(expected, returncode, lines):
    """What is wrong with the compiler's answer, or None."""
    # GCC's diagnostics start with file:line:column; the quoted source lines are indented.
    errors = [line for line in lines if re.match(r"\S+:\d+:\d+: (fatal )?error: ", line)]
    if expected is None:
        return "expected to compile without a diagnostic" if returncode != 0 or lines else None
    if returncode == 0:
        return "compiled"
    if expected == "c++20":
        if (len(errors) != 2 or not errors[0].endswith("error: " + CXX20_ERROR)
                or CXX20_STOP not in errors[1] or "compilation terminated." not in lines):
            return f"expected only the C++20 #error and the stop after it; errors: {errors}"
        return None
    if len(errors) != 1 or TYPE_ERROR not in errors[0]:
        return f"expected exactly one error, codec.h's static_assert; errors: {errors}"
    note = re.compile(rf"IS_SUPPORTED<{re.escape(expected)} ?>' evaluates to false")
    if not any(note.search(line) for line in lines):
        return f"no note naming {expected}"
    if len(lines) > MOST_LINES:
        return f"{len(lines)} lines, more than {MOST_LINES}"
    return None


failures = []
for name, std, expected in CASES:
    command = [*compiler, "-std=" + std, "-fsyntax-only", "-Wall", "-Wextra", "-Wpedantic",
               "-I", sdk_include, "-I", runtime_include, *capnp, os.path.join(cases_dir, name)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout + result.stderr
    why = problem(expected, result.returncode, output.splitlines())
    print(f"{'FAIL' if why else 'ok'}  {name} -std={std}", flush=True)
    if why:
        failures.append(f"{name} -std={std}: {why}\n$ {' '.join(command)}\n{output}")

if failures:
    sys.exit("\n\n".join(failures))
