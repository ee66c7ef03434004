"""Bad parameters fail before compute, naming the key, the value and what is allowed; the code's defaults are
params.yaml's values, so a section a file leaves out runs as the committed default run does."""

import pytest
import yaml
from pydantic import BaseModel

from llmc_utils.core.config import ParamsError, read_params_file
from llmc_utils.pipeline.params import load_params, validate_params
from llmc_utils.pipeline.registry import sections
from llmc_utils.pipeline.stage import setup


def errors_of(raw):
    with pytest.raises(ParamsError) as exc:
        validate_params(raw, source="params.yaml")
    return str(exc.value)


def test_unknown_dataset_names_key_value_and_choices():
    msg = errors_of({"data": {"dataset": "mnist"}})
    assert "data.dataset" in msg and "'mnist'" in msg and "fashion_mnist" in msg and "cifar10" in msg


def test_unknown_key_lists_allowed_keys():
    msg = errors_of({"data": {"datset": "cifar10"}})
    assert "unknown key data.datset" in msg and "dataset, root, download" in msg


def test_unknown_section():
    msg = errors_of({"trian_pairs": {}})
    assert "unknown section 'trian_pairs'" in msg and "train_pairs" in msg


def test_negative_size_rejected():
    msg = errors_of({"runtime": {"num_threads": -1}})
    assert "runtime.num_threads = -1" in msg and "greater than 0" in msg


def test_all_problems_reported_at_once():
    msg = errors_of({"runtime": {"num_threads": 0, "device": "tpu"}})
    assert "runtime.num_threads" in msg and "runtime.device" in msg


def test_alpha_outside_unit_interval_rejected():
    from pydantic import ValidationError

    from llmc_utils.core.config import Alpha, Section

    class WithAlpha(Section):
        alpha: Alpha = 0.5

    with pytest.raises(ValidationError, match="less than or equal to 1"):
        WithAlpha(alpha=1.5)


@pytest.mark.parametrize("name", list(sections()))
def test_every_registered_section_has_valid_defaults(name):
    from llmc_utils.pipeline.params import section_model

    section_model(name)()  # the registered class exists and its defaults validate


# Keys whose code default may differ from params.yaml. setup_study.variants is the study's design, a large mapping
# recorded once in params.yaml (which the study reads); a copy in the code would write the design twice.
DEFAULTS_EXEMPT = {"setup_study.variants": "the study's design is recorded once, in params.yaml"}


def default_differences(section: BaseModel, committed: dict, prefix: str) -> list[str]:
    """Every key that `committed` (a section of params.yaml) sets to another value than `section` (a model holding
    its code defaults) has, with both values; nested models are compared key by key, so a nested key that params.yaml
    leaves out keeps its code default and is not a difference."""
    dumped = section.model_dump(mode="json")
    out = []
    for key, value in committed.items():
        where = f"{prefix}.{key}"
        if where in DEFAULTS_EXEMPT:
            continue
        if key not in dumped:
            out.append(f"{where}: params.yaml {value!r}, the code has no such key")
        elif isinstance(getattr(section, key), BaseModel) and isinstance(value, dict):
            out.extend(default_differences(getattr(section, key), value, where))
        elif dumped[key] != value:
            out.append(f"{where}: code {dumped[key]!r}, params.yaml {value!r}")
    return out


def test_code_defaults_equal_params_yaml(root):
    """One source of defaults: every section's code default equals params.yaml's value (bar DEFAULTS_EXEMPT), so
    validate_params fills a left-out section or key with what the committed default run uses."""
    committed = read_params_file(root / "params.yaml")
    assert "extends" not in committed, "params.yaml is the root profile: it extends no other file"
    for key in DEFAULTS_EXEMPT:  # an exemption names a key params.yaml sets
        section, field = key.split(".", 1)
        assert field in committed.get(section, {}), f"exempt key {key} ({DEFAULTS_EXEMPT[key]}) is not in params.yaml"
    problems = []
    for name, model in sections().items():
        problems.extend(default_differences(model(), committed.get(name) or {}, name))
    assert not problems, "code defaults differ from params.yaml:\n  " + "\n  ".join(problems)


def test_default_check_reports_nested_differences():
    """The comparison reaches into nested models and reports both values of every differing key."""
    from llmc_utils.stages.train_pairs import TrainPairsConfig

    cfg = TrainPairsConfig()
    committed = {"width": cfg.width + 1, "optim": {"epochs": cfg.optim.epochs + 1, "lr": cfg.optim.lr}}
    assert default_differences(cfg, committed, "train_pairs") == [
        f"train_pairs.width: code {cfg.width}, params.yaml {cfg.width + 1}",
        f"train_pairs.optim.epochs: code {cfg.optim.epochs}, params.yaml {cfg.optim.epochs + 1}",
    ]


def test_committed_params_files_validate(root):
    from llmc_utils.pipeline.params import load_profile

    load_params(root / "params.yaml")
    load_params(root / "profiles" / "tiny.yaml")
    for path in sorted((root / "profiles").glob("*.yaml")):  # profiles extend params.yaml
        validate_params(load_profile(path), source=str(path))


def test_setup_fails_before_compute(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"data": {"dataset": "imagenet"}}))
    with pytest.raises(ParamsError, match="data.dataset = 'imagenet'"):
        setup("data", bad, tmp_path / "ws", verbose=False)
    assert not (tmp_path / "ws").exists()


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
