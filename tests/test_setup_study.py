"""The setup study: variants as validated train_pairs setups, the per-variant summary (premise, single layers,
verdicts), the rule that chooses the default pair from it, and one real (tiny) pair end to end."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from pydantic import ValidationError

from llmc_utils.pipeline import setup_study
from llmc_utils.pipeline.report import ReportConfig
from llmc_utils.stages.train_pairs import TrainPairsConfig

CFG = ReportConfig()


def row(
    variant,
    repetition,
    full,
    single,
    error=0.5,
    scheme="same_init_different_order",
    tflop=1.0,
    seconds=30.0,
    status="ok",
):
    base = dict(
        variant=variant,
        levers=f"lever of {variant}",
        repetition=repetition,
        scheme=scheme,
        train_tflop_per_pair=tflop,
        status=status,
        message="" if status == "ok" else "diverged at epoch 3",
    )
    if status != "ok":
        return base
    cells = {
        f"{kind}/30/{b}/layer{i}": (0.001 if kind == "cell_se" else single)
        for kind in ("cell", "cell_se")
        for b in ("A", "B")
        for i in range(3)
    }  # barriers.cell_metrics
    return dict(
        base,
        train_seconds=seconds,
        full_barrier_train_loss_last=full,
        max_abs_single_layer_barrier=single,
        max_abs_single_layer_barrier_last=single,
        own_train_error_A_last=error,
        own_train_error_B_last=error / 2,
        full_barrier_train_loss_last_se=0.01,
        last_epoch=30,
        **cells,
    )


def table(*variants):
    """Three pairs of each (name, full, single, kwargs) with a little spread."""
    return pd.DataFrame(
        [
            row(name, r, full + jitter, single + jitter / 10, **kw)
            for name, full, single, kw in variants
            for r, jitter in enumerate((0.0, 0.05, -0.05))
        ]
    )


def test_summary_judges_the_premise_and_reports_the_single_layers_per_variant():
    t = table(
        ("regime", 1.8, 0.02, {}),
        ("flat", 0.2, 0.02, {}),
        ("unfit", 1.8, 0.02, dict(error=4.0)),
        ("regime_layers_bad", 1.8, 0.9, {}),
    )
    t = pd.concat([t, pd.DataFrame([row("flat", 3, 0, 0, status="diverged")])], ignore_index=True)
    summary = setup_study.summarize(t, CFG).set_index("variant")
    assert list(summary.premise_holds) == [True, False, False, True]
    assert summary.loc["flat", "n"] == 3 and summary.loc["flat", "diverged"] == 1  # not a fourth value
    assert summary.loc["unfit", "worst_own_train_error"] == 4.0
    assert summary.loc["regime", "full_barrier_low"] > CFG.regime_barrier
    # the single layers are reported beside the premise, whatever they give, and never enter the choice
    assert summary.loc["regime_layers_bad", "max_single_layer_barrier"] == pytest.approx(0.9)
    assert summary.loc["regime", "max_single_layer_barrier_high"] < CFG.single_layer_tolerance


def test_rule_prefers_same_init_then_the_cheapest_within_the_budget():
    t = table(
        ("same_cheap", 1.8, 0.02, dict(tflop=2.0)),
        ("same_dear", 1.9, 0.02, dict(tflop=5.0)),
        ("diff_cheaper", 2.2, 0.02, dict(scheme="different_init", tflop=1.0)),
        ("flat_cheapest", 0.1, 0.02, dict(tflop=0.5)),
    )
    chosen = setup_study.summarize(t, CFG, pair_budget_s=60).set_index("variant").chosen
    assert chosen.to_dict() == {"same_cheap": "default", "same_dear": "", "diff_cheaper": "", "flat_cheapest": ""}
    # no same-init variant in the regime: the cheapest different-init one; over the budget: the faithful profile
    only_diff = table(("diff", 2.2, 0.02, dict(scheme="different_init", seconds=90.0)), ("flat", 0.1, 0.02, {}))
    assert setup_study.summarize(only_diff, CFG, pair_budget_s=60).set_index("variant").chosen["diff"] == "faithful"
    nothing = table(("flat", 0.1, 0.02, {}))
    assert set(setup_study.summarize(nothing, CFG).chosen) == {""}
    # equal cost: the larger margin on the fit decides
    tie = table(("loose_fit", 1.8, 0.02, dict(tflop=2.0, error=1.8)), ("tight_fit", 1.8, 0.02, dict(tflop=2.0)))
    assert setup_study.summarize(tie, CFG).set_index("variant").chosen.to_dict() == {
        "loose_fit": "",
        "tight_fit": "default",
    }
    # a variant one of whose pairs collapsed cannot be the default (the pipeline would stop), however cheap
    fragile = pd.concat([t, pd.DataFrame([row("same_cheap", 3, 0, 0, status="diverged")])], ignore_index=True)
    assert setup_study.summarize(fragile, CFG).set_index("variant").chosen["same_dear"] == "default"


def test_figure_has_three_panels():
    t = table(("regime", 1.8, 0.02, {}), ("flat", 0.2, 0.02, {}))
    fig = setup_study.figure(setup_study.summarize(t, CFG), CFG)
    assert len(fig.axes) == 3


def test_variants_are_train_pairs_setups_validated_before_any_training():
    cfg = setup_study.SetupStudyConfig(
        variants={"base": {}, "plain_step": {"arch": "cnn", "optim": {"schedule": "step"}}}
    )
    vcfg = setup_study.variant_pair_config(TrainPairsConfig(), cfg, "plain_step")
    assert (vcfg.arch, vcfg.optim.schedule, vcfg.optim.lr) == ("cnn", "step", 0.05)  # optim merged key by key
    assert vcfg.train_subset == 1500 and vcfg.checkpoint_epochs == [0, vcfg.optim.epochs]
    assert setup_study.levers(cfg, "plain_step") == "arch=cnn, optim.schedule=step"
    assert setup_study.levers(cfg, "base") == "(base)"
    with pytest.raises(ValidationError, match="variant 'bad' is not a valid train_pairs setup.*scheme"):
        setup_study.SetupStudyConfig(variants={"bad": {"scheme": "same_order"}})
    with pytest.raises(ValidationError, match="variant 'typo'.*optim.shedule"):
        setup_study.SetupStudyConfig(variants={"typo": {"optim": {"shedule": "step"}}})
    with pytest.raises(ValidationError):
        setup_study.SetupStudyConfig(repetitions=[0, 1])  # fewer than 3 pairs bound nothing


def test_flop_count_grows_with_width():
    small, wide = (
        setup_study.variant_pair_config(
            TrainPairsConfig(), setup_study.SetupStudyConfig(variants={"v": {"width": w}}), "v"
        )
        for w in (8, 16)
    )
    f_small, f_wide = (setup_study.train_flop_per_image(c, (1, 28, 28), 10) for c in (small, wide))
    assert 2.5 < f_wide / f_small < 4.5  # convolutions scale with width^2, the stem and head less


@pytest.mark.parametrize("at_chance", [False, True])
def test_one_tiny_pair_end_to_end(tmp_path, monkeypatch, at_chance):
    from llmc_utils.core import trainer
    from llmc_utils.stages.layerwise_barriers import LayerwiseBarriersConfig
    from tests.test_pairs import fake_images

    def guard(error, n_classes, desc, epoch):  # random labels: whether the real guard fires is up to the noise
        if at_chance:
            raise trainer.TrainingDiverged(f"{desc}: error {error:.1f} % at epoch {epoch} is at chance level")

    monkeypatch.setattr(trainer, "check_not_chance", guard)
    cfg = setup_study.SetupStudyConfig(
        base=dict(arch="rescnn", width=2, train_subset=32, optim=dict(epochs=2, batch_size=8, lr=0.01)),
        variants={"halves": {"scheme": "disjoint_halves"}},
    )
    barrier_cfg = LayerwiseBarriersConfig(train_subset=16, test_subset=16, alphas=[0.5])
    out = setup_study.pair_row(
        "halves", 0, cfg, TrainPairsConfig(), barrier_cfg, fake_images(), tmp_path, "cpu", lambda it, **kw: it
    )
    assert out["images_per_model"] == 16 and out["steps_per_model"] == 4 and out["scheme"] == "disjoint_halves"
    assert out["train_tflop_per_pair"] > 0
    if at_chance:  # recorded with its reason, never measured
        assert out["status"] == "diverged" and "chance" in out["message"] and "full_barrier_train_loss_last" not in out
    else:
        assert out["status"] == "ok" and out["train_seconds"] > 0
        assert 0 <= out["own_train_error_A_last"] <= 100 and out["last_epoch"] == 2
        assert {"full_barrier_train_loss_last", "max_abs_single_layer_barrier_last"} <= set(out)


def test_load_reads_the_committed_table_when_the_workspace_has_none(tmp_path):
    committed = setup_study.load(tmp_path)
    assert {"variant", "levers", "repetition", "status", "full_barrier_train_loss_last"} <= set(committed.columns)
    assert committed.groupby("variant").repetition.nunique().min() >= 3
    assert committed.variant.nunique() >= 8


def test_the_default_pair_is_the_variant_the_rule_chose(root):
    """params.yaml's train_pairs is the setup the committed study's rule picked (everything but the checkpoint list
    and the curve sizes, which the study does not set)."""
    from llmc_utils.pipeline.params import load_params

    params = load_params(root / "params.yaml")
    pair_cfg, cfg = params["train_pairs"], params["setup_study"]
    summary = setup_study.summarize(setup_study.load(root), params["report"], cfg.pair_budget_s)
    chosen = summary[summary.chosen == "default"]
    assert len(chosen) == 1, summary[["variant", "premise_holds", "chosen"]]
    picked = setup_study.variant_pair_config(pair_cfg, cfg, chosen.variant.iloc[0])
    ignore = {"checkpoint_epochs", "curve_train_subset", "curve_test_subset"}
    assert picked.model_dump(exclude=ignore) == pair_cfg.model_dump(exclude=ignore)
