"""Scale out: one pipeline workspace per repetition, run in parallel by engines that exist (DVC's experiment queue on
one machine, submitit on Slurm or as local processes), then one gather workspace that draws every figure and the claims
table over all repetitions. Nothing is scheduled here; docs/scale_out.md has the cost model and the walk-through.

    # Slurm: a job array, one job per repetition, each `dvc repro` in runs/launch/paper/repetition_<r>/; then the gather
    python -m llmc_utils.pipeline.launch paper --repetitions 0-4 --executor slurm --partition gpu --gpus-per-job 1
    # later: skips finished repetitions, then gathers
    python -m llmc_utils.pipeline.launch paper --repetitions 0-4 --executor slurm --gather
    # one machine with 2 GPUs: DVC's experiment queue, one experiment per repetition on cuda:0 and cuda:1 in turn
    python -m llmc_utils.pipeline.launch paper --repetitions 0-7 --executor queue --devices cuda:0,cuda:1 --gather
    # local processes, all repetitions at once (a CPU box, the tests); a DVC remote for data and checkpoints:
    python -m llmc_utils.pipeline.launch tiny --repetitions 0-1 --executor local --remote /shared/llmc-dvc --gather
    # configure one workspace only
    python -m llmc_utils.pipeline.launch remote /shared/llmc-dvc --workspace runs/paper

Why one workspace per repetition: DVC's repository lock forbids two `dvc repro` in one workspace, so a workspace
(profiles.make_workspace, its `repetitions` lists all set to [r]) is the unit of parallel work. The lowest repetition's
workspace also runs the stages that run once (prepare_data, deep_linear, bn_reset); the others run only the
per-repetition stages (every `foreach` stage, and `alignment`, which runs once over the pairs it is given). Nobody runs
aggregate and report but the gather. Resubmitting is safe: a workspace whose `dvc status` is clean is skipped, one whose
DVC lock is held (a job still running) is left alone, and a duplicate job would stop at that lock.

The gather (runs/launch/<profile>/gather/, repetitions = the gathered repetitions) copies each repetition's uncached
outputs (results/<stage>/repetition_<r>/, metrics/<stage>/repetition_<r>.json, executed notebooks) and the run-once
stages' outputs of the lowest repetition that has them, merges the alignment stage's per-pair tables and metrics and
redraws its two figures with the notebook's own functions, then runs `dvc repro -s check_params aggregate report`: `-s`
(single item) makes DVC run exactly those stages from the copied inputs without checking, or rerunning, the stages that
wrote them in other workspaces (a plain `dvc repro report` would retrain every pair there, which has no checkpoints).

Devices: a Slurm job sees the GPUs Slurm gave it (runtime.device auto picks them). The local executor gives every job
the same first --gpus-per-job GPUs (none by default): for several GPUs in one machine use --executor queue, whose
experiments set runtime.device to the --devices in turn. `--set runtime.device=cuda` etc. override any parameter.

Shared storage (--remote PATH, a local or shared-filesystem folder; local and slurm executors): every workspace gets it
as default DVC remote; each job runs `dvc pull --run-cache` before its `dvc repro` (when it has a dvc.lock, its own or
the one its repetition kept in the remote) and `dvc push --run-cache` after, and keeps its dvc.lock in
PATH/launch_locks/<profile>/. DVC writes no run-cache for a stage with uncached outputs (every stage here has executed
notebooks and figures with `cache: false`, and every stage that trains persists its checkpoints), so the lock is what
lets a fresh workspace of the same repetition (another node, a purged scratch disk) pull its prepared data and
checkpoints: the models are then not retrained (the trainer resumes from the pulled checkpoints), only the cheap
uncached outputs are recomputed.

Refused before anything is made (exit 2): more than MAX_REPETITIONS repetitions without --many-repetitions (one
workspace each: a typo such as 0-100000 would make 100,001), and a --dest, or a workspace folder in it, that holds
pipeline files llmc did not write (profiles.check_dest) without --force.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from llmc_utils.core.claims import VERDICTS
from llmc_utils.core.config import ParamsError
from llmc_utils.core.io import copy_output
from llmc_utils.pipeline import registry
from llmc_utils.pipeline.params import load_profile, merge, validate_params
from llmc_utils.pipeline.profiles import REPO, check_dest, claim, dvc, dvc_env, make_workspace, profile_path

# the stages that read every repetition (aggregate, report): only the gather workspace runs them
GATHER_STAGES = tuple(s.name for s in registry.all_specs() if s not in registry.stage_specs())
MAX_REPETITIONS = (
    1000  # more repetitions (one workspace each) only with --many-repetitions: a typo like 0-100000 is not a launch
)
LOCKS = "launch_locks"  # folder of the remote that keeps each repetition workspace's dvc.lock
PENDING = ("Queued", "Running")  # `dvc queue status` states of an experiment not finished yet


def parse_repetitions(spec: str, limit: int | None = MAX_REPETITIONS) -> list[int]:
    """'0-4', '0,2,7' or '0-2,7' -> sorted distinct repetitions; anything else, or more than `limit` repetitions (None:
    no limit), raises ValueError saying what is allowed. The count comes from the ranges, before any list is made."""
    ranges = []
    for part in str(spec).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(
                f"bad repetitions {spec!r}: give non-negative integers and ranges, like 0-4 or 0,2,7 or 0-2,7"
            )
        ranges.append((int(match[1]), int(match[2] or match[1])))
    count, end = 0, -1  # distinct repetitions: the ranges in order, each counted from past the end of those before it
    for low, high in sorted(ranges):
        count += max(0, high - max(low, end + 1) + 1)
        end = max(end, high)
    if limit is not None and count > limit:
        raise ValueError(
            f"--repetitions {spec} asks for {count:,} repetitions, one workspace and pipeline run each; more than "
            f"{limit:,} need --many-repetitions"
        )
    return sorted({repetition for low, high in ranges for repetition in range(low, high + 1)})


def parse_set(items: list[str]) -> dict:
    """['runtime.device=cuda', ...] -> nested overrides (values read as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --set {item!r}: give KEY=VALUE, like runtime.device=cuda")
        value = yaml.safe_load(text)
        for part in reversed(key.split(".")):
            value = {part: value}
        out = merge(out, value)
    return out


def repetition_names(profile_file: Path, overrides: dict) -> list[str]:
    """The repeated-stage lists of the profile (every key of its validated `repetitions` section)."""
    params = validate_params(merge(load_profile(profile_file), overrides), source=str(profile_file))
    return list(params["repetitions"].model_dump())


def with_repetitions(profile_file: Path, overrides: dict, repetitions: list[int]) -> dict:
    """`overrides` with every repetitions list set to `repetitions` (the validator wants robustness etc. within the
    pairs)."""
    return merge(
        overrides, {"repetitions": {name: list(repetitions) for name in repetition_names(profile_file, overrides)}}
    )


def stages(workspace: Path) -> dict:
    return yaml.safe_load((Path(workspace) / "dvc.yaml").read_text())["stages"]


def per_repetition(stage: dict) -> bool:
    """A stage whose work depends on which repetitions the workspace has: a foreach stage, or one reading
    `repetitions`."""
    body = stage.get("do", stage)
    return "foreach" in stage or any(str(p).startswith("repetitions") for p in body.get("params", []))


def repetition_targets(workspace: Path, first: bool) -> list[str]:
    """The `dvc repro` targets of a repetition workspace: per-repetition stages, plus the run-once stages in the first
    one."""
    return [
        name
        for name, stage in stages(workspace).items()
        if name not in GATHER_STAGES and (first or per_repetition(stage))
    ]


def state(workspace: Path, targets: list[str]) -> str:
    """'done' (dvc status of the targets and their upstream clean), 'busy' (a DVC process holds the workspace: a job
    still running) or 'todo'. DVC's own up-to-date check, so a changed profile or code reruns what it changes."""
    if not (workspace / "dvc.lock").is_file():
        return "todo"
    out = dvc(workspace, "status", "--with-deps", *targets, "--json", check=False)
    if out.returncode:
        if "is busy" in out.stderr or "Unable to acquire lock" in out.stderr:
            return "busy"
        raise RuntimeError(f"dvc status failed in {workspace}:\n{out.stderr}")
    return "done" if not json.loads(out.stdout or "{}") else "todo"


def configure_remote(workspace: Path, path: str | Path) -> Path:
    """Make the folder `path` the default DVC remote of `workspace` (created if absent; absolute, so every job on a
    shared filesystem resolves it the same way)."""
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    dvc(workspace, "remote", "add", "--default", "--force", "shared", str(path))
    return path


def _stream(workspace: Path, *args: str, check: bool = True) -> str:
    """dvc ARGS in `workspace`, its output printed line by line (the job's log shows progress) and returned."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        env=dvc_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines = []
    assert proc.stdout is not None  # stdout=PIPE
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if proc.wait() and check:
        raise RuntimeError(
            f"dvc {' '.join(args)} failed in {workspace} (exit {proc.returncode}):\n" + "".join(lines[-40:])
        )
    return "".join(lines)


def ran_stages(log: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", log)


def run_repetition(
    workspace: str | Path, targets: list[str], remote: str | None = None, lock_name: str | None = None
) -> dict:
    """The job: [pull] `dvc repro TARGETS` [push] in one repetition workspace; returns what DVC ran.

    With a remote: a workspace without dvc.lock first takes the one its repetition left in the remote (the same
    repetition run elsewhere before), so `dvc pull` can restore its data and checkpoints; the pull may find nothing (a
    first run)."""
    workspace = Path(workspace)
    kept = Path(remote) / LOCKS / lock_name if remote and lock_name else None
    if kept and kept.is_file() and not (workspace / "dvc.lock").exists():
        shutil.copy(kept, workspace / "dvc.lock")
    if remote and (workspace / "dvc.lock").exists():
        _stream(workspace, "pull", "--run-cache", check=False)
        print(f"[launch] pulled from {remote}; outputs it lacks (stages not run yet) are produced below", flush=True)
    elif remote:
        print("[launch] this repetition has no dvc.lock yet (its first run): nothing to pull", flush=True)
    log = _stream(workspace, "repro", *targets)
    if remote:  # --run-cache: no entries today (module docstring), but any stage that becomes cacheable shares
        _stream(workspace, "push", "--run-cache")
    if kept:
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(workspace / "dvc.lock", kept.with_suffix(".tmp"))
        os.replace(kept.with_suffix(".tmp"), kept)  # atomic: a concurrent reader never sees half a lock file
    return dict(workspace=str(workspace), ran=ran_stages(log))


def prepare(
    profile_file: Path, repetitions: list[int], dest: Path, overrides: dict, remote: str | None, force: bool = False
) -> dict[int, list]:
    """Make or refresh the repetition workspaces (`force`: see profiles.check_dest); {repetition: targets} of those with
    work left (busy and done ones printed)."""
    todo = {}
    for r in repetitions:
        workspace, first = dest / f"repetition_{r}", r == repetitions[0]
        before = state(workspace, repetition_targets(workspace, first)) if (workspace / ".dvc").is_dir() else "todo"
        if before == "busy":
            print(
                f"repetition {r}: busy (a DVC process holds {workspace}: a job still running); left alone", flush=True
            )
            continue  # refreshing its files under a running job could hand it a half-copied module
        make_workspace(profile_file, workspace, with_repetitions(profile_file, overrides, [r]), force)
        if remote:
            configure_remote(workspace, remote)
        targets = repetition_targets(workspace, first)
        # done before the refresh: ask again (a changed profile or code makes it todo); todo stays todo
        if before == "done" and state(workspace, targets) == "done":
            print(f"repetition {r}: up to date (dvc status clean in {workspace}); skipped", flush=True)
        else:
            todo[r] = targets
    return todo


def submit(todo: dict[int, list], dest: Path, args, lock_prefix: str) -> list:
    """One submitit job array over the repetitions in `todo`: job r runs run_repetition in dest/repetition_<r>."""
    import submitit

    executor = submitit.AutoExecutor(folder=dest / "submitit" / "%j", cluster=args.executor)
    gpus = args.gpus_per_job if args.gpus_per_job is not None else (1 if args.executor == "slurm" else 0)
    executor.update_parameters(
        name=f"llmc-{lock_prefix}",
        timeout_min=args.timeout_min,
        gpus_per_node=gpus,
        cpus_per_task=args.cpus_per_job,
        slurm_array_parallelism=len(todo),
        **({"slurm_partition": args.partition} if args.partition else {}),
    )
    repetitions = list(todo)
    jobs = executor.map_array(
        run_repetition,
        [str(dest / f"repetition_{r}") for r in repetitions],
        [todo[r] for r in repetitions],
        [args.remote] * len(repetitions),
        [f"{lock_prefix}/repetition_{r}.lock" for r in repetitions],
    )
    for r, job in zip(repetitions, jobs):
        print(f"repetition {r}: submitted job {job.job_id} ({args.executor}); log {job.paths.stdout}", flush=True)
    return list(zip(repetitions, jobs))


def wait(jobs: list) -> None:
    """Wait for every job; one that failed is reported with its log, and the launch stops after all have ended."""
    failed = []
    for r, job in jobs:
        try:
            print(f"repetition {r}: done, ran {job.result()['ran'] or 'nothing'}", flush=True)
        except Exception as exc:  # submitit re-raises the job's error with its traceback
            failed.append(r)
            print(
                f"repetition {r}: job {job.job_id} failed (log {job.paths.stdout}):\n{exc}", file=sys.stderr, flush=True
            )
    if failed:
        raise RuntimeError(
            f"jobs of repetitions {failed} failed; fix the cause and launch again (finished repetitions skip)"
        )


# --- one machine, several devices: DVC's experiment queue -------------------------------------------------------


def _git(workspace: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=workspace, check=True, capture_output=True, text=True).stdout


def queue_workspace(profile_file: Path, dest: Path, overrides: dict, force: bool = False) -> Path:
    """A workspace that is a git repository (DVC experiments are git commits), its files committed."""
    workspace = dest / "queue"
    if not (workspace / ".git").is_dir():
        claim(workspace, force)  # marked before `dvc init` makes the .dvc/ that make_workspace checks for
        _git(workspace, "init", "-q")
        _git(workspace, "config", "user.name", "llmc launch")  # experiments commit; no global identity needed
        _git(workspace, "config", "user.email", "launch@llmc.invalid")
        dvc(workspace, "init", "-q")
    make_workspace(profile_file, workspace, overrides, force)
    if _git(workspace, "status", "--porcelain"):
        _git(workspace, "add", "-A")
        _git(workspace, "commit", "-q", "-m", "launch workspace")
    return workspace


def experiments(workspace: Path) -> dict[str, str]:
    """{name: commit} of the finished experiments on the workspace's current commit (refs/exps/<baseline>/<name>)."""
    base = _git(workspace, "rev-parse", "HEAD").strip()
    refs = _git(workspace, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/exps/{base[:2]}/{base[2:]}/")
    return {ref.rsplit("/", 1)[1]: sha for ref, sha in (line.split() for line in refs.splitlines())}


def queue_status(workspace: Path) -> dict[str, str]:
    """{experiment name: status} from `dvc queue status` (Queued, Running, Success, Failed)."""
    rows = dvc(workspace, "queue", "status").stdout.splitlines()
    return {cols[1]: cols[-1] for cols in (row.split() for row in rows) if len(cols) >= 4 and cols[0] != "Task"}


def run_queue(
    profile_file: Path,
    repetitions: list[int],
    dest: Path,
    devices: list[str],
    overrides: dict,
    targets: list[str] | None = None,
    poll_s: float = 5.0,
    force: bool = False,
) -> dict[int, Path]:
    """Queue one experiment per repetition (`dvc exp run --queue -S repetitions.<list>=[r] -S runtime.device=<device>`,
    devices round robin), start one worker per device (`dvc queue start -j N`), wait, and export each experiment's files
    to dest/queue_exps/repetition_<r>/ (git archive) for the gather. Repetitions with a finished experiment are
    skipped."""
    workspace = queue_workspace(profile_file, dest, with_repetitions(profile_file, overrides, repetitions[:1]), force)
    names = repetition_names(profile_file, overrides)
    done, pending = experiments(workspace), queue_status(workspace)
    for i, r in enumerate(repetitions):
        name = f"repetition_{r}"
        if name in done or pending.get(name) in PENDING:
            print(f"repetition {r}: experiment {name} {'finished' if name in done else 'queued'}; skipped", flush=True)
            continue
        if pending.get(name) == "Failed":  # its log stays in `dvc queue logs` until removed; the name is reused
            dvc(workspace, "queue", "remove", name, check=False)
        sets = [f"repetitions.{n}=[{r}]" for n in names] + [f"runtime.device={devices[i % len(devices)]}"]
        dvc(
            workspace,
            "exp",
            "run",
            "--queue",
            "-n",
            name,
            *(a for s in sets for a in ("-S", s)),
            *(targets or repetition_targets(workspace, r == repetitions[0])),
        )
    dvc(workspace, "queue", "start", "-j", str(len(devices)))
    wanted = {f"repetition_{r}" for r in repetitions}
    while any(queue_status(workspace).get(n) in PENDING for n in wanted):
        time.sleep(poll_s)
    finished = experiments(workspace)
    if missing := sorted(wanted - set(finished)):
        logs = {n: dvc(workspace, "queue", "logs", n, check=False).stdout[-2000:] for n in missing}
        raise RuntimeError(f"experiments {missing} did not finish in {workspace}:\n" + "\n".join(logs.values()))
    out = {}
    for r in repetitions:
        tree = out[r] = dest / "queue_exps" / f"repetition_{r}"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", finished[f"repetition_{r}"]], cwd=workspace, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        print(
            f"repetition {r}: experiment repetition_{r} ({finished[f'repetition_{r}'][:7]}) exported to {tree}",
            flush=True,
        )
    return out


# --- the gather: every repetition's outputs in one workspace, then aggregate and report ------------------------------


def uncached_outs(stage: dict) -> list[str]:
    """The `cache: false` outputs of a stage (results, metrics, figures, executed notebooks); the cached ones (data,
    checkpoints) stay in the repetition workspaces: aggregate and report never read them."""
    body = stage.get("do", stage)
    entries = body.get("outs", []) + body.get("metrics", []) + body.get("plots", [])
    return [next(iter(e)) for e in entries if isinstance(e, dict) and next(iter(e.values())).get("cache") is False]


def drop_other_repetitions(workspace: Path, pattern: str, repetitions: list[int]) -> None:
    """Remove a previous gather's outputs of repetitions not gathered now: the report reads every
    metrics/*/repetition_*.json."""
    keep = {pattern.replace("${item}", str(r)) for r in repetitions}
    for path in workspace.glob(pattern.replace("${item}", "*")):
        if str(path.relative_to(workspace)) not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def gather(profile_file: Path, sources: dict[int, Path], dest: Path, overrides: dict, force: bool = False) -> Path:
    """The gather workspace `dest` over the finished repetition folders `sources` ({repetition: workspace or exported
    experiment}): copies, merges (see the module docstring), then `dvc repro -s check_params aggregate report`."""
    repetitions = sorted(sources)
    workspace = make_workspace(profile_file, dest, with_repetitions(profile_file, overrides, repetitions), force)
    params = validate_params(yaml.safe_load((workspace / "params.yaml").read_text()), source="params.yaml")
    pipeline = stages(workspace)
    once = [
        rel
        for name, stage in pipeline.items()
        if name not in GATHER_STAGES and not per_repetition(stage)
        for rel in uncached_outs(stage)
        if name != "check_params"
    ]
    first = next((sources[r] for r in repetitions if all((sources[r] / rel).exists() for rel in once)), None)
    if first is None:
        raise FileNotFoundError(
            f"no repetition folder has the outputs of the run-once stages ({', '.join(once)}): the "
            "lowest repetition of a launch runs them; gather repetitions that include it"
        )
    for rel in once:
        copy_output(first, workspace, rel)
    for name, stage in pipeline.items():
        if name in GATHER_STAGES or not per_repetition(stage):
            continue
        if "foreach" not in stage:
            merge = registry.spec(name).gather
            if merge is None:
                raise NotImplementedError(
                    f"stage {name} runs in every repetition's workspace but its StageSpec has "
                    "no `gather` to merge their outputs"
                )
            merge(workspace, sources, repetitions, params)
            continue
        for pattern in uncached_outs(stage):
            drop_other_repetitions(workspace, pattern, repetitions)
            for r in repetitions:
                copy_output(sources[r], workspace, pattern.replace("${item}", str(r)))
    print(
        f"gather {workspace}: repetitions {repetitions} copied (run-once stages from {first}); "
        "dvc repro -s check_params aggregate report",
        flush=True,
    )
    ran = ran_stages(_stream(workspace, "repro", "-s", "check_params", *GATHER_STAGES))
    summary = json.loads((workspace / "metrics" / "report.json").read_text())
    counts = ", ".join(f"{summary.get('n_' + v.replace(' ', '_'), 0)} {v}" for v in VERDICTS)
    print(
        f"gather: ran {ran or 'nothing (up to date)'}; {summary['n_claims']} claims: {counts} "
        f"({summary.get('n_near_threshold', 0)} near threshold); report {workspace / 'reports' / 'report.html'}",
        flush=True,
    )
    return workspace


# --- the command line ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llmc_utils.pipeline.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("profile", help="profile name (default, paper, tiny, profiles/<name>.yaml) or params file")
    parser.add_argument("--repetitions", required=True, help="repetitions (repetition indices), like 0-4 or 0,2,7")
    parser.add_argument(
        "--many-repetitions", action="store_true", help=f"allow more than {MAX_REPETITIONS:,} repetitions"
    )
    parser.add_argument(
        "--executor",
        choices=("local", "slurm", "queue"),
        default="local",
        help="local processes, a Slurm job array (submitit), or DVC's experiment queue on this machine",
    )
    parser.add_argument(
        "--dest", help="folder of the repetition workspaces and the gather (default runs/launch/<profile>)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="use --dest (and the workspaces in it) even where it "
        "holds a params.yaml, dvc.yaml, notebooks/, llmc_utils/ or .dvc/ not made by llmc",
    )
    parser.add_argument(
        "--gather", action="store_true", help="after the jobs, gather every repetition into dest/gather"
    )
    parser.add_argument("--remote", help="folder for a DVC remote shared by every job (data and checkpoints)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter in every workspace, like runtime.device=cuda (repeatable)",
    )
    slurm = parser.add_argument_group("local and slurm executors")
    slurm.add_argument("--gpus-per-job", type=int, help="GPUs per job (default 1 on slurm, 0 local)")
    slurm.add_argument("--cpus-per-job", type=int, default=8, help="CPU cores per job on slurm (default 8)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--timeout-min", type=int, default=4 * 24 * 60, help="time limit per job (default 4 days)")
    queue = parser.add_argument_group("queue executor")
    queue.add_argument("--devices", default="cuda:0", help="one experiment worker per device, like cuda:0,cuda:1")
    return parser.parse_args(argv)


def remote_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmc_utils.pipeline.launch remote",
        description="Make PATH the default DVC remote of one workspace.",
    )
    parser.add_argument("path", help="folder of the remote (local or on a shared filesystem)")
    parser.add_argument("--workspace", default=str(REPO), help="workspace folder (default: the repository)")
    args = parser.parse_args(argv)
    if not (Path(args.workspace) / ".dvc").is_dir():
        print(f"error: {args.workspace} is not a DVC workspace (no .dvc folder)", file=sys.stderr)
        return 2
    path = configure_remote(Path(args.workspace), args.path)
    print(f"{args.workspace}: default DVC remote 'shared' = {path}; `dvc push` / `dvc pull` use it")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI: a bad repetitions spec (or more than MAX_REPETITIONS repetitions without --many-repetitions), profile or
    override, a missing Slurm, or a --dest holding pipeline files not made by llmc (without --force) ends with one
    message (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["remote"]:
        return remote_main(argv[1:])
    args = parse_args(argv)
    dest = Path(args.dest or REPO / "runs" / "launch" / Path(str(args.profile)).stem).resolve()
    try:
        repetitions = parse_repetitions(args.repetitions, None if args.many_repetitions else MAX_REPETITIONS)
        overrides = parse_set(args.set)
        profile_file = profile_path(args.profile)
        repetition_names(profile_file, overrides)  # validates the profile and overrides before any folder is made
        if args.executor == "queue" and args.remote:
            raise ValueError(
                "--remote is for the local and slurm executors: the queue's experiments already share "
                "their workspace's DVC cache"
            )
        if args.executor == "slurm" and shutil.which("sbatch") is None:
            raise ValueError(
                "--executor slurm needs Slurm, but `sbatch` is not on PATH on this machine: run the "
                "launch on the cluster's login node, or use --executor local or queue"
            )
        # every folder the launch makes a workspace in, before the first is made (profiles.WorkspaceInUse)
        for folder in (dest, dest / "gather", dest / "queue", *(dest / f"repetition_{r}" for r in repetitions)):
            check_dest(folder, args.force)
    except (ValueError, ParamsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.remote:  # jobs run elsewhere (another cwd, another node): give them an absolute path
        args.remote = str(Path(args.remote).expanduser().resolve())
    started = time.perf_counter()
    if args.executor == "queue":
        sources = run_queue(profile_file, repetitions, dest, args.devices.split(","), overrides, force=args.force)
    else:
        todo = prepare(profile_file, repetitions, dest, overrides, args.remote, args.force)
        jobs = submit(todo, dest, args, Path(str(args.profile)).stem) if todo else []
        print(f"{len(jobs)} job(s) submitted, {len(repetitions) - len(jobs)} repetition(s) skipped", flush=True)
        if jobs and (args.gather or args.executor == "local"):  # local jobs are children of this machine: wait
            wait(jobs)
        elif jobs:
            print(
                f"when they have finished: python -m llmc_utils.pipeline.launch {args.profile} "
                f"--repetitions {args.repetitions} --executor {args.executor} --dest {dest} --gather"
            )
            return 0
        sources = {r: dest / f"repetition_{r}" for r in repetitions}
    print(f"repetitions done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.gather:
        started = time.perf_counter()
        gather(profile_file, sources, dest / "gather", overrides, args.force)
        print(f"gather done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
