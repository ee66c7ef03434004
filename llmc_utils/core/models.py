"""Image classifiers WITHOUT normalization layers, as the paper trains them (so no BatchNorm statistics to re-fit),
and their BatchNorm variants for the normalization study (`cnn_bn`, `rescnn_bn`: a BatchNorm2d after every conv).

* `rescnn` (default profile): a small ResNet without normalization (stem, three basic blocks, linear head) = 10
  logical layers, at the cost per image of the plain `cnn` (see ResCNN).
* `cnn` (plain variant of the setup study): 6 conv + 3 linear = 9 logical layers, ReLU, strided convs instead of
  pooling; about 0.2M parameters at width 16. Accepts any square input (1x28x28 Fashion-MNIST, 3x32x32 CIFAR-10).
* `resnet18` (paper profile): torchvision resnet18 with norm_layer=nn.Identity, a 3x3 stride-1 CIFAR stem and no
  max-pool: 21 logical layers (conv1, 16 block convs, 3 downsample convs, fc), as in the paper.
* `vgg11` (paper appendix): the CIFAR-style VGG11 (8 conv + 1 linear = 9 logical layers) without BatchNorm.

Every parameterised module is one logical layer (llmc_utils.core.layers): weight and bias of one module go together. A
BatchNorm's weight and bias form a logical layer too; its running statistics are buffers that travel with it (the
`normalization` stage re-estimates them after interpolating: REPAIR's reset). Without normalization the state-dict
keys are those of the earlier plain models (the BN slots are parameter-free nn.Identity), so old checkpoints load.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

import llmc_utils  # noqa: F401  (applies the torchvision compatibility step before torchvision is imported)

ARCHS = ("cnn", "rescnn", "resnet18", "vgg11", "cnn_bn", "rescnn_bn")


def _norm(channels: int, norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm else nn.Identity()


def _after_stride2(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 2 - 3) // 2 + 1  # 3x3 conv, padding 1, stride 2
    return size


class CNN(nn.Sequential):
    """conv(w) conv(w,/2) conv(2w) conv(2w,/2) conv(4w) conv(4w,/2) -> fc(128) -> fc(64) -> fc(classes), ReLU;
    norm=True puts a BatchNorm2d bn<i> after conv<i> (arch `cnn_bn`: 15 logical layers). `depth` = stride-1 convs
    per stage before its strided conv (1 above; depth d gives 3 (d + 1) convs, numbered conv1, conv2, ... in order,
    so depth 1 keeps the keys of the 9-layer net).

    An nn.Sequential with named children (conv1..conv6, fc1..fc3), so the barrier engine can reuse the activations
    in front of a layer that an interpolation leaves unchanged (llmc_utils.stages.layerwise_barriers).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 16,
        norm: bool = False,
        depth: int = 1,
    ):
        w = width
        plan, cin = [], in_channels
        for cout in (w, 2 * w, 4 * w):
            plan += [(cin, cout, 1)] + [(cout, cout, 1)] * (depth - 1) + [(cout, cout, 2)]
            cin = cout
        children: dict[str, nn.Module] = {}
        for i, (cin, cout, stride) in enumerate(plan, start=1):
            children[f"conv{i}"] = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
            if norm:
                children[f"bn{i}"] = nn.BatchNorm2d(cout)
            children[f"relu{i}"] = nn.ReLU()
        side = _after_stride2(image_size, 3)
        children["flatten"] = nn.Flatten()
        children["fc1"], children["relu7"] = nn.Linear(4 * w * side * side, 128), nn.ReLU()
        children["fc2"], children["relu8"] = nn.Linear(128, 64), nn.ReLU()
        children["fc3"] = nn.Linear(64, num_classes)
        super().__init__(OrderedDict(children))
        # He init: with PyTorch's default (smaller) init this 9-layer net without normalization sits at loss ln(10)
        # for the first epochs; He-scaled weights keep the signal alive and training starts at once.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:  # every one has a bias
                    nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a 1x1 strided conv
    (followed by a BatchNorm2d with norm) when the shape changes, else the identity. Without norm, bn1 and bn2 are
    parameter-free identities."""

    def __init__(self, cin: int, cout: int, stride: int, norm: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1), _norm(cout, norm)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1), _norm(cout, norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            conv = nn.Conv2d(cin, cout, 1, stride=stride)
            self.shortcut = nn.Sequential(conv, nn.BatchNorm2d(cout)) if norm else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResCNN(nn.Sequential):
    """A small ResNet without normalization, the paper's architecture class at CPU size: stem conv(w, stride 2),
    three stages of one basic block (w, 2w stride 2, 4w stride 2), global average pool, linear head. Logical layers:
    stem, block1.conv1/conv2, block2.conv1/conv2/shortcut, block3.conv1/conv2/shortcut, fc = 10. The strided stem
    (as in ImageNet ResNets) keeps the cost per image at that of the plain 9-layer CNN.

    An nn.Sequential of blocks, so the barrier engine caches the input of every block and re-runs only from the
    block that holds the averaged layer. Initialization as for ResNets without normalization (Fixup's idea, Zhang
    et al. 2019): He init everywhere except the last conv of each residual branch, which starts at a tenth of its He
    scale, so that the residual sums do not grow with depth at the start of training. norm=True (arch `rescnn_bn`)
    puts a BatchNorm2d after every conv (stem `bn`, block bn1/bn2, shortcut.1): 19 logical layers. `depth` = basic
    blocks per stage (1 above; numbered block1, block2, ... in order, so depth 1 keeps the keys): 4 + 6 d layers.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, norm: bool = False, depth: int = 1
    ):
        w = width
        stem: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Conv2d(in_channels, w, 3, stride=2, padding=1))
        if norm:
            stem["bn"] = nn.BatchNorm2d(w)
        blocks: OrderedDict[str, BasicBlock] = OrderedDict()
        cin = w
        for stage, cout in enumerate((w, 2 * w, 4 * w)):
            for i in range(depth):  # the first block of stages 2 and 3 halves the resolution
                blocks[f"block{len(blocks) + 1}"] = BasicBlock(cin, cout, 2 if stage and not i else 1, norm)
                cin = cout
        super().__init__(
            OrderedDict(
                **stem,
                relu=nn.ReLU(),
                **blocks,
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(4 * w, num_classes),
            )
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:  # every one has a bias
                    nn.init.zeros_(module.bias)
        if not norm:  # with BatchNorm the scale of conv2 is normalised away: nothing to damp
            for block in blocks.values():
                with torch.no_grad():
                    block.conv2.weight.mul_(0.1)


def resnet18(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Module:
    """torchvision resnet18 without normalization, CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    from torchvision.models import resnet18 as tv_resnet18

    if width != 64:
        raise ValueError(f"resnet18 has a fixed width of 64, got width={width}")
    model = tv_resnet18(num_classes=num_classes, norm_layer=nn.Identity)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class VGG11(nn.Module):
    """CIFAR-style VGG11 without BatchNorm: 8 conv layers (widths 1,2,4,4,8,8,8,8 x width/1), max-pools, 1 linear."""

    PLAN: tuple[int | Literal["M"], ...] = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in self.PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28px inputs still reach 1x1
            else:
                layers += [nn.Conv2d(cin, item * width, 3, padding=1), nn.ReLU()]
                cin = item * width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, **kw) -> nn.Module:
    """The model named `name` for images (in_channels, image_size, image_size); kw: width, depth (cnn and rescnn
    only: the paper's resnet18 and vgg11 have a fixed depth)."""
    depth = kw.get("depth", 1)
    if depth != 1 and name not in ("cnn", "cnn_bn", "rescnn", "rescnn_bn"):
        raise ValueError(f"{name} has a fixed depth; depth={depth} applies to cnn and rescnn only")
    if name in ("cnn", "cnn_bn"):
        return CNN(in_channels, num_classes, image_size, width=kw.get("width", 16), norm=name == "cnn_bn", depth=depth)
    if name in ("rescnn", "rescnn_bn"):
        return ResCNN(in_channels, num_classes, width=kw.get("width", 16), norm=name == "rescnn_bn", depth=depth)
    if name == "resnet18":
        return resnet18(in_channels, num_classes, width=kw.get("width", 64))
    if name == "vgg11":
        return VGG11(in_channels, num_classes, width=kw.get("width", 64))
    raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}")


def has_normalization(model: nn.Module) -> bool:
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    return any(isinstance(m, norm_types) for m in model.modules())


class MLP(nn.Sequential):
    """flatten -> fc1 -> ReLU -> ... -> fc{L}, no normalization: one logical layer per Linear (weight + bias).
    Used by the federated clients and the subspace-perturbation pair; nn.Sequential, so the barrier engine caches
    activations in front of each layer."""

    def __init__(self, in_features: int, hidden: Sequence[int], n_classes: int):
        modules: dict[str, nn.Module] = {"flatten": nn.Flatten()}
        widths = [in_features, *hidden]
        for i, (w_in, w_out) in enumerate(zip(widths, widths[1:]), start=1):
            modules[f"fc{i}"], modules[f"relu{i}"] = nn.Linear(w_in, w_out), nn.ReLU()
        modules[f"fc{len(widths)}"] = nn.Linear(widths[-1], n_classes)
        super().__init__(OrderedDict(modules))
