"""A catalogue of bad inputs, each tried the way a user meets it, in a workspace that already holds outputs.

Every case asserts two things: the message names what is wrong (file, key, value and what is allowed, or the file
and what to do), and no existing output was deleted or changed (a snapshot of every file before and after, by
content). Params files go through `python -m llmc_utils.pipeline.profiles` (main(), in process) and the
check_params stage's entry point, which is what stops `dvc repro` before DVC deletes anything (tests/test_resume.py
shows that under DVC); checkpoints, datasets, texts and folders go through the functions the stages call.

The last section is the table of untrusted inputs to the commands `llmc barriers`,
`python -m llmc_utils.pipeline.profiles` and `python -m llmc_utils.pipeline.launch`, each run through the command's
main() as a user runs it: hostile files (pickles that run a command), careless ones (NaN weights, integer weights, a
folder of someone else's), each answered by one error line and exit code 2 before any compute, with no file changed
outside the output folder and no pickled command run.
"""

import argparse
import hashlib
import json
import os
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from llmc_utils.core import data
from llmc_utils.core.io import CheckpointError, OutputNotWritable, load_checkpoint, save_json, save_torch
from llmc_utils.core.trainer import OptimConfig, train_model
from llmc_utils.pairtool import cli
from llmc_utils.pairtool import models as own_models
from llmc_utils.pairtool.report import MARKER, output_names
from llmc_utils.pipeline import check_params, launch, profiles
from llmc_utils.pipeline.params import load_profile
from llmc_utils.stages import train_pairs as pairs
from llmc_utils.stages.language_model import LanguageModelConfig, load_text
from tests import fabricate
from tests.conftest import ROOT


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`: equal snapshots = nothing deleted or changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path):
    """A workspace as a finished run leaves it: made by the profiles CLI (its marker), params, metrics, a figure, a
    pair checkpoint."""
    ws = tmp_path / "ws"
    (ws / "figures").mkdir(parents=True)
    (ws / profiles.WORKSPACE_MARKER).write_text("made by llmc_utils.pipeline.profiles\n")
    (ws / "figures" / "fig1_layerwise_barriers.png").write_bytes(b"\x89PNG old figure")
    save_json({"max_barrier": 1.23}, ws / "metrics" / "layerwise_barriers" / "repetition_0.json")
    # as make_workspace writes it: the tiny profile with what it extends merged in
    (ws / "params.yaml").write_text(yaml.safe_dump(load_profile(ROOT / "profiles" / "tiny.yaml"), sort_keys=False))
    save_torch(
        {"epoch": 0, "meta": {}, "model": {"w": torch.ones(2)}},
        ws / "models" / "pair" / "repetition_0" / "A" / "epoch_0000.pt",
    )
    return ws


def tiny_with(tmp_path, name="bad.yaml", **sections) -> str:
    """The tiny profile with `sections` merged in, written as a params file."""
    params = load_profile(ROOT / "profiles" / "tiny.yaml")
    for section, values in sections.items():
        params[section] = dict(params.get(section) or {}, **values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


def cli_error(capsys, workspace, *argv) -> str:
    """Run the profiles CLI on a workspace that holds outputs; return its error message (it must fail cleanly, and
    touch nothing)."""
    before = snapshot(workspace)
    assert profiles.main([*argv, "--dest", str(workspace)]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.out == ""
    assert snapshot(workspace) == before
    return out.err


# ---------------------------------------------------------------------------------------------------- params files
def test_empty_params_file(tmp_path, workspace, capsys):
    (tmp_path / "empty.yaml").write_text("")
    err = cli_error(capsys, workspace, str(tmp_path / "empty.yaml"))
    assert "empty.yaml is empty" in err and "start from a copy of params.yaml" in err


def test_params_file_that_is_not_yaml(tmp_path, workspace, capsys):
    (tmp_path / "broken.yaml").write_text("train_pairs:\n  optim: {epochs: 3\n  width: 8\n")
    err = cli_error(capsys, workspace, str(tmp_path / "broken.yaml"))
    assert "broken.yaml: not valid YAML at line 3" in err


def test_params_file_that_is_binary(tmp_path, workspace, capsys):
    (tmp_path / "model.yaml").write_bytes(b"PK\x03\x04\xff\xfe binary")
    assert "model.yaml: not a YAML params file: byte 4 is not UTF-8 text" in cli_error(
        capsys, workspace, str(tmp_path / "model.yaml")
    )


def test_params_file_that_is_a_list(tmp_path, workspace, capsys):
    (tmp_path / "list.yaml").write_text("- runtime\n- data\n")
    assert "list.yaml: expected a mapping of section names to settings, got a list" in cli_error(
        capsys, workspace, str(tmp_path / "list.yaml")
    )


def test_unknown_section_and_unknown_key(tmp_path, workspace, capsys):
    path = tiny_with(tmp_path, trian_pairs={"width": 8}, train_pairs={"epochs": 30})
    err = cli_error(capsys, workspace, path)
    assert "unknown section 'trian_pairs'; allowed sections: runtime, repetitions, data, train_pairs" in err
    assert "unknown key train_pairs.epochs (value 30); allowed keys in 'train_pairs': arch, width" in err


def test_wrong_type_and_out_of_range(tmp_path, workspace, capsys):
    path = tiny_with(tmp_path, train_pairs={"width": "eight"}, layerwise_barriers={"alphas": [0.25, 0.5, 1.5]})
    err = cli_error(capsys, workspace, path)
    assert "bad.yaml: train_pairs.width = 'eight' is not allowed: Input should be a valid integer" in err
    assert "bad.yaml: layerwise_barriers.alphas.2 = 1.5 is not allowed: Input should be less than or equal to 1" in err


def test_data_root_that_does_not_exist(tmp_path, workspace, capsys):
    err = cli_error(capsys, workspace, tiny_with(tmp_path, data={"root": "no/such/folder"}))
    # relative to the params file's folder, and said so in absolute terms
    assert (
        f"data.root = '{tmp_path}/no/such/folder' is not allowed: there is no folder {tmp_path}/no/such/folder" in err
    )


def test_data_root_without_the_dataset_files(tmp_path, workspace, capsys):
    folder = fabricate.fashion_mnist(tmp_path / "fm")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    err = cli_error(capsys, workspace, tiny_with(tmp_path, data={"root": str(folder)}))
    assert (
        f"data.root = '{folder}' is not allowed: {folder} does not hold the fashion_mnist files: missing "
        "t10k-labels-idx1-ubyte" in err
    )


def test_text_file_that_does_not_exist(tmp_path, workspace, capsys):
    err = cli_error(capsys, workspace, tiny_with(tmp_path, language_model={"text_file": str(tmp_path / "book.txt")}))
    assert (
        f"language_model.text_file = '{tmp_path}/book.txt' is not allowed: there is no file {tmp_path}/book.txt" in err
    )


def test_text_file_that_is_not_utf8(tmp_path, workspace, capsys):
    (tmp_path / "book.txt").write_bytes("Grüße aus Köln\n".encode("latin-1"))
    err = cli_error(capsys, workspace, tiny_with(tmp_path, language_model={"text_file": "book.txt"}))
    assert (
        f"language_model.text_file = '{tmp_path}/book.txt' is not allowed: {tmp_path}/book.txt is not UTF-8 text "
        "(byte 2: invalid start byte); convert it first, e.g. iconv -f LATIN1 -t UTF-8" in err
    )
    with pytest.raises(ValueError, match="book.txt is not UTF-8 text"):  # and when a stage reads it directly
        load_text(LanguageModelConfig(text_file=str(tmp_path / "book.txt")))


def test_device_that_is_not_present(tmp_path, workspace, capsys):
    err = cli_error(capsys, workspace, tiny_with(tmp_path, runtime={"device": "cuda:7"}))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = "no CUDA device is present on this machine" if count == 0 else f"this machine has {count} CUDA device"
    assert f"bad.yaml: runtime.device = 'cuda:7' is not allowed: {expected}" in err and "allowed here: auto, cpu" in err


def test_unknown_profile_and_broken_extends(tmp_path, workspace, capsys):
    assert "unknown profile 'papr': no such file; give one of default, paper, paper_vgg11, tiny" in cli_error(
        capsys, workspace, "papr"
    )
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\ntrain_pairs: {width: 8}\n")
    assert f"child.yaml: extends = 'parent.yaml' is not allowed: there is no file {tmp_path}/parent.yaml" in cli_error(
        capsys, workspace, str(tmp_path / "child.yaml")
    )
    (tmp_path / "parent.yaml").write_text("extends: child.yaml\n")
    assert "`extends` loops back to a file it extends" in cli_error(capsys, workspace, str(tmp_path / "child.yaml"))


def test_key_that_dvc_yaml_reads_is_missing(workspace, capsys, monkeypatch):
    """A params.yaml used by `dvc repro` directly must hold every key dvc.yaml reads, or DVC deletes a stage's
    outputs before it reports them missing: the check_params stage reports them first, with the value to add."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    del params["runtime"]["num_threads"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", workspace / "dvc.yaml")
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    assert check_params.main([]) == 2
    err = capsys.readouterr().err
    assert "params.yaml: missing key runtime.num_threads, which dvc.yaml's stage(s) prepare_data" in err
    assert "add it (default: 2)" in err and "Traceback" not in err
    assert snapshot(workspace) == before  # not even the stamp is written


# ------------------------------------------------------------------------------------------------------ checkpoints
def make_mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def train(run_dir, meta=None, **kw):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    return train_model(
        make_mlp,
        x,
        y,
        OptimConfig(epochs=3, batch_size=16, lr=0.1),
        init_seed=0,
        data_seed=1,
        checkpoint_epochs=[0, 1, 3],
        run_dir=run_dir,
        meta=meta or {"arch": "mlp", "width": 8},
        **kw,
    )


def killed_run(tmp_path):
    """A run directory as a kill after epoch 1 leaves it: checkpoints 0 and 1."""
    run_dir = tmp_path / "A"
    train(run_dir)[-1].unlink()
    return run_dir


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncate", "is corrupt, truncated or not a torch file"),
        ("garbage", "is corrupt, truncated or not a torch file"),
        ("state_dict", "lacks ['optimizer', 'scheduler', 'generator', 'epoch', 'meta']: it was written by another"),
        ("list", "holds a list, expected a dict: it was not written by this pipeline"),
    ],
)
def test_damaged_or_foreign_checkpoint_stops_training(tmp_path, damage, expected):
    run_dir = killed_run(tmp_path)
    bad = run_dir / "epoch_0001.pt"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:300])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(2000))
    elif damage == "state_dict":  # a bare state dict saved by someone's own script
        save_torch({"model": make_mlp().state_dict()}, bad)
    else:
        save_torch([torch.ones(3)], bad)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as exc:
        train(run_dir)
    assert f"checkpoint {bad} " in str(exc.value) and expected in str(exc.value)
    assert f"mv {bad} {bad}.bad" in str(exc.value)  # what to do
    assert "weights_only" not in str(exc.value)  # torch's advice to load it unsafely is not passed on
    assert snapshot(run_dir) == before  # never resumed from, moved or deleted


def test_checkpoint_renamed_to_another_epoch(tmp_path):
    run_dir = killed_run(tmp_path)
    shutil.copy(run_dir / "epoch_0000.pt", run_dir / "epoch_0003.pt")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="epoch_0003.pt holds epoch 0: it was renamed or copied here"):
        train(run_dir)
    assert snapshot(run_dir) == before


def test_checkpoints_of_another_width_are_moved_aside_not_mixed_in(tmp_path, capsys):
    run_dir = killed_run(tmp_path)
    before = snapshot(run_dir)
    paths = train(run_dir, meta={"arch": "mlp", "width": 16}, stale_dir=tmp_path / "stale")
    message = capsys.readouterr().out
    assert (
        f"2 checkpoint(s) in {run_dir} were written under another configuration (width: 8 in the checkpoint, "
        "16 now); moved them to" in message
    )
    (moved,) = (tmp_path / "stale").iterdir()
    assert str(moved) in message and snapshot(moved) == before  # kept, byte for byte
    assert [p.name for p in paths] == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0003.pt"]
    assert torch.load(paths[-1], weights_only=True)["meta"]["width"] == 16  # trained afresh under the new meta
    with pytest.raises(
        CheckpointError,
        match=r"another configuration \(width: 16 in the checkpoint, 32 now\); they "
        r"must not be mixed into this run. Move them away \(mv ",
    ):
        train(run_dir, meta={"arch": "mlp", "width": 32})  # no stale_dir: stop and say what to do


def test_pair_folder_mixing_two_widths(tmp_path):
    """A downstream stage reading a pair whose folder holds a checkpoint of another width stops naming it."""
    ws = tmp_path / "ws"
    for member, width in (("A", 8), ("B", 8)):
        for epoch in (0, 1):
            spec = dict(arch="rescnn", in_channels=1, num_classes=10, image_size=28, width=width)
            save_torch(
                {"epoch": epoch, "meta": {"spec": spec}, "model": pairs.make_model(spec).state_dict()},
                pairs.pair_dir(ws, 0) / member / f"epoch_{epoch:04d}.pt",
            )
    foreign = pairs.pair_dir(ws, 0) / "B" / "epoch_0001.pt"
    spec16 = dict(arch="rescnn", in_channels=1, num_classes=10, image_size=28, width=16)
    save_torch({"epoch": 1, "meta": {"spec": spec16}, "model": pairs.make_model(spec16).state_dict()}, foreign)
    before = snapshot(ws)
    pairs.load_pair(ws, 0)  # epoch 0 is consistent
    with pytest.raises(CheckpointError) as exc:
        pairs.load_pair(ws, 1)
    assert f"checkpoint {foreign} is a rescnn of width 16 model, but the pair is a rescnn of width 8" in str(exc.value)
    assert snapshot(ws) == before


# ---------------------------------------------------------------------------------------------------------- datasets
def test_truncated_dataset_files(tmp_path, workspace):
    folder = fabricate.fashion_mnist(tmp_path / "fm", gz=False)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    save_torch({"dataset": "old"}, data.prepared_path(workspace))
    before = snapshot(workspace)
    with pytest.raises(data.DatasetUnreadable) as exc:
        data.prepare(data.DataConfig(root=str(folder)), workspace)
    assert f"the fashion_mnist files in {folder} cannot be read" in str(exc.value)
    assert "truncated, corrupt or not fashion_mnist's" in str(exc.value)
    assert snapshot(workspace) == before  # the previous data/images.pt is still there, unchanged


def test_prepared_data_missing_or_corrupt(workspace):
    path = data.prepared_path(workspace)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} does not exist; run the stage that writes it"):
        data.load_prepared(path)
    path.parent.mkdir()
    path.write_bytes(b"not a tensor file")
    before = snapshot(workspace)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt, truncated"):
        data.load_prepared(path)
    assert snapshot(workspace) == before


# ------------------------------------------------------------------------------------------------- read-only folders
@pytest.fixture
def read_only():
    """Make a folder unwritable for this process: chmod for a user, the immutable attribute for root (who ignores
    permissions); skipped where neither works."""
    made = []

    def make(folder):
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif (
            shutil.which("chattr") is None
            or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0
        ):
            pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
        made.append(folder)
        try:
            (folder / ".probe").touch()
        except OSError:
            return
        (folder / ".probe").unlink()
        pytest.skip("the folder stayed writable")

    yield make
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_read_only_output_folder(workspace, read_only):
    metrics = workspace / "metrics" / "layerwise_barriers"
    read_only(metrics)
    before = snapshot(workspace)
    with pytest.raises(OutputNotWritable) as exc:
        save_json({"max_barrier": 9.9}, metrics / "repetition_0.json")
    assert f"cannot write {metrics}/repetition_0.json: {metrics} is not writable" in str(exc.value)
    assert snapshot(workspace) == before


def test_read_only_workspace_for_the_profiles_cli(workspace, read_only, capsys):
    read_only(workspace)
    err = cli_error(capsys, workspace, "tiny")
    assert f"cannot write the workspace {workspace}" in err and "choose another --dest or make it writable" in err


# ------------------------------------------------------------------------------ untrusted inputs of the commands
class RunsCommand:
    """What a hostile pickle holds: an object whose unpickling runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def outside(root, out):
    """snapshot() of everything under `root` but the output folder `out`."""
    return {k: v for k, v in snapshot(root).items() if not (root / k).is_relative_to(out)}


@pytest.fixture
def pair(tmp_path):
    """What one `llmc barriers` run needs, in tmp_path: two tiny MLP checkpoints and fabricated Fashion-MNIST; the
    output folder tmp_path/out."""
    from llmc_utils.core.models import MLP

    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(MLP(784, [8], 10).state_dict())
        torch.save(states[-1], tmp_path / f"{'AB'[seed]}.pt")
    folder = fabricate.fashion_mnist(tmp_path / "fashion", n_train=40, n_test=20)
    args = {
        "--model": "llmc_utils.core.models:MLP",
        "--model-kwargs": json.dumps(dict(in_features=784, hidden=[8], n_classes=10)),
        "--a": str(tmp_path / "A.pt"),
        "--b": str(tmp_path / "B.pt"),
        "--data": f"fashion_mnist:{folder}",
        "--out": str(tmp_path / "out"),
    }
    return dict(root=tmp_path, out=tmp_path / "out", state_b=states[1], args=args)


def llmc(pair, *flags: str, **replace: str) -> int:
    """`llmc barriers` on the pair (--a=... replaced by a=...), with the few samples and alphas of a quick run."""
    args = dict(pair["args"], **{f"--{key.replace('_', '-')}": value for key, value in replace.items()})
    return cli.main(
        [
            "barriers",
            *(x for item in args.items() for x in item),
            "--n-eval",
            "8",
            "--alphas",
            "0.5",
            "--no-progress",
            "--threads",
            "1",
            *flags,
        ]
    )


@pytest.fixture
def no_compute(monkeypatch):
    """Evaluating any model fails the test: the errors below must come before any compute."""

    def evaluate(*args, **kwargs):
        raise AssertionError("the pair was evaluated")

    monkeypatch.setattr(own_models, "evaluate", evaluate)


def llmc_error(pair, capsys, *flags: str, **replace: str) -> str:
    """Run `llmc barriers`; it must exit with code 2 and one `llmc: error:` line, and change no file at all."""
    before = snapshot(pair["root"])
    assert llmc(pair, *flags, **replace) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmc: error: ") and "\n" not in err and "Traceback" not in err, err
    assert snapshot(pair["root"]) == before
    return err


@pytest.mark.parametrize(
    "name, protocol, wrap",
    [
        ("data_batch_3", 2, lambda bad: {"data": bad}),
        ("test_batch", 5, lambda bad: {"labels": [1, 2], "data": np.array([bad], dtype=object)}),  # inside an array
        ("batches.meta", 0, lambda bad: {"label_names": [bad]}),
    ],
)
def test_cifar_batch_whose_pickle_runs_a_command(pair, capsys, no_compute, name, protocol, wrap):
    marker = pair["root"] / "pickle_ran"
    folder = fabricate.cifar10(pair["root"] / "cifar", per_batch=4)
    (folder / name).write_bytes(pickle.dumps(wrap(RunsCommand(f"touch {marker}")), protocol=protocol))
    err = llmc_error(pair, capsys, data=f"cifar10:{folder.parent}")
    assert (
        f"{folder / name} is not a plain data pickle (it names {os.system.__module__}.system; only numpy "
        "arrays, dicts, lists, strings, bytes and numbers are read"
        in err
        and "nothing of it was run" in err
    )
    assert not marker.exists()
    # the pipeline reads CIFAR-10 with the same reader (stage prepare_data): nothing runs, nothing is written
    workspace = pair["root"] / "ws"
    with pytest.raises(data.DatasetUnreadable, match=f"{folder / name} is not a plain data pickle"):
        data.prepare(data.DataConfig(dataset="cifar10", root=str(folder.parent)), workspace)
    assert not marker.exists() and not workspace.exists()


def test_model_spec_that_runs_a_command_is_documented_as_code(pair, capsys, tmp_path_factory):
    """A module.path:callable spec is code the user names: it runs, as the docs and --help say, and its result is
    refused when it is no model."""
    marker = tmp_path_factory.mktemp("elsewhere") / "spec_ran"
    err = llmc_error(pair, capsys, model="os:system", model_kwargs=json.dumps({"command": f"touch {marker}"}))
    assert (
        "--model 'os:system' returned a int, not a torch.nn.Module (a module.path:callable spec imports that "
        "module and calls the callable: it ran)" in err
    )
    assert marker.exists()
    assert "imports that module and calls the callable: it runs that code" in " ".join(
        (ROOT / "docs" / "own_models.md").read_text().split()
    )
    with pytest.raises(SystemExit):
        cli.main(["barriers", "--help"])
    assert "imports and runs that code" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("value, counts", [(float("nan"), "1 NaN and 0 infinite"), (float("inf"), "0 NaN and 1 inf")])
def test_checkpoint_with_nan_or_inf(pair, capsys, no_compute, value, counts):
    state = dict(pair["state_b"], **{"fc2.weight": pair["state_b"]["fc2.weight"].clone()})
    state["fc2.weight"][3, 1] = value
    path = pair["root"] / "B_diverged.pt"
    torch.save(state, path)
    err = llmc_error(pair, capsys, b=str(path))
    assert f"checkpoint B ({path}): fc2.weight holds {counts}" in err and "(of 80); every barrier would be NaN" in err


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_integer_checkpoint_for_a_float_model(pair, capsys, no_compute, dtype):
    path = pair["root"] / "B_int.safetensors"
    save_file({k: v.to(dtype) for k, v in pair["state_b"].items()}, str(path))
    err = llmc_error(pair, capsys, b=str(path))
    assert (
        f"checkpoint B ({path}): fc1.weight is {dtype}, but --model llmc_utils.core.models:MLP has torch.float32 "
        "there; integers cast to floats are not the weights" in err
    )


@pytest.mark.parametrize("extra", ["namespace", "command"])
def test_checkpoint_that_holds_python_objects(pair, capsys, no_compute, extra):
    """torch refuses to unpickle objects (weights_only=True); the message says why and never suggests loading the
    file anyway (weights_only=False would run whatever it asks for)."""
    marker = pair["root"] / "pickle_ran"
    obj = argparse.Namespace(lr=0.1) if extra == "namespace" else RunsCommand(f"touch {marker}")
    path = pair["root"] / "B_objects.pt"
    torch.save({"state_dict": pair["state_b"], "extra": obj}, path)
    name = "argparse.Namespace" if extra == "namespace" else f"{os.system.__module__}.system"
    err = llmc_error(pair, capsys, b=str(path))
    assert f"checkpoint B ({path}) holds a pickled Python object ({name}), not only tensors" in err
    assert "save the weights alone" in err and "weights_only" not in err and not marker.exists()
    with pytest.raises(CheckpointError) as exc:  # the pipeline's own loader says the same
        load_checkpoint(path)
    assert f"holds a pickled Python object ({name})" in str(exc.value) and "weights_only" not in str(exc.value)
    assert not marker.exists()


def test_out_holding_an_earlier_run_is_replaced_without_stale_files(pair, capsys):
    assert llmc(pair) == 0
    out = pair["out"]
    assert {"cumulative.csv", "cumulative.png", MARKER} <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")  # a file of the user's own beside an earlier run
    before = outside(pair["root"], out)
    capsys.readouterr()
    assert llmc(pair, "--orders") == 0  # no cumulative orders this time
    assert f"{out} holds an earlier run of llmc barriers: its files are replaced" in capsys.readouterr().out
    files = output_names(cumulative=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, MARKER, "notes.txt"])
    assert json.loads((out / MARKER).read_text())["files"] == files
    assert "cumulative" not in (out / "report.md").read_text()  # the report lists what the folder holds
    assert (out / "notes.txt").read_text() == "mine" and outside(pair["root"], out) == before


def test_out_holding_other_files_needs_force(pair, capsys):
    out = pair["out"]
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = llmc_error(pair, capsys)
    assert (
        f"--out {out} holds files that llmc barriers did not write (notes.txt; no .llmc_barriers.json); choose "
        "a new or empty folder, or add --force" in err
    )
    before = outside(pair["root"], out)
    assert llmc(pair, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.html").is_file()
    assert outside(pair["root"], out) == before


def git(folder, *args):
    subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_out_over_files_tracked_by_git_or_dvc(pair, capsys, no_compute):
    repo = pair["root"] / "repo"
    (repo / "reports").mkdir(parents=True)
    (repo / "reports" / "report.html").write_text("<p>the project's report</p>")
    git(repo, "init", "-q")
    git(repo, "add", "reports/report.html")
    git(repo, "commit", "-q", "-m", "report")
    for flags in ((), ("--force",)):
        err = llmc_error(pair, capsys, *flags, out=str(repo / "reports"))
        assert (
            f"--out {repo / 'reports'}: {repo / 'reports' / 'report.html'} is tracked by git; llmc barriers "
            "never writes over tracked files, not even with --force" in err
        )
    # a DVC project: outputs of dvc.yaml (a foreach stage's too) and a folder tracked by a .dvc file
    project = pair["root"] / "dvcproject"
    (project / ".dvc").mkdir(parents=True)
    (project / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "fit": {
                        "foreach": [0, 1],
                        "do": {"cmd": "true", "outs": [{"results/repetition_${item}": {"cache": False}}]},
                    }
                }
            }
        )
    )
    (project / "data.dvc").write_text("outs:\n- path: data\n")
    err = llmc_error(pair, capsys, "--force", out=str(project / "results" / "repetition_1"))
    assert (
        f"results/repetition_1/barriers.csv is an output of the DVC pipeline in {project} (dvc.yaml / dvc.lock)" in err
    )
    err = llmc_error(pair, capsys, "--force", out=str(project / "data" / "mine"))
    assert "data/mine/barriers.csv is tracked by DVC (data.dvc)" in err


def test_out_inside_this_repository(pair, capsys, no_compute):
    """The issue's own case: `--out reports` in the repository, where reports/report.html is the pipeline's."""
    before = snapshot(ROOT / "reports")
    err = llmc_error(pair, capsys, "--force", out=str(ROOT / "reports"))
    assert f"{ROOT / 'reports' / 'report.html'} is " in err and "never writes over tracked files" in err
    assert snapshot(ROOT / "reports") == before and not (ROOT / "reports" / MARKER).exists()


def test_outputs_and_checkpoints_get_the_umask_mode(pair):
    previous = os.umask(0o002)  # a group-shared cluster folder
    try:
        assert llmc(pair, "--orders") == 0
        save_torch({"w": torch.ones(2)}, pair["root"] / "models" / "epoch_0001.pt")
    finally:
        os.umask(previous)
    written = [*pair["out"].iterdir(), pair["root"] / "models" / "epoch_0001.pt"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o664" for p in written}


@pytest.fixture
def foreign_project(tmp_path):
    """A folder holding a pipeline of someone else's: params.yaml, dvc.yaml and a notebook."""
    folder = tmp_path / "project"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "params.yaml").write_text("lr: 0.1\n")
    (folder / "dvc.yaml").write_text("stages: {}\n")
    (folder / "notebooks" / "01_train_pairs.ipynb").write_text("{}")
    return folder


def test_profiles_dest_holding_another_pipeline(foreign_project, capsys, monkeypatch):
    before = snapshot(foreign_project.parent)
    assert profiles.main(["tiny", "--dest", str(foreign_project)]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: --dest {foreign_project} holds params.yaml, dvc.yaml, notebooks, not written by llmc (no "
        ".llmc_workspace there), and making a workspace would overwrite them; choose another --dest, or add "
        "--force"
        in err
        and "Traceback" not in err
    )
    assert snapshot(foreign_project.parent) == before
    # --force: the workspace is made there (DVC itself replaced by recorders)
    monkeypatch.setattr(profiles, "dvc", lambda *args, **kwargs: None)
    monkeypatch.setattr(profiles.subprocess, "call", lambda *args, **kwargs: 0)
    assert profiles.main(["tiny", "--dest", str(foreign_project), "--force"]) == 0
    assert "train_pairs" in yaml.safe_load((foreign_project / "params.yaml").read_text())
    assert profiles.main(["tiny", "--dest", str(foreign_project)]) == 0  # now marked as a workspace of llmc's


@pytest.mark.parametrize("where", [".", "repetition_1"])
def test_launch_dest_holding_another_pipeline(foreign_project, capsys, where):
    dest = foreign_project if where == "." else foreign_project.parent / "launch"
    if where != ".":
        shutil.copytree(foreign_project, dest / where)
    before = snapshot(foreign_project.parent)
    assert launch.main(["tiny", "--repetitions", "0-1", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: --dest {(dest / where).resolve()} holds params.yaml, dvc.yaml, notebooks, not written by llmc" in err
        and "--force" in err
    )
    assert snapshot(foreign_project.parent) == before


@pytest.mark.parametrize("spec, count", [("0-99999999999", "100,000,000,000"), ("0-100000", "100,001")])
def test_launch_repetition_range_above_the_limit(tmp_path, capsys, spec, count):
    assert launch.main(["tiny", "--repetitions", spec, "--dest", str(tmp_path / "launch")]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: --repetitions {spec} asks for {count} repetitions, one workspace and pipeline run each; "
        "more than 1,000 need --many-repetitions" in err
    )
    assert list(tmp_path.iterdir()) == []
