"""Budget benchmark: a clean `dvc repro` of a profile, stage by stage, with wall time and peak memory.

    python benchmarks/bench_pipeline.py                 # default profile, fresh workspace build/bench_pipeline
    python benchmarks/bench_pipeline.py --profile tiny

Budget (SPEC section 4, default profile on 2 cores): whole pipeline <= 15 minutes, peak memory <= 3 GiB. Peak memory
is the largest resident set of the whole process tree of a stage (dvc + papermill + the notebook kernel), sampled
every 50 ms with psutil. Prints a table and writes it as JSON next to the workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmc_utils import profiles  # noqa: E402

BUDGET_SECONDS, BUDGET_MIB = 15 * 60, 3 * 1024


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_stage(workspace: Path, stage: str) -> tuple[float, float]:
    """(wall seconds, peak MiB) of `dvc repro -s stage`."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"stage {stage} failed:\n{proc.stdout.read()}")
    return wall, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--dest", default="build/bench_pipeline")
    args = parser.parse_args()
    dest = Path(args.dest)
    shutil.rmtree(dest, ignore_errors=True)  # a clean repro: nothing cached
    profiles.make_workspace(profiles.profile_path(args.profile), dest)
    # every stage as DVC runs it (a repeated stage once per repetition, name@index), in dependency order
    stages = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=dest,
                            capture_output=True, text=True, check=True).stdout.split()
    rows = []
    print(f"{'stage':<26}{'wall s':>9}{'peak MiB':>10}", flush=True)
    for stage in stages:
        wall, peak = run_stage(dest, stage)
        rows.append(dict(stage=stage, wall_s=round(wall, 1), peak_mib=round(peak)))
        print(f"{stage:<26}{wall:>9.1f}{peak:>10.0f}", flush=True)
    total, peak = sum(r["wall_s"] for r in rows), max(r["peak_mib"] for r in rows)
    verdict = dict(total_s=round(total, 1), budget_s=BUDGET_SECONDS, peak_mib=peak, budget_mib=BUDGET_MIB,
                   within_time=total <= BUDGET_SECONDS, within_memory=peak <= BUDGET_MIB,
                   cpu_count=os.cpu_count(), threads=yaml.safe_load((dest / "params.yaml").read_text())
                   .get("runtime", {}).get("num_threads", 2))
    print(f"{'TOTAL':<26}{total:>9.1f}{peak:>10.0f}")
    print(f"time   {total:7.1f} s  / budget {BUDGET_SECONDS} s  -> {'OK' if verdict['within_time'] else 'OVER'}")
    print(f"memory {peak:7.0f} MiB / budget {BUDGET_MIB} MiB -> {'OK' if verdict['within_memory'] else 'OVER'}")
    (dest.parent / f"bench_pipeline_{args.profile}.json").write_text(json.dumps(dict(stages=rows, **verdict), indent=2))


if __name__ == "__main__":
    main()
