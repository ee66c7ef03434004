"""Bad parameters fail before compute, naming the key, the value and what is allowed."""

import pytest
import yaml

from llmc_utils.core.config import ParamsError
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
