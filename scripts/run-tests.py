#!/usr/bin/env python3
"""Runs the workspace's test binaries in lanes and reports each one's time.

`cargo test` runs one binary after the other. Most of our end-to-end
binaries spend their time waiting on guests booting under emulation, which
keeps one core busy, so the slowest ones run in a second lane beside the
rest. They share no resource with the others: each makes its own network
namespace or bridge, takes free ports and keeps its state in a temporary
directory.

The binaries are built once (`cargo test --no-run` for the whole
workspace, so features are unified as in `cargo test --workspace`) and run
directly, each from its package's directory as cargo would, sorted by
package. Every binary runs even when another failed; the exit status is 1
if any failed. A binary still running after 30 minutes is killed with
everything it started.

Usage: run-tests.py [--side PKG:TARGET ...] [-- ARGS FOR EACH BINARY]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

# A binary still running after this long is stuck: it is killed and fails,
# so CI reports it instead of running into its own limit.
BINARY_TIMEOUT_SECS = 30 * 60

print_lock = threading.Lock()


def say(text):
    with print_lock:
        sys.stdout.write(text)
        sys.stdout.flush()


def test_binaries():
    """(package, target, kind, executable, package dir) for every test
    binary of the workspace, sorted by package, kind and target so a run's
    order does not depend on which build finished first."""
    # json-render-diagnostics: compiler errors still reach the terminal as
    # text; only cargo's own messages come as JSON.
    proc = subprocess.run(
        ["cargo", "test", "--locked", "--workspace", "--lib", "--bins", "--tests",
         "--no-run", "--message-format=json-render-diagnostics"],
        stdout=subprocess.PIPE, text=True,
    )
    if proc.returncode != 0:
        sys.exit("error: the test binaries did not compile (see the errors above)")
    found = []
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("profile", {}).get("test"):
            continue
        exe = msg.get("executable")
        if not exe:
            continue
        target = msg["target"]
        # Labelled by the package's directory (stack-manager, provisioner, …).
        pkg_dir = os.path.dirname(msg["manifest_path"])
        found.append((os.path.basename(pkg_dir), target["name"], target["kind"][0], exe, pkg_dir))
    if not found:
        sys.exit("error: cargo built no test binary")
    return sorted(found, key=lambda b: (b[0], b[2], b[1]))


class Result:
    def __init__(self, label, ok, secs, passed, failed):
        self.label, self.ok, self.secs, self.passed, self.failed = label, ok, secs, passed, failed


def run_binary(entry, args, lane):
    pkg, target, kind, exe, pkg_dir = entry
    label = f"{pkg} {kind}:{target}"
    say(f"     Running {label} [{lane} lane]\n")
    started = time.monotonic()
    # Output goes to a file, not a pipe: a process the test left behind
    # that still holds the pipe would keep a reader waiting. The binary
    # gets its own session so a timeout kills everything it started.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                [exe] + args, cwd=pkg_dir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                code = proc.wait(timeout=BINARY_TIMEOUT_SECS)
                note = ""
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = -1
                note = f"\nerror: {label} did not finish within {BINARY_TIMEOUT_SECS} s; killed\n"
        except OSError as e:
            code, note = -1, f"\nerror: cannot run {label}: {e}\n"
        out.seek(0)
        output = out.read().decode(errors="replace") + note
    secs = time.monotonic() - started
    passed = failed = 0
    for line in output.splitlines():
        # A child's output may share the line; the summary is at its end.
        if "test result:" in line:
            words = line[line.index("test result:"):].replace(";", "").split()
            for count, what in zip(words, words[1:]):
                if what == "passed" and count.isdigit():
                    passed += int(count)
                if what == "failed" and count.isdigit():
                    failed += int(count)
    if code != 0 and failed == 0:
        failed = 1  # crashed, timed out or failed outside a test
    say(f"---- {label} ({secs:.1f} s) ----\n{output}")
    return Result(label, code == 0, secs, passed, failed)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", action="append", default=[],
                        help="PKG:TARGET to run in the side lane")
    parser.add_argument("args", nargs="*", help="arguments for every test binary")
    opts = parser.parse_args()

    binaries = test_binaries()
    side_wanted = set(opts.side)
    side = [b for b in binaries if f"{b[0]}:{b[1]}" in side_wanted]
    main_lane = [b for b in binaries if f"{b[0]}:{b[1]}" not in side_wanted]
    missing = side_wanted - {f"{b[0]}:{b[1]}" for b in side}
    if missing:
        sys.exit(f"error: no test binary {', '.join(sorted(missing))} in the workspace")

    results = []
    results_lock = threading.Lock()

    def lane(entries, name):
        for entry in entries:
            try:
                r = run_binary(entry, opts.args, name)
            except Exception as e:  # a runner bug must fail the run, not skip binaries
                r = Result(f"{entry[0]} {entry[2]}:{entry[1]}", False, 0.0, 0, 1)
                say(f"error: running {r.label}: {e!r}\n")
            with results_lock:
                results.append(r)

    started = time.monotonic()
    side_thread = threading.Thread(target=lane, args=(side, "side"), daemon=True)
    side_thread.start()
    lane(main_lane, "main")
    side_thread.join()
    wall = time.monotonic() - started

    say("\n==> time per test binary (wall clock, slowest first)\n")
    for r in sorted(results, key=lambda r: -r.secs):
        say(f"  {r.secs:8.1f} s  {'ok' if r.ok else 'FAILED':6} {r.label}\n")
    failed_binaries = [r.label for r in results if not r.ok]
    if len(results) != len(binaries):
        failed_binaries.append(f"{len(binaries) - len(results)} binaries that never ran")
    if failed_binaries:
        say("\nfailed binaries:\n" + "".join(f"  {b}\n" for b in failed_binaries))
    say(f"\n{len(results)} test binaries in {wall:.0f} s\n")
    say(f"tests: {sum(r.passed for r in results)} passed, {sum(r.failed for r in results)} failed\n")
    return 1 if failed_binaries else 0


if __name__ == "__main__":
    sys.exit(main())
