#!/usr/bin/env python3
"""Drives the real `plugpool` command-line binary: outputs, exit codes, error lines, the
progress line under a pseudo-terminal.

usage: check_cli.py PLUGPOOL FIXTURES_DIR FIXTURES_SOURCE_DIR [unittest args...]

Every run has a timeout (a hang guard, not a timing assertion). This process makes itself a
child subreaper, so a worker the CLI left behind would be re-parented here: each test ends by
checking that no child of ours is left.
"""
import ctypes
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

PLUGPOOL, FIXTURES, FIXTURES_SOURCE = sys.argv[1:4]
HANG_GUARD = 120  # seconds

PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def children():
    """Pids whose parent is this process, zombies included."""
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == me:
            pids.append(int(entry))
    return pids


def plugpool(*args, input=None, timeout=HANG_GUARD):
    """Runs plugpool with args; returns (exit status, stdout, stderr) as text."""
    run = subprocess.run([PLUGPOOL, *args], input=input, capture_output=True, text=True,
                         timeout=timeout)
    return run.returncode, run.stdout, run.stderr


class CliTest(unittest.TestCase):
    def tearDown(self):
        # Orphaned workers would have been re-parented to us; give exiting ones a moment.
        deadline = time.monotonic() + 10
        while children() and time.monotonic() < deadline:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        self.assertEqual(children(), [], "processes left behind")

    def assertUsageError(self, status, out, err, pattern):
        """Status 2, nothing on stdout, exactly one line on stderr matching pattern."""
        self.assertEqual(status, 2, err)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertRegex(err, r"^plugpool: .*" + pattern)


class Tasks(CliTest):
    def test_lists_every_task_with_its_signature_and_doc(self):
        status, out, err = plugpool("tasks", "examples")
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"^examples \(/.*libexamples\.so\): 18 tasks\n")
        self.assertRegex(out, r"\n  square +\(int64\) -> int64\n +Returns x \* x\.\n")
        self.assertRegex(out, r"\n  add +\(float64, float64\) -> float64\n")
        self.assertRegex(out, r"\n  word_count +\(text\) -> list<\(text, int64\)>\n")
        self.assertRegex(out, r"\n  polygon_stats +\(struct Polygon@0x[0-9a-f]{16}\) -> "
                              r"struct PolygonStats@0x[0-9a-f]{16}\n")

    def test_json_lists_the_manifest(self):
        status, out, err = plugpool("tasks", "examples", "--json")
        self.assertEqual(status, 0, err)
        manifest = json.loads(out)
        self.assertEqual(manifest["plugin"], "examples")
        tasks = {t["name"]: t for t in manifest["tasks"]}
        self.assertEqual(len(tasks), 18)
        self.assertEqual(tasks["add"]["argTypes"], ["float64", "float64"])
        self.assertEqual(tasks["min_max"]["resultType"], "(float64, float64)")
        self.assertEqual(tasks["square"]["doc"], "Returns x * x.")

    def test_a_plugin_given_by_path(self):
        path = json.loads(plugpool("tasks", "examples", "--json")[1])["path"]
        status, out, _ = plugpool("tasks", path)
        self.assertEqual(status, 0)
        self.assertIn("square", out)

    def test_files_that_are_not_plugins_are_usage_errors(self):
        for path, reason in [
            (os.path.join(FIXTURES_SOURCE, "not_a_library.so"), "cannot be loaded"),
            (os.path.join(FIXTURES, "libnot_a_plugin.so"), "not a plugpool plugin"),
            (os.path.join(FIXTURES, "libwrong_abi.so"), "ABI version"),
            ("/nonexistent/libx.so", "no such file"),
            ("/etc/passwd", "cannot be loaded"),
        ]:
            with self.subTest(path=path):
                self.assertUsageError(*plugpool("tasks", path), re.escape(path) + ".*" + reason)

    def test_an_unknown_plugin_name_is_a_usage_error(self):
        self.assertUsageError(*plugpool("tasks", "no_such_plugin"), 'no plugin named "no_such_plugin"')


class Run(CliTest):
    def test_converts_arguments_to_the_declared_types(self):
        for args, expected in [
            (["square", "7"], "49"),
            (["square", "-5"], "25"),
            (["add", "1.5", "2.25"], "3.75"),
            (["upper", "hello, world"], "HELLO, WORLD"),
            (["sum", "[1, 2, 3]"], "6"),
            (["sort_words", '["pear", "apple"]'], '["apple","pear"]'),
            (["word_count", "a b a"], '[["a",2],["b",1]]'),
            (["min_max", "[3, 1.5, 9]"], "[1.5,9]"),
            (["add", "--", "-1", "-2.5"], "-3.5"),
            (["upper", "--", "--help"], "--HELP"),
            (["echo_bytes", "bytes as they are"], "bytes as they are"),
        ]:
            with self.subTest(args=args):
                status, out, err = plugpool("run", "examples", *args)
                self.assertEqual((status, out, err), (0, expected + "\n", ""))

    def test_a_struct_argument_and_result_as_json(self):
        square = {"name": "sq", "points": [{"x": 0, "y": 0}, {"x": 2, "y": 0},
                                            {"x": 2, "y": 2}, {"x": 0, "y": 2}]}
        status, out, err = plugpool("run", "examples", "polygon_stats", json.dumps(square))
        self.assertEqual(status, 0, err)
        self.assertEqual(json.loads(out), {"name": "sq", "vertices": 4, "area": 4, "perimeter": 8,
                                           "centroid": {"x": 1, "y": 1}})

    def test_a_task_that_throws_fails_with_one_line_and_status_1(self):
        status, out, err = plugpool("run", "examples", "fail", "3")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "plugpool: examples.fail raised std::runtime_error: fail called with 3\n")

    def test_usage_errors_name_the_problem_in_one_line(self):
        cases = [
            (["nope", "1"], 'plugin examples has no task "nope"; it has: square, add'),
            (["square"], r"examples.square takes 1 argument \(int64\) -> int64, got 0"),
            (["add", "1"], r"examples.add takes 2 arguments .*, got 1"),
            (["square", "abc"], r'examples.square: argument 1: "abc" is not an integer \(int64\)'),
            (["square", "99999999999999999999"], r"argument 1: .* is not in range \(int64\)"),
            (["sum", "[1, 2.5]"], r"argument 1: expected int64, got a number that is not an exact"),
            (["sum", "[1,"], r"argument 1: not valid JSON"),
            (["polygon_stats", '{"name": 5}'],
             r"argument 1: field name: expected text as a string, got a number$"),
            (["polygon_stats", '{"nmae": "x", "points": []}'],
             r'argument 1: struct Polygon has no field "nmae"; its fields are name, points$'),
            (["polygon_stats", "[]"],
             r"argument 1: expected struct Polygon as an object, got an array$"),
        ]
        for args, pattern in cases:
            with self.subTest(args=args):
                self.assertUsageError(*plugpool("run", "examples", *args), pattern)

    def test_command_line_errors(self):
        for args, pattern in [([], "subcommand"), (["frobnicate"], "frobnicate"),
                              (["map", "examples", "square", "-", "--output", "xml"], "xml"),
                              (["map", "examples", "square", "--workers", "many"], "many"),
                              (["map", "examples", "square", "--workers", "-1"],
                               "workers must be 1 or more, or 0 for one per core; got -1")]:
            with self.subTest(args=args):
                self.assertUsageError(*plugpool(*args), pattern)


class Version(CliTest):
    def test_version_is_the_projects(self):
        with open(os.path.join(FIXTURES_SOURCE, "..", "..", "meson.build")) as f:
            version = re.search(r"project\([^)]*?version: '([^']+)'", f.read(), re.S).group(1)
        self.assertEqual(plugpool("--version"), (0, f"plugpool {version}\n", ""))


class Map(CliTest):
    def test_results_in_input_order_from_stdin_and_from_a_file(self):
        lines = "".join(f"{i}\n" for i in range(1, 1001))
        expected = "".join(f"{i * i}\n" for i in range(1, 1001))
        self.assertEqual(plugpool("map", "examples", "square", input=lines), (0, expected, ""))
        self.assertEqual(plugpool("map", "examples", "square", "-", input=lines),
                         (0, expected, ""))
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(lines)
            f.flush()
            for chunk in ["1", "7", "1000"]:
                with self.subTest(chunksize=chunk):
                    self.assertEqual(plugpool("map", "examples", "square", f.name, "--workers",
                                              "2", "--chunksize", chunk), (0, expected, ""))

    def test_unordered_gives_every_result_once(self):
        lines = "".join(f"{i % 7}\n" for i in range(200))
        status, out, err = plugpool("map", "examples", "sleep_ms", "-u", "-w", "2", "-o", "jsonl",
                                    input=lines)
        self.assertEqual((status, err), (0, ""))
        records = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(sorted(r["line"] for r in records), list(range(1, 201)))
        for r in records:
            self.assertEqual(r["result"], (r["line"] - 1) % 7)

    def test_text_lines_and_json_lines(self):
        self.assertEqual(plugpool("map", "examples", "upper", input="a b\n\nc\n"),
                         (0, "A B\n\nC\n", ""))
        status, out, err = plugpool("map", "examples", "add", "-o", "jsonl",
                                    input='[1, 2]\n[0.5, "2.5"]\n')
        self.assertEqual((status, err), (0, ""))
        self.assertEqual([json.loads(l) for l in out.splitlines()],
                         [{"line": 1, "result": 3}, {"line": 2, "result": 3}])
        self.assertEqual(plugpool("map", "examples", "sum", input="[1,2,3]\n[]\n"),
                         (0, "6\n0\n", ""))

    def test_struct_lines_through_the_plugins_schema(self):
        triangle = {"name": "t", "points": [{"x": 0, "y": 0}, {"x": 4, "y": 0}, {"x": 0, "y": 3}]}
        lines = "".join(json.dumps(dict(triangle, name=f"t{i}")) + "\n" for i in range(50))
        status, out, err = plugpool("map", "examples", "polygon_stats", "-o", "jsonl", input=lines)
        self.assertEqual((status, err), (0, ""))
        records = [json.loads(l) for l in out.splitlines()]
        self.assertEqual(len(records), 50)
        for i, r in enumerate(records):
            self.assertEqual(r["line"], i + 1)
            self.assertEqual(r["result"]["name"], f"t{i}")
            self.assertEqual((r["result"]["area"], r["result"]["perimeter"]), (6, 12))

    def test_failed_items_are_reported_and_the_run_goes_on(self):
        status, out, err = plugpool("map", "examples", "fail", "-o", "jsonl", input="1\n2\n3\n")
        self.assertEqual(status, 1)
        records = [json.loads(l) for l in out.splitlines()]
        self.assertEqual([r["line"] for r in records], [1, 2, 3])
        self.assertEqual(records[1]["error"], {
            "kind": "TaskError", "type": "std::runtime_error",
            "message": "examples.fail raised std::runtime_error: fail called with 2"})
        self.assertEqual(err.splitlines(), [
            f"plugpool: standard input, line {i}: examples.fail raised std::runtime_error: "
            f"fail called with {i}" for i in (1, 2, 3)])

    def test_a_crash_fails_only_its_item(self):
        faults = os.path.join(FIXTURES, "libfaults.so")
        status, out, err = plugpool("map", faults, "segfault_if_negative", "-c", "1", "-w", "2",
                                    input="1\n-1\n3\n")
        self.assertEqual((status, out), (1, "1\n3\n"))
        self.assertRegex(err, r"^plugpool: standard input, line 2: .*SIGSEGV.*\n"
                              r"(plugpool:   #\d+ .*\n)+$")

    def test_a_crash_inside_a_chunk_fails_only_its_line(self):
        # The lines of its chunk before it keep their results, the ones after it run again.
        faults = os.path.join(FIXTURES, "libfaults.so")
        for chunk in ("1", "2", "5"):
            with self.subTest(chunksize=chunk):
                status, out, err = plugpool("map", faults, "segfault_if_negative", "-c", chunk,
                                            input="1\n2\n-3\n4\n5\n")
                self.assertEqual((status, out), (1, "1\n2\n4\n5\n"))
                self.assertEqual(re.findall(r"^plugpool: standard input, line (\d+): ", err,
                                            re.MULTILINE), ["3"], err)
                self.assertIn("SIGSEGV) while running faults.segfault_if_negative on line 3",
                              err)

    def test_a_crash_shows_the_line_and_the_top_frames_of_the_stack(self):
        faults = os.path.join(FIXTURES, "libfaults.so")
        status, out, err = plugpool("map", faults, "null_deref", "-c", "1", "-o", "jsonl",
                                    input="1\n-2\n3\n")
        self.assertEqual(status, 1)
        lines = err.splitlines()
        self.assertRegex(lines[0], r"^plugpool: standard input, line 2: worker \d+ was killed by "
                                   r"signal 11 \(SIGSEGV\) while running faults.null_deref on "
                                   r"line 2, in \(anonymous namespace\)::read_through\(long "
                                   r"const\*\) at .*faults.cc:\d+$")
        # The plugin's frames, innermost first, and nothing of plugpool's own code below them.
        self.assertRegex(lines[1], r"^plugpool:   #0 \(anonymous namespace\)::read_through\(long "
                                   r"const\*\) at .*faults.cc:\d+$")
        # (Inlined, in an optimised build, it is named by its plain name.)
        self.assertRegex(lines[2], r"^plugpool:   #1 (\(anonymous namespace\)::)?null_deref"
                                   r"(\(long\))? at .*faults.cc:\d+$")
        self.assertEqual(len(lines), 3, err)
        record = [json.loads(l) for l in out.splitlines()][1]
        self.assertEqual(record["error"]["kind"], "WorkerCrashed")
        self.assertEqual(record["error"]["type"], "WorkerCrashed")
        self.assertRegex(record["error"]["message"], r"^worker \d+ was killed by signal 11")
        self.assertEqual(len(record["error"]["stack"]), 2)
        self.assertTrue(record["error"]["stack"][0].startswith("#0 (anonymous namespace)::"))

    def test_retries_send_a_crashed_item_again(self):
        faults = os.path.join(FIXTURES, "libfaults.so")
        with tempfile.TemporaryDirectory() as d:
            # crash_once crashes its worker the first time for a path, then succeeds.
            lines = "".join(os.path.join(d, f"once{i}") + "\n" for i in range(3))
            status, out, err = plugpool("map", faults, "crash_once", "-c", "1", input=lines)
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(len(re.findall(r"line \d: worker \d+ was killed by signal 11", err)),
                             3, err)
            for f in os.listdir(d):
                os.unlink(os.path.join(d, f))
            self.assertEqual(plugpool("map", faults, "crash_once", "-c", "1", "--retries", "1",
                                      input=lines), (0, "1\n1\n1\n", ""))
            for f in os.listdir(d):
                os.unlink(os.path.join(d, f))
            # In one chunk, each crashed line alone is sent again.
            self.assertEqual(plugpool("map", faults, "crash_once", "-c", "3", "--retries", "1",
                                      input=lines), (0, "1\n1\n1\n", ""))
        for bad in ["-1", "many", "1.5"]:
            with self.subTest(retries=bad):
                self.assertUsageError(*plugpool("map", "examples", "square", "--retries", bad,
                                                input="1\n"),
                                      "retries must be a whole number, 0 or more; got " +
                                      re.escape(bad))

    def test_timeout_fails_the_item_and_the_rest_goes_on(self):
        # 2 s: 100 times the healthy items, so that a loaded machine cannot time them out.
        status, out, err = plugpool("map", "examples", "sleep_ms", "--timeout", "2", "-o",
                                    "jsonl", input="10\n60000\n20\n")
        self.assertEqual(status, 1)
        records = [json.loads(l) for l in out.splitlines()]
        self.assertEqual(records[0], {"line": 1, "result": 10})
        self.assertEqual(set(records[1]["error"]), {"kind", "type", "message"})
        self.assertEqual(records[1]["error"]["kind"], "TaskTimeout")
        self.assertEqual(records[1]["error"]["type"], "TaskTimeout")
        self.assertEqual(records[2], {"line": 3, "result": 20})
        self.assertRegex(err, r"^plugpool: standard input, line 2: .*timeout.*\n$")

    def test_a_bad_line_fails_its_own_item_and_the_run_goes_on(self):
        status, out, err = plugpool("map", "examples", "square", input="1\n2\nthree\n\n5\n")
        self.assertEqual((status, out), (1, "1\n4\n25\n"))
        self.assertEqual(err.splitlines(), [
            'plugpool: standard input, line 3: "three" is not an integer (int64)',
            'plugpool: standard input, line 4: "" is not an integer (int64)'])
        # First and last lines too, from a file.
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("x\n3\ny\n")
            f.flush()
            status, out, err = plugpool("map", "examples", "square", f.name)
        self.assertEqual((status, out), (1, "9\n"))
        self.assertEqual(err.splitlines(), [
            f'plugpool: {f.name}, line 1: "x" is not an integer (int64)',
            f'plugpool: {f.name}, line 3: "y" is not an integer (int64)'])

    def test_a_bad_line_is_an_input_error_record_in_its_place(self):
        bad = {"line": 2, "error": {"kind": "InputError", "type": "InputError",
                                    "message": "expected a JSON array of the task's 2 "
                                               "arguments (float64, float64), got an array of 1"}}
        for args in [[], ["-c", "1", "-w", "2"], ["--unordered"]]:
            with self.subTest(args=args):
                status, out, err = plugpool("map", "examples", "add", "-o", "jsonl", *args,
                                            input="[1, 2]\n[1]\n[3, 4]\n")
                self.assertEqual(status, 1)
                records = sorted((json.loads(l) for l in out.splitlines()),
                                 key=lambda r: r["line"])
                self.assertEqual(records, [{"line": 1, "result": 3}, bad,
                                           {"line": 3, "result": 7}])
                self.assertEqual(err, "plugpool: standard input, line 2: " +
                                 bad["error"]["message"] + "\n")

    def test_json_errors_say_what_is_wrong_in_plain_words(self):
        faults = os.path.join(FIXTURES, "libfaults.so")
        add = "the task's 2 arguments (float64, float64) go in a JSON array"
        for plugin, task, line, message in [
            ("examples", "sum", "[1,2", 'not valid JSON: "[1,2" (it ends before the value does)'),
            ("examples", "sum", "[1, 2x]", 'not valid JSON: "[1, 2x]" (unexpected characters)'),
            ("examples", "sum", "[1] [2]", 'not valid JSON: "[1] [2]" (more follows the value)'),
            ("examples", "sum", "[1e]", 'not valid JSON: "[1e]" (1e is not a number)'),
            ("examples", "sum", '["\\q"]',
             'not valid JSON: "["\\q"]" (a string has an invalid \\ escape)'),
            ("examples", "sum", "", "an empty line; expected list<int64> as JSON"),
            ("examples", "sum", "1 2 3", 'not valid JSON: "1 2 3" (more follows the value); '
                                         "a list<int64> is a JSON array: [1, 2, 3]"),
            ("examples", "add", "a b",
             f'not valid JSON: "a b" (unexpected characters); {add}: ["a", "b"]'),
            ("examples", "add", "1 2.5", f'not valid JSON: "1 2.5" (more follows the value); '
                                         f"{add}: [1, 2.5]"),
            ("examples", "add", "1 2 3", f'not valid JSON: "1 2 3" (more follows the value); {add}'),
            ("examples", "add", "5", "expected a JSON array of the task's 2 arguments "
                                     "(float64, float64), got a number"),
            ("examples", "add", "", "an empty line; expected a JSON array of the task's 2 "
                                    "arguments (float64, float64)"),
            (faults, "sleep_logged", "log 5", 'not valid JSON: "log 5" (unexpected characters); '
             "the task's 2 arguments (text, int64) go in a JSON array: [\"log\", 5]"),
        ]:
            with self.subTest(task=task, line=line):
                status, out, err = plugpool("map", plugin, task, input=line + "\n")
                self.assertEqual((status, out), (1, ""))
                self.assertEqual(err, f"plugpool: standard input, line 1: {message}\n")

    def test_a_bad_line_is_never_sent_to_a_worker(self):
        # Its first argument converts, its second does not: nothing of it may run.
        faults = os.path.join(FIXTURES, "libfaults.so")
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "ran")
            lines = "".join(json.dumps(line) + "\n" for line in
                            [[log, 1], [log, "one"], [log, 2], [log, 2.5], [log, 3]])
            status, out, err = plugpool("map", faults, "sleep_logged", "-c", "1", input=lines)
            with open(log) as f:
                ran = f.read().splitlines()
        self.assertEqual((status, out), (1, "1\n2\n3\n"), err)
        self.assertEqual(len(ran), 3)
        self.assertEqual([l.split(":")[0] for l in err.splitlines()],
                         ["plugpool", "plugpool"])
        self.assertRegex(err, r"^plugpool: standard input, line 2: argument 2: .*\n"
                              r"plugpool: standard input, line 4: argument 2: .*\n$")

    def test_long_runs_of_bad_lines_keep_every_line_in_its_place(self):
        # Runs of bad lines longer than map holds back at a time, between good ones.
        lines, expected = [], []
        for block in range(4):
            for i in range(5):
                lines.append(str(i))
                expected.append({"line": len(lines), "result": i * i})
            for i in range(2500 if block % 2 == 0 else 3):
                lines.append("bad")
                expected.append({"line": len(lines), "error": {
                    "kind": "InputError", "type": "InputError",
                    "message": '"bad" is not an integer (int64)'}})
        text = "".join(l + "\n" for l in lines)
        for args in [[], ["-w", "2", "-c", "2"], ["--unordered"]]:
            with self.subTest(args=args):
                status, out, err = plugpool("map", "examples", "square", "-o", "jsonl", *args,
                                            input=text)
                self.assertEqual(status, 1)
                records = [json.loads(l) for l in out.splitlines()]
                if "--unordered" in args:
                    records.sort(key=lambda r: r["line"])
                self.assertEqual(records, expected)
                self.assertEqual(len(err.splitlines()), 2 * 2500 + 2 * 3)

    def test_an_unreadable_input_is_a_usage_error(self):
        self.assertUsageError(*plugpool("map", "examples", "square", "/nonexistent/input"),
                              "cannot open /nonexistent/input: No such file")
        with tempfile.TemporaryDirectory() as d:
            self.assertUsageError(*plugpool("map", "examples", "square", d), "cannot read")

    def test_no_progress_line_when_stderr_is_not_a_terminal(self):
        self.assertEqual(plugpool("map", "examples", "square", input="1\n2\n"), (0, "1\n4\n", ""))


RECORDS = os.path.join(FIXTURES, "librecords.so")
# A record with every kind of field (tests/fixtures/records.capnp).
FULL_RECORD = {"flag": True, "small": -3, "big": "-9007199254740993",
               "count": "18446744073709551615", "ratio": 0.5, "label": "hi", "blob": [1, 2, 255],
               "color": "blue", "tags": ["a", "b"], "grid": [[1, 2], [3]],
               "colors": ["red", "green"], "children": [{"label": "kid", "shape": {"square": 2}}],
               "blobs": [[1], []], "shape": {"circle": 2.5}, "extent": {"width": 3, "height": 4}}


class StructInput(CliTest):
    """JSON objects into structs of a plugin's schema: strict, with errors that name the field."""

    def map_one(self, plugin, task, line):
        """Maps one line; returns (status, the one error line without its prefix)."""
        status, out, err = plugpool("map", plugin, task, input=line + "\n")
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("plugpool: standard input, line 1: "), err)
        return status, err[len("plugpool: standard input, line 1: "):].rstrip("\n")

    def test_every_kind_of_field_converts_and_what_comes_out_goes_back_in(self):
        status, out, err = plugpool("run", RECORDS, "echo", json.dumps(FULL_RECORD))
        self.assertEqual(status, 0, err)
        record = json.loads(out)["record"]
        for name, value in FULL_RECORD.items():
            if name != "children":
                self.assertEqual(record[name], value, name)
        self.assertEqual(record["children"][0]["label"], "kid")
        self.assertEqual(record["children"][0]["shape"], {"square": 2})
        status, again, err = plugpool("map", RECORDS, "echo", input=json.dumps(record) + "\n")
        self.assertEqual((status, again), (0, out), err)

    def test_a_misspelt_field_is_refused_naming_the_fields_there_are(self):
        for plugin, task, line, message in [
            ("examples", "polygon_stats", '{"nmae": "x", "points": []}',
             'struct Polygon has no field "nmae"; its fields are name, points'),
            ("examples", "polygon_stats", '{"nmae": "x", "pionts": []}',
             'struct Polygon has no fields "nmae" and "pionts"; its fields are name, points'),
            ("examples", "polygon_stats", '{"name": "t", "points": [{"x": 0, "y": 0, "z": 1}]}',
             'field points[0]: struct Point has no field "z"; its fields are x, y'),
            (RECORDS, "echo", '{"extent": {"widht": 1}}',
             'field extent: group extent has no field "widht"; its fields are width, height'),
        ]:
            with self.subTest(line=line):
                self.assertEqual(self.map_one(plugin, task, line), (1, message))

    def test_a_field_that_does_not_fit_names_the_field_and_the_form_it_takes(self):
        for plugin, task, line, message in [
            ("examples", "polygon_stats", '{"name": 5}',
             "field name: expected text as a string, got a number"),
            ("examples", "polygon_stats", '{"name": "t", "points": [{"x": "a", "y": 0}]}',
             'field points[0].x: "a" is not a number (float64)'),
            ("examples", "polygon_stats", '{"points": {"x": 1}}',
             "field points: expected list<struct Point> as an array, got an object"),
            ("examples", "polygon_stats", '"square"',
             "expected struct Polygon as an object, got a string"),
            (RECORDS, "echo", '{"small": 300}', 'field small: "300" is not in range (int8)'),
            (RECORDS, "echo", '{"flag": 1}', "field flag: expected bool, got a number"),
            (RECORDS, "echo", '{"color": "purple"}',
             'field color: "purple" is not a Color: red, green or blue'),
            (RECORDS, "echo", '{"colors": ["red", 7]}',
             "field colors[1]: 7 is not a Color: red, green or blue"),
            (RECORDS, "echo", '{"grid": [[1, "x"]]}', 'field grid[0][1]: "x" is not an integer (int32)'),
            (RECORDS, "echo", '{"blob": [1, 256]}', 'field blob[1]: "256" is not in range (uint8)'),
            (RECORDS, "echo", '{"children": [{"tags": [1]}]}',
             "field children[0].tags[0]: expected text as a string, got a number"),
            (RECORDS, "echo", '{"shape": {"circle": 1, "square": 2}}',
             "field shape: circle and square are members of one union: give one"),
        ]:
            with self.subTest(line=line):
                self.assertEqual(self.map_one(plugin, task, line), (1, message))


def feed_lines(proc, line, most):
    """Writes `line` up to `most` times to proc's stdin, until proc ends or stops reading (or
    HANG_GUARD passes); closes it. Returns how many lines went into the pipe."""
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    block = memoryview(line * 10000)
    written, total = 0, len(line) * most
    deadline = time.monotonic() + HANG_GUARD
    while written < total and time.monotonic() < deadline:
        _, ready, _ = select.select([], [fd], [], 0.1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        at = written % len(block)
        try:
            written += os.write(fd, block[at:min(len(block), at + total - written)])
        except BlockingIOError:
            continue
        except BrokenPipeError:
            break
    proc.stdin.close()
    return written // len(line)


def ignoring_sigpipe():
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


class Remote(CliTest):
    """--launch and --slurm: the same map, with workers that connect back over TCP."""

    def test_launched_workers_give_what_local_ones_give(self):
        lines = "".join(f"{i}\n" for i in range(1, 20001))
        local = plugpool("map", "examples", "square", "--workers", "3", input=lines)
        self.assertEqual(local[0], 0, local[2])
        launched = plugpool("map", "examples", "square", "--workers", "3", "--launch", "env",
                            "--address", "127.0.0.1", input=lines)
        self.assertEqual(launched, local)
        # Two prefixes, split as a shell would; the default address (the host's name).
        spread = plugpool("map", "examples", "node", "--workers", "2",
                          "--launch", "env 'SLURMD_NODENAME=n 1'", "--launch", "env SLURMD_NODENAME=n2",
                          input="[]\n" * 200)
        self.assertEqual(spread[0], 0, spread[2])
        self.assertEqual(set(spread[1].splitlines()), {"n 1", "n2"})

    def test_remote_options_that_cannot_work_say_so(self):
        self.assertUsageError(*plugpool("map", "examples", "square", "--address", "127.0.0.1",
                                        input="1\n"), "give --slurm or --launch")
        self.assertUsageError(*plugpool("map", "examples", "square", "--launch", "env $(id)",
                                        input="1\n"), "command substitution is not allowed")
        self.assertUsageError(*plugpool("map", "examples", "square", "--launch", "",
                                        input="1\n"), "--launch needs a command")
        status, out, err = plugpool("map", "examples", "square", "--slurm", input="1\n")
        self.assertEqual((status, out), (1, ""), err)
        self.assertRegex(err, r"^plugpool: .*run the host inside salloc or sbatch")


class WriteErrors(CliTest):
    """Output that cannot be written is an error: one line, status 1, and no more input read."""

    TEN_MILLION = 10_000_000

    def test_tasks_and_run_to_a_full_disk(self):
        for args in [["tasks", "examples"], ["tasks", "examples", "--json"],
                     ["run", "examples", "square", "7"]]:
            with self.subTest(args=args), open("/dev/full", "w") as full:
                run = subprocess.run([PLUGPOOL, *args], stdout=full, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, timeout=HANG_GUARD)
                self.assertEqual((run.returncode, run.stderr),
                                 (1, "plugpool: write error: No space left on device\n"))

    def test_map_to_a_full_disk_stops_reading_its_input(self):
        with open("/dev/full", "w") as full:
            proc = subprocess.Popen([PLUGPOOL, "map", "examples", "square"],
                                    stdin=subprocess.PIPE, stdout=full, stderr=subprocess.PIPE)
            fed = feed_lines(proc, b"7\n", self.TEN_MILLION)
            err = proc.stderr.read().decode()
            proc.stderr.close()
            status = proc.wait(timeout=HANG_GUARD)
        self.assertEqual((status, err), (1, "plugpool: write error: No space left on device\n"))
        # The input it took: at most a few windows of chunks and the pipe's buffer.
        self.assertLess(fed, self.TEN_MILLION // 10)

    def test_map_into_a_pipe_whose_reader_left_with_sigpipe_ignored(self):
        proc = subprocess.Popen([PLUGPOOL, "map", "examples", "square"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=ignoring_sigpipe)
        first = []
        def read_first_line_and_leave():  # as `| head -1` does
            first.append(proc.stdout.readline())
            proc.stdout.close()
        reader = threading.Thread(target=read_first_line_and_leave)
        reader.start()
        fed = feed_lines(proc, b"7\n", self.TEN_MILLION)
        reader.join(HANG_GUARD)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        status = proc.wait(timeout=HANG_GUARD)
        self.assertEqual(first, [b"49\n"])
        self.assertEqual((status, err), (1, "plugpool: write error: Broken pipe\n"))
        self.assertLess(fed, self.TEN_MILLION // 10)

    def test_every_command_with_standard_output_closed(self):
        for args in [["tasks", "examples"], ["run", "examples", "square", "7"],
                     ["map", "examples", "square"]]:
            with self.subTest(args=args):
                run = subprocess.run(["sh", "-c", 'exec "$0" "$@" >&-', PLUGPOOL, *args],
                                     input="1\n2\n", stderr=subprocess.PIPE, text=True,
                                     timeout=HANG_GUARD)
                self.assertEqual((run.returncode, run.stderr),
                                 (1, "plugpool: write error: standard output is closed\n"))


class ClosedStandardInput(CliTest):
    def test_map_from_a_closed_standard_input_says_so(self):
        run = subprocess.run(["sh", "-c", 'exec "$0" "$@" <&-', PLUGPOOL, "map", "examples",
                              "square"], capture_output=True, text=True, timeout=HANG_GUARD)
        self.assertEqual((run.returncode, run.stdout, run.stderr),
                         (2, "", "plugpool: standard input is closed\n"))

    def test_map_from_a_file_does_not_need_standard_input(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("3\n4\n")
            f.flush()
            run = subprocess.run(["sh", "-c", 'exec "$0" "$@" <&-', PLUGPOOL, "map", "examples",
                                  "square", f.name], capture_output=True, text=True,
                                 timeout=HANG_GUARD)
        self.assertEqual((run.returncode, run.stdout, run.stderr), (0, "9\n16\n", ""))


def read_pty(master, proc):
    """Everything written to the pseudo-terminal `master` until its writers close it (or
    `proc` ends), within HANG_GUARD; closes `master`."""
    screen = b""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed
                break
            if not data:
                break
            screen += data
        elif proc.poll() is not None:
            break
    os.close(master)
    return screen


class Progress(CliTest):
    def run_on_pty(self, *args, stdin=subprocess.DEVNULL):
        """Runs plugpool with stderr on a pseudo-terminal; returns (status, stdout, pty text)."""
        master, slave = pty.openpty()
        proc = subprocess.Popen([PLUGPOOL, *args], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=slave)
        os.close(slave)
        screen = read_pty(master, proc)
        out = proc.stdout.read()
        proc.stdout.close()
        status = proc.wait(timeout=HANG_GUARD)
        return status, out.decode(), screen.decode()

    def test_a_live_line_with_the_total_of_a_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("".join("30\n" for _ in range(40)))
            f.flush()
            status, out, screen = self.run_on_pty("map", "examples", "sleep_ms", f.name, "-w", "2")
        self.assertEqual(status, 0, screen)
        self.assertEqual(out, "30\n" * 40)
        frames = [f for f in screen.replace("\x1b[K", "").replace("\n", "\r").split("\r") if f]
        self.assertGreaterEqual(len(frames), 2, screen)
        for frame in frames:
            self.assertRegex(frame, r"^\d+(/40)? items( \(\d+%\))?  \d+/s  elapsed \d+:\d\d"
                                    r"(  ETA \d+:\d\d)?$")
        self.assertRegex(frames[-1], r"^40/40 items \(100%\)  \d+/s  elapsed 0:\d\d  ETA 0:00$")

    def test_results_on_the_same_terminal_stay_clear_of_the_line(self):
        # stdout and stderr on one terminal: every result gets a line of its own, and the
        # progress line stays below them.
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("".join("30\n" for _ in range(40)))
            f.flush()
            master, slave = pty.openpty()
            proc = subprocess.Popen([PLUGPOOL, "map", "examples", "sleep_ms", f.name, "-w", "2"],
                                    stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
            os.close(slave)
            screen = read_pty(master, proc)
            self.assertEqual(proc.wait(timeout=HANG_GUARD), 0)
        # What a terminal shows: \r goes back to the start of the line, ESC [K erases to its end.
        lines, line, col = [], [], 0
        text = screen.decode()
        i = 0
        while i < len(text):
            if text.startswith("\x1b[K", i):
                del line[col:]
                i += 3
                continue
            c = text[i]
            if c == "\r":
                col = 0
            elif c == "\n":
                lines.append("".join(line))
                line, col = [], 0
            else:
                line[col:col + 1] = [c]
                col += 1
            i += 1
        lines.append("".join(line))
        lines = [l for l in lines if l]
        self.assertEqual(lines[:-1], ["30"] * 40, text)
        self.assertRegex(lines[-1], r"^40/40 items \(100%\)  \d+/s  elapsed 0:\d\d  ETA 0:00$")

    def test_failures_print_above_the_line_and_the_count_shows(self):
        # Standard input from a pipe: no total is known.
        master, slave = pty.openpty()
        proc = subprocess.Popen([PLUGPOOL, "map", "examples", "fail"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        proc.stdin.write(b"1\ntwo\n3\n")
        proc.stdin.close()
        screen = read_pty(master, proc)
        proc.stdout.close()
        self.assertEqual(proc.wait(timeout=HANG_GUARD), 1)
        text = screen.decode()
        self.assertIn("plugpool: standard input, line 1: examples.fail raised", text)
        # A bad line counts as a failed item.
        self.assertIn('plugpool: standard input, line 2: "two" is not an integer (int64)', text)
        self.assertRegex(text, r"\r3 items  3 failed  \d+/s  elapsed 0:\d\d\x1b\[K\r?\n$")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], *sys.argv[4:]], verbosity=2)
