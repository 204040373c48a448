#!/usr/bin/env python3
"""Runs an example host and checks that it succeeds and its output matches a regex.

usage: check_output.py PROGRAM REGEX [ARG...]
The whole standard output, stripped, must match REGEX (re.fullmatch, MULTILINE).
"""
import re
import subprocess
import sys

program, pattern, *args = sys.argv[1:]
run = subprocess.run([program, *args], capture_output=True, text=True, timeout=600)
sys.stdout.write(run.stdout)
sys.stderr.write(run.stderr)
if run.returncode != 0:
    sys.exit(f"{program} exited with {run.returncode}")
if not re.fullmatch(pattern, run.stdout.strip(), re.MULTILINE):
    sys.exit(f"{program}: output does not match {pattern!r}")
