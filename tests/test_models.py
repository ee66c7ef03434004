"""Architectures without normalization: logical layer counts known from their definitions."""

import pytest
import torch

from llmc_utils.core.layers import logical_layers
from llmc_utils.core.models import build_model, has_normalization


def test_resnet18_has_21_logical_layers_and_no_normalization():
    model = build_model("resnet18", 3, 10, 32)
    layers = logical_layers(model.state_dict())
    assert len(layers) == 21  # stem + 16 block convs + 3 downsample convs + fc
    assert list(layers)[0] == "conv1" and list(layers)[-1] == "fc"
    assert sum("downsample" in name for name in layers) == 3
    assert not has_normalization(model)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_cnn_layers_and_shapes(shape):
    channels, size = shape
    model = build_model("cnn", channels, 10, size, width=4)
    layers = logical_layers(model.state_dict())
    assert list(layers) == [f"conv{i}" for i in range(1, 7)] + ["fc1", "fc2", "fc3"]
    assert all(len(keys) == 2 for keys in layers.values())  # weight and bias together
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 10)
    assert not has_normalization(model)


def test_vgg11_without_batchnorm():
    model = build_model("vgg11", 3, 10, 32, width=4)
    assert len(logical_layers(model.state_dict())) == 9  # 8 conv + 1 linear
    assert not has_normalization(model)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert build_model("vgg11", 1, 10, 28, width=4)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="mlp"):
        build_model("mlp", 1, 10, 28)


@pytest.mark.parametrize(
    "arch, depth, layers", [("cnn", 1, 9), ("cnn", 2, 12), ("rescnn", 1, 10), ("rescnn", 2, 16), ("rescnn_bn", 2, 31)]
)
def test_depth_adds_layers_and_keeps_the_names_of_depth_1(arch, depth, layers):
    from llmc_utils.core.layers import logical_layers

    model = build_model(arch, 1, 10, 28, width=4, depth=depth)
    names = list(logical_layers(model.state_dict()))
    assert len(names) == layers and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    if depth == 1:  # the default keeps the layer names of the nets committed before `depth` existed
        assert names == (
            [f"conv{i}" for i in range(1, 7)] + ["fc1", "fc2", "fc3"]
            if arch == "cnn"
            else [
                "stem",
                "block1.conv1",
                "block1.conv2",
                "block2.conv1",
                "block2.conv2",
                "block2.shortcut",
                "block3.conv1",
                "block3.conv2",
                "block3.shortcut",
                "fc",
            ]
        )
    with pytest.raises(ValueError, match="fixed depth"):
        build_model("vgg11", 3, 10, 32, width=8, depth=depth + 1)
