"""Char tokenizer, windows, the tiny GPT (shapes, causal masking, logical layers), pair training and config errors."""

import pytest
import torch

from llmc_utils import language_model as lm
from llmc_utils.config import ParamsError, validate_params
from llmc_utils.layers import logical_layers

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
    per_block = ["ln1", "attn.qkv", "attn.proj", "ln2", "mlp.fc", "mlp.proj"]
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


def test_pair_trains_with_core_trainer_and_barriers_cover_every_layer(tmp_path):
    cfg = lm.LanguageModelConfig(text_file=None, max_chars=3000, context=8, d_model=8, n_heads=2, n_blocks=1,
                                 train_windows=32, eval_windows=8, init_seeds=(0, 1), data_seeds=(0, 1),
                                 optim=dict(epochs=1, batch_size=16, lr=0.1, weight_decay=0.0),
                                 checkpoint_epochs=[0, 1])
    prepared = lm.prepare(cfg)
    paths = lm.train_pair(cfg, prepared, tmp_path)
    assert [p.name for p in paths["A"]] == ["epoch_0000.pt", "epoch_0001.pt"]
    barriers, endpoints = lm.barriers_over_training(cfg, prepared, paths)
    # 2 checkpoints x 2 bases x (full + 10 layers) x 2 splits x 2 metrics
    assert len(barriers) == 2 * 2 * 11 * 2 * 2 and barriers.layer_set.iloc[0] == "full"
    assert set(endpoints.model) == {"A", "B"} and len(endpoints) == 2 * 2 * 2
    full = barriers[barriers.layer_set == "full"]
    for _, rows in full.groupby(["epoch", "split", "metric"]):
        assert rows.barrier.nunique() == 1  # the full midpoint is the same model for either base
    assert lm.train_pair(cfg, prepared, tmp_path) == paths  # finished checkpoints are reused, not retrained


@pytest.mark.parametrize("section, message", [
    ({"d_model": 30, "n_heads": 4}, "multiple of n_heads"),
    ({"checkpoint_epochs": [0, 50]}, "past optim.epochs"),
    ({"init_seeds": [3, 3], "data_seeds": [1, 1]}, "identical"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"context": 0}, "context"),
    ({"optim": {"lr": -1}}, "lr"),
    ({"vocab": 10}, "unknown key"),
])
def test_config_errors_name_the_problem(section, message):
    with pytest.raises(ParamsError, match=message):
        validate_params({"language_model": section})
