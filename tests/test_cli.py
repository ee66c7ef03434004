"""`llmc barriers` (llmc_utils.pairtool.cli, own_models, own_data, own_report): pairs built here, from the command line.

Each pair is made in the test: a few SGD steps from two seeds (or two random initialisations), saved as a torch file
and as safetensors. Checked: the files, the variants, invariants that rounding cannot change (the plain full barrier
is 0 at alpha 0 and 1; the aligned B computes B's function), and that every input error stops with one clear line,
exit code 2 and no output, before any compute.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file, save_model

import llmc_utils  # noqa: F401  (the torchvision compatibility step comes before torchvision, timm, transformers)
from llmc_utils.core import data as pipeline_data
from llmc_utils.pairtool import data as own_data
from llmc_utils.pairtool import models as own_models
from llmc_utils.pairtool.cli import main
from tests import fabricate

CNN = {"name": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 28}
CNN_SPEC = "llmc_utils.core.models:build_model"


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> str:
    """The --data spec of Fashion-MNIST: the real files when this machine has them, else fabricated ones."""
    if all((pipeline_data.DEBIAN_FASHION_MNIST / f"{n}.gz").is_file() for n in pipeline_data.FASHION_MNIST_FILES):
        return "fashion_mnist"
    folder = fabricate.fashion_mnist(tmp_path_factory.mktemp("fashion"), n_train=200, n_test=50)
    return f"fashion_mnist:{folder}"


def train(model: torch.nn.Module, data_spec: str, seed: int, steps: int = 4, batch: int = 16) -> dict:
    """A few SGD steps from the model's own initialisation (seeded): a pair member with trained BN statistics."""
    x, y = own_data.load(data_spec, n_eval=256, seed=seed).splits["train"]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(y), generator=generator)[:batch]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.eval().state_dict().items()}


def save_pair(folder: Path, state_a: dict, state_b: dict) -> tuple[str, str]:
    """A as a torch checkpoint dict with a "state_dict" entry, B as safetensors."""
    a, b = folder / "A.pt", folder / "B.safetensors"
    torch.save({"state_dict": state_a, "epoch": 3}, a)
    save_file({k: v.contiguous() for k, v in state_b.items()}, str(b))
    return str(a), str(b)


def summary_layers(out: Path) -> int:
    return json.loads((out / "summary.json").read_text())["inputs"]["n_layers"]


def run(*args: str) -> int:
    return main(["barriers", *args, "--no-progress", "--threads", "1"])


@pytest.fixture(autouse=True)
def one_thread():
    """Training in the tests on one thread too: on a CPU shared with other jobs, more threads only wait longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cnn_pair(tmp_path_factory, fashion) -> tuple[str, str]:
    from llmc_utils.core.models import build_model

    folder = tmp_path_factory.mktemp("cnn")
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(train(build_model(**CNN), fashion, seed))
    return save_pair(folder, *states)


def test_timm_resnet18_plain_and_bn_reset(tmp_path, fashion):
    import timm

    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(train(timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1), fashion, seed))
    a, b = save_pair(tmp_path, *states)
    out = tmp_path / "out"
    assert (
        run(
            "--model",
            "timm:resnet18",
            "--a",
            a,
            "--b",
            b,
            "--data",
            fashion,
            "--n-eval",
            "16",
            "--alphas",
            "0",
            "0.5",
            "1",
            "--bases",
            "A",
            "--bn-reset",
            "2",
            "--bn-reset-batch-size",
            "16",
            "--layers",
            "conv1",
            "bn1",
            "layer4.1.*",
            "fc",
            "--orders",
            "--out",
            str(out),
        )
        == 0
    )
    for name in ("barriers.csv", "heatmap.png", "summary.json", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "cumulative.csv").exists()  # --orders with no order: no cumulative table (tested below)
    table = pd.read_csv(out / "barriers.csv")
    assert list(table.columns) == own_models.COLUMNS
    assert set(table.variant) == {"plain", "bn_reset"}
    assert list(dict.fromkeys(table.layer_set)) == [
        "full",
        "conv1",
        "bn1",
        "layer4.1.conv1",
        "layer4.1.bn1",
        "layer4.1.conv2",
        "layer4.1.bn2",
        "fc",
    ]
    full = table[table.layer_set == "full"]
    assert set(full.variant) == {"plain", "bn_reset"}
    plain_ends = full[(full.variant == "plain") & full.alpha.isin([0.0, 1.0])]
    assert len(plain_ends) == 8 and plain_ends.barrier.abs().max() < 1e-5  # 2 alphas x 2 splits x 2 metrics
    assert summary_layers(out) == 41  # timm resnet18: 20 conv + 20 BatchNorm + fc
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert "bn_reset" in report and "timm:resnet18" in report and "<table>" in (out / "report.html").read_text()
    print(
        "full train-loss barrier at alpha 0.5:",
        {v: summary["full_barrier"][v]["train"]["loss"] for v in ("plain", "bn_reset")},
    )


@pytest.fixture(scope="module")
def gpt_pair(tmp_path_factory) -> dict:
    """A GPT-2-style pair from a tiny config: A saved as a torch state dict (tied lm_head and wte both present), B
    with safetensors' save_model (one of the two tied keys kept), and a text file of Python's help topics."""
    from pydoc_data.topics import topics

    from transformers import GPT2Config

    folder = tmp_path_factory.mktemp("gpt")
    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64).save_pretrained(folder / "config")
    text = folder / "topics.txt"
    text.write_text("".join(topics[k] for k in sorted(topics))[:20000])
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = own_models.build_model(f"hf:{folder / 'config'}", 256)
        assert type(model).__name__ == "GPT2LMHeadModel"
        states.append(model.state_dict())
        if seed == 1:
            save_model(model, str(folder / "B.safetensors"))
    torch.save(states[0], folder / "A.pt")
    return dict(
        folder=folder,
        config=str(folder / "config"),
        a=str(folder / "A.pt"),
        b=str(folder / "B.safetensors"),
        text=str(text),
        state_a=states[0],
    )


def test_gpt2_pair_from_a_config_on_text(tmp_path, gpt_pair):
    out = tmp_path / "out"
    assert (
        run(
            "--model",
            f"hf:{gpt_pair['config']}",
            "--a",
            gpt_pair["a"],
            "--b",
            gpt_pair["b"],
            "--data",
            f"text:{gpt_pair['text']}",
            "--context",
            "16",
            "--n-eval",
            "8",
            "--alphas",
            "0.5",
            "--bases",
            "A",
            "--orders",
            "shallow_to_deep",
            "--out",
            str(out),
        )
        == 0
    )
    table = pd.read_csv(out / "barriers.csv")
    layers = list(dict.fromkeys(table.layer_set))
    assert layers[:3] == ["full", "transformer.wte", "transformer.wpe"] and layers[-1] == "transformer.ln_f"
    for block in (0, 1):
        for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            assert f"transformer.h.{block}.{part}" in layers
    assert "lm_head" not in layers  # tied to transformer.wte: one tensor, one logical layer
    assert set(table.variant) == {"plain"} and set(table.split) == {"train", "test"}
    assert (out / "heatmap.png").stat().st_size > 0 and (out / "cumulative.png").stat().st_size > 0


def test_checkpoint_keys_in_other_namings(gpt_pair):
    """Checkpoints of the same weights under the names other tools write load into the same state."""
    model = own_models.build_model(f"hf:{gpt_pair['config']}", 256)
    state = gpt_pair["state_a"]
    base = {"module." + k[len("transformer.") :]: v for k, v in state.items() if k.startswith("transformer.")}
    base["module.h.0.attn.bias"] = torch.ones(1, 1, 64, 64)  # a causal mask that old GPT-2 files hold
    compiled = {"_orig_mod." + k: v for k, v in state.items() if k != "transformer.wte.weight"}  # lm_head only
    a, b = own_models.fit_pair(model, "hf:gpt", base, compiled)
    assert list(a) == list(b) == [k for k in model.state_dict() if k != "lm_head.weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_align_adds_aligned_variants(tmp_path, fashion):
    from llmc_utils.core.models import build_model

    kwargs = dict(CNN, name="cnn_bn")
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(train(build_model(**kwargs), fashion, seed))
    a, b = save_pair(tmp_path, *states)
    out = tmp_path / "out"
    assert (
        run(
            "--model",
            CNN_SPEC,
            "--model-kwargs",
            json.dumps(kwargs),
            "--a",
            a,
            "--b",
            b,
            "--data",
            fashion,
            "--n-eval",
            "32",
            "--alphas",
            "0",
            "0.5",
            "1",
            "--align",
            "--bn-reset",
            "1",
            "--bn-reset-batch-size",
            "32",
            "--bases",
            "A",
            "--orders",
            "outer_first",
            "deep_to_shallow",
            "--out",
            str(out),
        )
        == 0
    )
    table = pd.read_csv(out / "barriers.csv")
    assert list(dict.fromkeys(table.variant)) == ["plain", "bn_reset", "aligned", "aligned+bn_reset"]
    full = table[(table.layer_set == "full") & (table.alpha == 1.0) & (table.variant == "aligned")]
    assert full.barrier.abs().max() < 1e-4  # the aligned B computes B's function: its value is B's
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alignment"]["objective_after"] >= summary["alignment"]["objective_before"]
    cum = pd.read_csv(out / "cumulative.csv")
    assert set(cum.order) == {"outer_first", "deep_to_shallow"} and set(cum.variant) == set(table.variant)
    assert cum.j.max() == 15  # cnn_bn: 6 conv + 6 BatchNorm + 3 linear
    assert (out / "cumulative.png").stat().st_size > 0
    assert "aligned+bn_reset" in (out / "report.md").read_text()


def test_imagefolder_and_python_api(tmp_path, cnn_pair):
    """imagefolder:DIR with train/ and test/ (grey PNGs), through the API without an output folder."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("test", 3)):
        for label in ("cat", "dog"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (40, 40), generator=generator, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "images" / split / label / f"{i}.png")
    state = torch.load(cnn_pair[0], weights_only=True)["state_dict"]
    torch.save({k: v[:2] if k.startswith("fc3") else v for k, v in state.items()}, tmp_path / "A2.pt")  # 2 classes
    result = own_models.analyse_pair(
        CNN_SPEC,
        tmp_path / "A2.pt",
        tmp_path / "A2.pt",
        f"imagefolder:{tmp_path / 'images'}",
        log=None,
        model_kwargs=dict(CNN, num_classes=2),
        grayscale=True,
        image_size=28,
        alphas=(0.5,),
        orders=(),
        progress=False,
    )
    assert result.files == [] and result.cumulative is None
    assert set(result.barriers.split) == {"train", "test"}
    assert result.barriers.barrier.abs().max() < 1e-5  # A against itself: no barrier anywhere
    assert "12 of 12" in result.summary["inputs"]["data"]


# --------------------------------------------------------------------------------------------------- input errors
def _error(capsys, *args: str) -> str:
    """Run, expect exit code 2 with one `llmc: error:` line, return that line."""
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmc: error: "), err
    return err


def _cnn_args(cnn_pair, fashion, out, **replace) -> list[str]:
    args = {
        "--model": CNN_SPEC,
        "--model-kwargs": json.dumps(CNN),
        "--a": cnn_pair[0],
        "--b": cnn_pair[1],
        "--data": fashion,
        "--n-eval": "16",
        "--out": str(out),
    }
    args.update(replace)
    return [x for k, v in args.items() for x in (k, *(v if isinstance(v, list) else [v]))]


def test_checkpoint_errors(tmp_path, cnn_pair, fashion, capsys):
    out = tmp_path / "out"
    state = torch.load(cnn_pair[0], weights_only=True)["state_dict"]

    def error(**replace) -> str:
        return _error(capsys, *_cnn_args(cnn_pair, fashion, out, **replace))

    def saved(name: str, obj) -> str:
        torch.save(obj, tmp_path / name)
        return str(tmp_path / name)

    assert "checkpoint A: there is no file" in error(**{"--a": str(tmp_path / "missing.pt")})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "checkpoint B (" in error(**{"--b": str(tmp_path / "junk.pt")})
    assert "cannot be read" in error(**{"--b": str(tmp_path / "junk.pt")})
    assert "not a state dict" in error(**{"--b": saved("list.pt", [1, 2])})
    msg = error(**{"--b": saved("short.pt", {k: v for k, v in state.items() if not k.startswith("fc3")})})
    assert "A and B hold different keys: only in A [fc3.weight, fc3.bias], only in B [none]" in msg
    msg = error(**{"--b": saved("narrow.pt", dict(state, **{"conv1.weight": state["conv1.weight"][:8]}))})
    assert "differ in shape at conv1.weight: A (16, 1, 3, 3), B (8, 1, 3, 3)" in msg
    msg = error(**{"--model-kwargs": json.dumps(dict(CNN, width=8))})
    assert (
        "do not fit --model llmc_utils.core.models:build_model at conv1.weight: checkpoints (16, 1, 3, 3), "
        "model (8, 1, 3, 3)" in msg
    )
    msg = error(**{"--model-kwargs": json.dumps(dict(CNN, name="rescnn"))})
    assert "missing keys [stem.weight" in msg and "unexpected keys [conv1.weight" in msg
    assert not out.exists()  # stopped before writing anything


def test_model_and_data_errors(tmp_path, cnn_pair, fashion, capsys):
    out = tmp_path / "out"
    for spec, expected in (
        ("timm:no_such_net", "cannot build --model 'timm:no_such_net'"),
        ("torchvision:no_such_net", "cannot build --model 'torchvision:no_such_net'"),
        ("no_such_module:build", "cannot build --model 'no_such_module:build': ModuleNotFoundError"),
        ("resnet18", "expected torchvision:NAME, timm:NAME"),
        (f"hf:{tmp_path}", "no config file there"),
    ):
        assert expected in _error(capsys, *_cnn_args(cnn_pair, fashion, out, **{"--model": spec}))
    for spec, expected in (
        ("mnist", "--data 'mnist': unknown kind"),
        ("imagefolder", "needs a path"),
        (f"text:{tmp_path / 'none.txt'}", "there is no file"),
        (f"cifar10:{tmp_path}", "CIFAR-10 not found"),
    ):
        assert expected in _error(capsys, *_cnn_args(cnn_pair, fashion, out, **{"--data": spec}))
    cifar = fabricate.cifar10(tmp_path / "cifar", per_batch=4).parent
    msg = _error(capsys, *_cnn_args(cnn_pair, fashion, out, **{"--data": f"cifar10:{cifar}"}))
    assert "cannot read --data cifar10:" in msg and "images (N, 3, 32, 32)" in msg
    msg = _error(capsys, *_cnn_args(cnn_pair, fashion, out, **{"--layers": ["conv1", "no_such_layer"]}))
    assert "--layers: unknown no_such_layer; the model's logical layers are: conv1, conv2" in msg
    assert "no BatchNorm" in _error(capsys, *_cnn_args(cnn_pair, fashion, out, **{"--bn-reset": "2"}))
    assert "--alphas must be distinct values in [0, 1]" in _error(
        capsys, *_cnn_args(cnn_pair, fashion, out, **{"--alphas": ["0.5", "1.5"]})
    )
    with pytest.raises(SystemExit) as exit_info:  # argparse's own check of --model-kwargs
        run(*_cnn_args(cnn_pair, fashion, out, **{"--model-kwargs": "{width: 8}"}))
    assert exit_info.value.code == 2 and "not JSON" in capsys.readouterr().err
    assert not out.exists()


def test_transformer_errors(tmp_path, gpt_pair, capsys):
    out = tmp_path / "out"
    base = {
        "--model": f"hf:{gpt_pair['config']}",
        "--a": gpt_pair["a"],
        "--b": gpt_pair["b"],
        "--data": f"text:{gpt_pair['text']}",
        "--context": "16",
        "--n-eval": "4",
        "--out": str(out),
    }

    def args(**replace):  # a value None: a flag
        return [x for k, v in dict(base, **replace).items() for x in ((k,) if v is None else (k, v))]

    assert "cannot read --data text:" in _error(capsys, *args(**{"--context": "100"}))  # 64 positions only
    assert "no BatchNorm layer (with running statistics) to reset" in _error(capsys, *args(**{"--bn-reset": "2"}))
    assert "--align: weight matching does not support" in _error(capsys, *args(**{"--align": None}))
    state = dict(gpt_pair["state_a"], **{"lm_head.weight": gpt_pair["state_a"]["lm_head.weight"].clone() + 1})
    torch.save(state, tmp_path / "untied.pt")
    msg = _error(capsys, *args(**{"--a": str(tmp_path / "untied.pt")}))
    assert "lm_head.weight and transformer.wte.weight are one tied tensor" in msg
    assert not out.exists()
