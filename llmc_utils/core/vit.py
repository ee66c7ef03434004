"""A tiny vision transformer for the robustness experiment (paper Fig. 4), built from scratch (no external weights).

Paper Fig. 4 uses two ViTs trained with different learning rates and augmentations; here the same architecture at
toy size (28x28 Fashion-MNIST, 7x7 patches -> 16 tokens + a class token, width 32, 2 blocks), small enough to train
on a CPU within the stage's budget. Its weights are initialised inside trainer.train_model (seeded there, and
perturbed by trainer.perturb_init in the portability test).

Logical layers (llmc_utils.core.layers.logical_layers groups state-dict keys by module) follow the module structure, so
each Linear, LayerNorm, the patch embedding and the token parameters (class token + position embedding) is one layer:
  patch_embed, tokens, block<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2} for every block, norm, head
= 2 + 6 * depth + 2 logical layers (16 for depth 2), in forward order.

The model is an nn.Sequential (patch_embed, tokens, block0 .. block<depth-1>, cls, norm, head), so
evaluation.LayerEvaluator can cache the input of every child and re-run only from the block that holds a changed
layer: the robustness curves move one layer at a time, and a change in the last block or the head then costs a
fraction of a full forward pass (the same numbers).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from llmc_utils.core.config import PositiveInt, Section
from llmc_utils.core.transformer import Block


class ViTConfig(Section):
    patch: PositiveInt = 7  # must divide the image side
    dim: PositiveInt = 32
    depth: PositiveInt = 2
    heads: PositiveInt = 4  # must divide dim
    mlp_ratio: PositiveInt = 2


class Tokens(nn.Module):
    """The learned class token and position embedding: one logical layer named `tokens`."""

    def __init__(self, n_tokens: int, dim: int):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        cls = self.cls.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos


class PatchEmbed(nn.Conv2d):
    """Non-overlapping patches as tokens: a strided convolution, (N, C, H, W) -> (N, patches, dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(2).transpose(1, 2)


class ClassToken(nn.Module):
    """Keep the class token only: (N, tokens, dim) -> (N, dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class TinyViT(nn.Sequential):
    def __init__(self, cfg: ViTConfig, image_shape: tuple[int, int, int] = (1, 28, 28), n_classes: int = 10):
        channels, height, width = image_shape
        if height % cfg.patch or width % cfg.patch:
            raise ValueError(f"vit.patch = {cfg.patch} must divide the image size {height}x{width}")
        if cfg.dim % cfg.heads:
            raise ValueError(f"vit.heads = {cfg.heads} must divide vit.dim = {cfg.dim}")
        n_patches = (height // cfg.patch) * (width // cfg.patch)
        modules: OrderedDict[str, nn.Module] = OrderedDict(
            patch_embed=PatchEmbed(channels, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch),
            tokens=Tokens(n_patches + 1, cfg.dim),
        )
        for i in range(cfg.depth):
            modules[f"block{i}"] = Block(cfg.dim, cfg.heads, cfg.mlp_ratio)
        modules.update(cls=ClassToken(), norm=nn.LayerNorm(cfg.dim), head=nn.Linear(cfg.dim, n_classes))
        super().__init__(modules)  # classify from the class token
