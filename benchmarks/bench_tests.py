"""Test-time benchmark: why the README's test command runs pytest-xdist workers with OMP_WAIT_POLICY=PASSIVE, and how
long the whole suite takes.

    python benchmarks/bench_tests.py            # a torch-heavy test selection: alone, and two copies at once
    python benchmarks/bench_tests.py --suite    # also the whole suite, in one process (-n 0) and as configured

Target (issue 22): the test command <= 15 minutes on 2 cores. Two workers share the cores, and each runs torch with its
own threads (a stage sets runtime.num_threads). With OpenMP's default wait policy a thread that waits at a barrier
spins, taking a core from the other worker's threads that have work; with PASSIVE it sleeps. The first part measures
that on `--select` (default: tests whose time is torch compute): each row is the wall time of one copy, and of two
copies started together. Prints wall and CPU seconds (children included) and the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_pipeline import cpu_model

ROOT = Path(__file__).resolve().parent.parent


def run_together(argv: list[str], copies: int, env: dict) -> tuple[float, float]:
    """Start `copies` processes of argv at once; (wall s until the last ends, CPU s of all of them)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for _ in range(copies)]
    if any(p.wait() for p in procs):
        raise SystemExit(f"{' '.join(argv)} failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--select", default="tests/test_align.py::test_aligned_b_computes_the_same_function")
    parser.add_argument("--suite", action="store_true", help="also time the whole suite (about half an hour)")
    args = parser.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores")
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    print(f"{args.select}, one process (-n 0) per copy:")
    print(f"{'wait policy':<12} {'copies':>6} {'wall s':>8} {'CPU s':>8}")
    for policy in ("ACTIVE", "PASSIVE"):
        env = dict(os.environ, OMP_WAIT_POLICY=policy)
        for copies in (1, 2):
            wall, cpu = run_together([*pytest, "-n", "0", args.select], copies, env)
            print(f"{policy:<12} {copies:>6} {wall:>8.1f} {cpu:>8.1f}", flush=True)
    if args.suite:
        print("whole suite (the README's test command after setup):")
        for label, extra in (("-n 0 (one process)", ["-n", "0"]), ("as configured (pyproject.toml)", [])):
            wall, cpu = run_together([*pytest, *extra], 1, dict(os.environ))
            print(f"{label:<32} wall {wall:7.1f} s  CPU {cpu:7.1f} s", flush=True)


if __name__ == "__main__":
    main()
