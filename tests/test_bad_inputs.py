"""A catalogue of bad inputs, each tried the way a user meets it, in a workspace that already holds outputs.

Every case asserts two things: the message names what is wrong (file, key, value and what is allowed, or the file
and what to do), and no existing output was deleted or changed (a snapshot of every file before and after, by
content). Params files go through `python -m llmc_utils.profiles` (main(), in process) and the check_params stage's
entry point, which is what stops `dvc repro` before DVC deletes anything (tests/test_resume.py shows that under DVC);
checkpoints, datasets, texts and folders go through the functions the stages call.
"""

import hashlib
import os
import shutil
import subprocess

import pytest
import torch
import yaml

from llmc_utils import check_params, data, pairs, profiles
from llmc_utils.io import CheckpointError, OutputNotWritable, save_json, save_torch
from llmc_utils.language_model import LanguageModelConfig, load_text
from llmc_utils.trainer import OptimConfig, train_model
from tests import fabricate
from tests.conftest import ROOT


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`: equal snapshots = nothing deleted or changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path):
    """A workspace as a finished run leaves it: made by the profiles CLI (its marker), params, metrics, a figure, a
    pair checkpoint."""
    ws = tmp_path / "ws"
    (ws / "figures").mkdir(parents=True)
    (ws / profiles.WORKSPACE_MARKER).write_text("made by llmc_utils.profiles\n")
    (ws / "figures" / "fig1_layerwise_barriers.png").write_bytes(b"\x89PNG old figure")
    save_json({"max_barrier": 1.23}, ws / "metrics" / "layerwise_barriers" / "seed_0.json")
    shutil.copy(ROOT / "tests" / "params_tiny.yaml", ws / "params.yaml")
    save_torch({"epoch": 0, "meta": {}, "model": {"w": torch.ones(2)}}, ws / "models" / "pair" / "seed_0" / "A" / "epoch_0000.pt")
    return ws


def tiny_with(tmp_path, name="bad.yaml", **sections) -> str:
    """The tiny profile with `sections` merged in, written as a params file."""
    params = profiles.load_profile(ROOT / "tests" / "params_tiny.yaml")
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
    assert "model.yaml: not a YAML params file: byte 4 is not UTF-8 text" in cli_error(capsys, workspace,
                                                                                       str(tmp_path / "model.yaml"))


def test_params_file_that_is_a_list(tmp_path, workspace, capsys):
    (tmp_path / "list.yaml").write_text("- runtime\n- data\n")
    assert "list.yaml: expected a mapping of section names to settings, got a list" in cli_error(
        capsys, workspace, str(tmp_path / "list.yaml"))


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
    assert f"data.root = '{tmp_path}/no/such/folder' is not allowed: there is no folder {tmp_path}/no/such/folder" in err


def test_data_root_without_the_dataset_files(tmp_path, workspace, capsys):
    folder = fabricate.fashion_mnist(tmp_path / "fm")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    err = cli_error(capsys, workspace, tiny_with(tmp_path, data={"root": str(folder)}))
    assert f"data.root = '{folder}' is not allowed: {folder} does not hold the fashion_mnist files: missing " \
           "t10k-labels-idx1-ubyte" in err


def test_text_file_that_does_not_exist(tmp_path, workspace, capsys):
    err = cli_error(capsys, workspace, tiny_with(tmp_path, language_model={"text_file": str(tmp_path / "book.txt")}))
    assert f"language_model.text_file = '{tmp_path}/book.txt' is not allowed: there is no file {tmp_path}/book.txt" in err


def test_text_file_that_is_not_utf8(tmp_path, workspace, capsys):
    (tmp_path / "book.txt").write_bytes("Grüße aus Köln\n".encode("latin-1"))
    err = cli_error(capsys, workspace, tiny_with(tmp_path, language_model={"text_file": "book.txt"}))
    assert f"language_model.text_file = '{tmp_path}/book.txt' is not allowed: {tmp_path}/book.txt is not UTF-8 text " \
           "(byte 2: invalid start byte); convert it first, e.g. iconv -f LATIN1 -t UTF-8" in err
    with pytest.raises(ValueError, match="book.txt is not UTF-8 text"):  # and when a stage reads it directly
        load_text(LanguageModelConfig(text_file=str(tmp_path / "book.txt")))


def test_device_that_is_not_present(tmp_path, workspace, capsys):
    err = cli_error(capsys, workspace, tiny_with(tmp_path, runtime={"device": "cuda:7"}))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = "no CUDA device is present on this machine" if count == 0 else f"this machine has {count} CUDA device"
    assert f"bad.yaml: runtime.device = 'cuda:7' is not allowed: {expected}" in err and "allowed here: auto, cpu" in err


def test_unknown_profile_and_broken_extends(tmp_path, workspace, capsys):
    assert "unknown profile 'papr': no such file; give one of default, paper, paper_vgg11, tiny" in cli_error(
        capsys, workspace, "papr")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\ntrain_pairs: {width: 8}\n")
    assert f"child.yaml: extends = 'parent.yaml' is not allowed: there is no file {tmp_path}/parent.yaml" in cli_error(
        capsys, workspace, str(tmp_path / "child.yaml"))
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
    assert check_params.main([]) == 1
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
    return train_model(make_mlp, x, y, OptimConfig(epochs=3, batch_size=16, lr=0.1), init_seed=0, data_seed=1,
                       checkpoint_epochs=[0, 1, 3], run_dir=run_dir, meta=meta or {"arch": "mlp", "width": 8}, **kw)


def killed_run(tmp_path):
    """A run directory as a kill after epoch 1 leaves it: checkpoints 0 and 1."""
    run_dir = tmp_path / "A"
    train(run_dir)[-1].unlink()
    return run_dir


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "is corrupt, truncated or not a torch file"),
    ("garbage", "is corrupt, truncated or not a torch file"),
    ("state_dict", "lacks ['optimizer', 'scheduler', 'generator', 'epoch', 'meta']: it was written by another"),
    ("list", "holds a list, expected a dict: it was not written by this pipeline"),
])
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
    assert f"2 checkpoint(s) in {run_dir} were written under another configuration (width: 8 in the checkpoint, " \
           "16 now); moved them to" in message
    (moved,) = (tmp_path / "stale").iterdir()
    assert str(moved) in message and snapshot(moved) == before  # kept, byte for byte
    assert [p.name for p in paths] == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0003.pt"]
    assert torch.load(paths[-1], weights_only=True)["meta"]["width"] == 16  # trained afresh under the new meta
    with pytest.raises(CheckpointError, match=r"another configuration \(width: 16 in the checkpoint, 32 now\); they "
                                              r"must not be mixed into this run. Move them away \(mv "):
        train(run_dir, meta={"arch": "mlp", "width": 32})  # no stale_dir: stop and say what to do


def test_pair_folder_mixing_two_widths(tmp_path):
    """A downstream stage reading a pair whose folder holds a checkpoint of another width stops naming it."""
    ws = tmp_path / "ws"
    for member, width in (("A", 8), ("B", 8)):
        for epoch in (0, 1):
            spec = dict(arch="rescnn", in_channels=1, num_classes=10, image_size=28, width=width)
            save_torch({"epoch": epoch, "meta": {"spec": spec}, "model": pairs.make_model(spec).state_dict()},
                       pairs.pair_dir(ws, 0) / member / f"epoch_{epoch:04d}.pt")
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
        elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                              capture_output=True).returncode != 0:
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
        save_json({"max_barrier": 9.9}, metrics / "seed_0.json")
    assert f"cannot write {metrics}/seed_0.json: {metrics} is not writable" in str(exc.value)
    assert snapshot(workspace) == before


def test_read_only_workspace_for_the_profiles_cli(workspace, read_only, capsys):
    read_only(workspace)
    err = cli_error(capsys, workspace, "tiny")
    assert f"cannot write the workspace {workspace}" in err and "choose another --dest or make it writable" in err
