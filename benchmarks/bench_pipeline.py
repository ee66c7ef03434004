"""Budget benchmark: one clean `dvc repro` of a profile, with the wall time of every stage and the peak memory.

    python benchmarks/bench_pipeline.py                 # default profile, fresh workspace build/bench_pipeline
    python benchmarks/bench_pipeline.py --profile tiny

Budget (README "Budget"; default profile on 2 cores): whole pipeline <= 15 minutes, peak memory <= 3 GiB. Peak memory
is the largest resident set of the whole process tree (dvc + papermill + the notebook kernel + training workers),
sampled every 50 ms with psutil. Prints a table and writes it as JSON next to the workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmc_utils.pipeline import profiles

BUDGET_SECONDS, BUDGET_MIB = 15 * 60, 3 * 1024


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def repro(workspace: Path) -> tuple[list[dict], float, float]:
    """One `dvc repro` of the whole pipeline, as a user runs it: (per-stage rows, total wall s, peak MiB). A stage's
    time runs from DVC's "Running stage" line to the next one (or to the end), so DVC's own start-up is counted once,
    and every stage's share of it (checking its dependencies, writing the lock) is in its row."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=workspace,
        env=profiles.dvc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    ps, peak, marks, log = psutil.Process(proc.pid), 0, [], []
    done = threading.Event()

    def sample():  # resident set of the whole process tree, every 50 ms
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(ps))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        log.append(line)
        found = re.match(r"Running stage '([^']+)'", line.strip())
        if found:
            marks.append((found.group(1), time.perf_counter()))
            print(f"  {time.perf_counter() - start:7.1f} s  {found.group(1)}", flush=True)
    proc.wait()
    total = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit("dvc repro failed:\n" + "".join(log[-60:]))
    ends = [t for _, t in marks[1:]] + [start + total]
    rows = [dict(stage=name, wall_s=round(end - t, 1)) for (name, t), end in zip(marks, ends)]
    return rows, total, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--dest", default="build/bench_pipeline")
    args = parser.parse_args()
    dest = Path(args.dest)
    shutil.rmtree(dest, ignore_errors=True)  # a clean repro: nothing cached
    profiles.make_workspace(profiles.profile_path(args.profile), dest)
    rows, total, peak = repro(dest)
    print(f"{'stage':<28}{'wall s':>9}")
    for row in rows:
        print(f"{row['stage']:<28}{row['wall_s']:>9.1f}")
    by_kind: dict[str, float] = {}
    for row in rows:
        by_kind[row["stage"].split("@")[0]] = by_kind.get(row["stage"].split("@")[0], 0.0) + row["wall_s"]
    print("per stage kind (all repetitions):", {k: round(v, 1) for k, v in by_kind.items()})
    verdict = dict(
        total_s=round(total, 1),
        budget_s=BUDGET_SECONDS,
        peak_mib=round(peak),
        budget_mib=BUDGET_MIB,
        within_time=total <= BUDGET_SECONDS,
        within_memory=peak <= BUDGET_MIB,
        cpu_count=os.cpu_count(),
        cpu=cpu_model(),
        date=time.strftime("%Y-%m-%d"),
        threads=yaml.safe_load((dest / "params.yaml").read_text()).get("runtime", {}).get("num_threads", 2),
    )
    print(f"{'TOTAL':<28}{total:>9.1f}")
    print(f"time   {total:7.1f} s  / budget {BUDGET_SECONDS} s  -> {'OK' if verdict['within_time'] else 'OVER'}")
    print(f"memory {peak:7.0f} MiB / budget {BUDGET_MIB} MiB -> {'OK' if verdict['within_memory'] else 'OVER'}")
    (dest.parent / f"bench_pipeline_{args.profile}.json").write_text(json.dumps(dict(stages=rows, **verdict), indent=2))


if __name__ == "__main__":
    main()
