"""Char tokenizer, windows, the tiny GPT (shapes, causal masking, logical layers), the three models of a repetition,
barriers of both pairs, per-repetition metrics, aggregation, the degeneracy stop and config errors."""

import math

import pytest
import torch

from llmc_utils.core.config import ParamsError
from llmc_utils.core.layers import logical_layers
from llmc_utils.core.trainer import TrainingDiverged, load_weights
from llmc_utils.pipeline.params import validate_params
from llmc_utils.stages import language_model as lm

TEXT = "def f(x):\n    return x * 2  # doubles\n" * 20


def test_tokenizer_round_trips_and_sorts_its_vocabulary():
    tok = lm.CharTokenizer(TEXT)
    assert tok.chars == sorted(set(TEXT)) and tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert ids.dtype == torch.int64 and tok.decode(ids) == TEXT
    assert tok.encode(" (").tolist() == [tok.chars.index(" "), tok.chars.index("(")]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.encode("é")


def test_windows_are_next_character_pairs():
    ids = torch.arange(50)
    x, y = lm.windows(ids, 7, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (7, 5)
    assert torch.equal(y, x + 1)  # on 0, 1, 2, ... the next token is the value plus one
    assert x.max() < 49  # the target of the last position still lies inside the text
    with pytest.raises(ValueError, match="too short"):
        lm.windows(ids[:5], 1, 5, torch.Generator())


def test_default_text_is_pydoc_topics_in_sorted_key_order():
    from pydoc_data.topics import topics

    whole = lm.load_text(lm.LanguageModelConfig())
    assert whole == "".join(topics[key] for key in sorted(topics))
    assert lm.load_text(lm.LanguageModelConfig(max_chars=1000)) == whole[:1000]


def test_text_file_from_params(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    assert lm.load_text(lm.LanguageModelConfig(text_file=str(path))) == TEXT
    with pytest.raises(FileNotFoundError, match="text_file"):
        lm.load_text(lm.LanguageModelConfig(text_file=str(tmp_path / "missing.txt")))


def tiny_gpt(seed=0, blocks=2):
    torch.manual_seed(seed)
    return lm.CharGPT(vocab_size=11, context=8, d_model=16, n_heads=4, n_blocks=blocks).eval()


def test_gpt_forward_shapes_and_logical_layers():
    model = tiny_gpt()
    ids = torch.randint(0, 11, (3, 8))
    assert model(ids).shape == (3, 8, 11)
    assert model(ids[:, :5]).shape == (3, 5, 11)
    layers = list(logical_layers(model.state_dict()))
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]  # transformer.Block, as the ViT
    assert layers == ["tok_emb", "pos_emb", *[f"blocks.{b}.{n}" for b in range(2) for n in per_block], "ln_f", "head"]
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 9, dtype=torch.int64))


def test_future_tokens_do_not_change_past_logits():
    model = tiny_gpt()
    ids = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 3) % 11  # alter positions 5, 6, 7 only
    with torch.no_grad():
        out, out_changed = model(ids), model(changed)
    assert torch.allclose(out[:, :5], out_changed[:, :5], atol=1e-6)  # positions 0..4 see only tokens 0..4
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:])


def small_cfg(**overrides):
    # 64 SGD steps: the smallest run that reliably gets below the unigram entropy (the degeneracy stop)
    base = dict(
        text_file=None,
        max_chars=3000,
        context=8,
        d_model=16,
        n_heads=2,
        n_blocks=1,
        train_windows=256,
        eval_windows=8,
        optim=dict(epochs=2, batch_size=8, lr=0.3, weight_decay=0.0, grad_clip=1.0),
        checkpoint_epochs=[0, 1, 2],
        same_init_epochs=None,
    )
    return lm.LanguageModelConfig(**{**base, **overrides})


def test_repetition_derives_every_seed():
    cfg = lm.LanguageModelConfig()
    assert lm.model_seeds(cfg) == {"A": (0, 0), "B": (1, 1), "B'": (0, 1)}
    assert lm.model_seeds(cfg.for_repetition(2)) == {"A": (200, 200), "B": (201, 201), "B'": (200, 201)}
    small = small_cfg()
    first, second = lm.prepare(small, 0), lm.prepare(small.for_repetition(1), 1)
    assert not torch.equal(first["train"][0], second["train"][0])  # windows drawn from repetition_seed(window_seed, r)
    assert torch.equal(lm.prepare(small.for_repetition(1), 1)["train"][0], second["train"][0])  # and reproducibly
    for prepared in (first, second):  # "train" = the first training windows: text the models trained on
        x, y = prepared["train"]
        ex, ey = prepared["splits"]["train"]
        assert torch.equal(ex, x[:8]) and torch.equal(ey, y[:8])
        assert prepared["splits"]["test"][0].shape == (8, 8)
    more = lm.prepare(
        small_cfg(train_windows=512).for_repetition(1), 1
    )  # test windows do not depend on how many windows train
    assert torch.equal(more["splits"]["test"][0], second["splits"]["test"][0])


def test_unigram_entropy():
    assert lm.unigram_entropy(torch.tensor([0, 1, 0, 1]), 3) == pytest.approx(math.log(2))
    assert lm.unigram_entropy(torch.zeros(5, dtype=torch.int64), 4) == 0.0
    text = lm.load_text(lm.LanguageModelConfig(max_chars=5000))
    tok = lm.CharTokenizer(text)
    assert 0 < lm.unigram_entropy(tok.encode(text), tok.vocab_size) < math.log(tok.vocab_size)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = small_cfg()
    prepared = lm.prepare(cfg, 1)
    paths = lm.train_models(cfg, prepared, tmp_path_factory.mktemp("lm"))
    barriers, endpoints = lm.barriers_over_training(cfg, prepared, paths)
    return cfg, prepared, paths, barriers, endpoints


def test_three_models_share_init_or_data_order_as_the_schemes_say(trained):
    cfg, prepared, paths, _, _ = trained
    assert set(paths) == {"A", "B", "B'"} and [p.name for p in paths["A"]] == [f"epoch_000{e}.pt" for e in (0, 1, 2)]
    start = {name: load_weights(ps[0]) for name, ps in paths.items()}
    end = {name: load_weights(ps[-1]) for name, ps in paths.items()}
    assert all(torch.equal(start["A"][k], start["B'"][k]) for k in start["A"])  # same init
    assert not torch.equal(start["A"]["head.weight"], start["B"]["head.weight"])  # different init
    assert not torch.equal(end["A"]["head.weight"], end["B'"]["head.weight"])  # different data order
    assert lm.train_models(cfg, prepared, paths["A"][0].parent.parent) == paths  # finished runs are reused


def test_barriers_cover_both_pairs_every_layer_and_base(trained):
    cfg, _, _, barriers, endpoints = trained
    # 3 checkpoints x 2 pairs x 2 bases x (full + 10 layers) x 2 splits x 2 metrics
    assert len(barriers) == 3 * 2 * 2 * 11 * 2 * 2 and barriers.layer_set.iloc[0] == "full"
    assert set(barriers.pair) == set(lm.PAIRS) and set(barriers.alpha) == {0.5}
    assert len(endpoints) == 3 * 3 * 2 and set(endpoints.model) == set(lm.MODELS)
    full = barriers[barriers.layer_set == "full"]
    for _, rows in full.groupby(["pair", "epoch", "split", "metric"]):
        assert rows.barrier.nunique() == 1  # the full midpoint is the same model for either base
    start = barriers[(barriers.pair == "same_init") & (barriers.epoch == 0)]
    assert (start.barrier.abs() < 1e-9).all()  # A and B' at epoch 0 are one model: no barrier anywhere
    assert (barriers.step == barriers.epoch * 32).all()  # 256 windows / batch 8


def test_curves_metrics_and_summary_agree_with_the_table(trained):
    cfg, prepared, _, barriers, endpoints = trained
    curves = lm.barrier_curves(barriers)
    assert len(curves) == 6 and set(curves.columns) >= {"pair", "epoch", "full_barrier", "max_single_layer_barrier"}
    last = barriers[(barriers.epoch == 2) & (barriers.split == "train") & (barriers.metric == "loss")]
    m = lm.repetition_metrics(cfg, barriers, endpoints, prepared)
    for pair in lm.PAIRS:
        rows = last[last.pair == pair]
        assert m[f"{pair}_full_barrier_train_loss"] == pytest.approx(
            rows[rows.layer_set == "full"].barrier.iloc[0], abs=1e-6
        )
        assert m[f"{pair}_max_single_layer_barrier_train_loss"] == pytest.approx(
            rows[rows.layer_set != "full"].barrier.max(), abs=1e-6
        )
    assert m["full_barrier_train_loss"] == m["different_init_full_barrier_train_loss"]  # default scheme
    assert m["n_layers"] == 10 and m["last_epoch"] == 2 and m["last_step"] == 64
    assert all(m[f"final_test_loss_{n}"] < m["unigram_entropy"] for n in ("A", "B", "B_prime"))
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values())
    same = lm.repetition_metrics(small_cfg(scheme="same_init"), barriers, endpoints, prepared)
    assert same["full_barrier_train_loss"] == m["same_init_full_barrier_train_loss"]
    sentence = lm.summary(barriers)
    assert sentence.startswith("Char-level GPT (1 repetition") and "same init" in sentence


def test_aggregate_reads_every_repetition_and_draws_fig7(trained, tmp_path):
    _, _, _, barriers, _ = trained
    for seed, shift in ((0, 0.0), (1, 0.2)):
        path = tmp_path / "results" / "language_model" / f"repetition_{seed}" / "barriers.csv"
        path.parent.mkdir(parents=True)
        barriers.assign(barrier=barriers.barrier + shift).to_csv(path, index=False)
    table = lm.aggregate_language_model(tmp_path, [0, 1])
    assert len(table) == 2 * len(barriers) and set(table.repetition) == {0, 1}
    curves = lm.barrier_curves(table)
    assert len(curves) == 2 * 6
    heat, sd = lm.layer_barrier_grid(table, "different_init")
    assert list(heat.index)[0] == "full" and heat.shape == sd.shape == (11, 3)
    one, one_sd = lm.layer_barrier_grid(barriers, "different_init")
    assert abs((heat - one).values - 0.1).max() < 1e-9  # mean over repetitions of the larger base's barrier
    assert abs(sd.values - 0.2 / math.sqrt(2)).max() < 1e-9 and one_sd.isna().all().all()
    fig = lm.plot_language_model(table)
    assert len(fig.axes) >= 2
    assert "2 repetitions" in lm.summary(table)
    with pytest.raises(FileNotFoundError, match="language_model@2"):
        lm.aggregate_language_model(tmp_path, [0, 2])


def test_same_init_pair_can_skip_checkpoints(trained):
    _, prepared, paths, _, _ = trained
    barriers, endpoints = lm.barriers_over_training(small_cfg(same_init_epochs=[2]), prepared, paths)
    assert barriers.groupby("pair").epoch.unique().map(list).to_dict() == {
        "different_init": [0, 1, 2],
        "same_init": [2],
    }
    assert len(endpoints) == 3 * 3 * 2  # endpoints of every model at every checkpoint all the same


def test_degenerate_model_stops_naming_model_seed_and_epoch(tmp_path):
    cfg = small_cfg(optim=dict(epochs=1, batch_size=8, lr=1e-6, weight_decay=0.0), checkpoint_epochs=[0, 1])
    with pytest.raises(
        TrainingDiverged,
        match=r"GPT A of repetition 3 \(init seed 300, data seed 300\).*epoch 1.*"
        r"unigram entropy",
    ):
        lm.train_models(cfg.for_repetition(3), lm.prepare(cfg.for_repetition(3), 3), tmp_path)
    with pytest.raises(TrainingDiverged, match="test loss 4.000 .* epoch 7"):
        lm.check_not_degenerate({"train": 1.0, "test": 4.0}, 3.5, "GPT B", 7)
    lm.check_not_degenerate({"train": 1.0, "test": 3.4}, 3.5, "GPT B", 7)  # below the entropy: fine


@pytest.mark.parametrize(
    "section, message",
    [
        ({"d_model": 30, "n_heads": 4}, "multiple of n_heads"),
        ({"checkpoint_epochs": [0, 50]}, "must end at optim.epochs"),
        ({"checkpoint_epochs": [0, 4]}, "must end at optim.epochs"),
        ({"checkpoint_epochs": [0, 4, 2, 8]}, "strictly increasing"),
        ({"same_init_epochs": [3, 8]}, "same_init_epochs"),
        ({"same_init_epochs": [0, 4]}, "include the last one"),
        ({"seed_a": 3, "seed_b": 3}, "identical"),
        ({"eval_windows": 10000}, "exceeds train_windows"),
        ({"scheme": "same_order"}, "scheme"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"context": 0}, "context"),
        ({"optim": {"lr": -1}}, "lr"),
        ({"init_seeds": [0, 1]}, "unknown key"),
    ],
)
def test_config_errors_name_the_problem(section, message):
    with pytest.raises(ParamsError, match=message):
        validate_params({"language_model": section})
