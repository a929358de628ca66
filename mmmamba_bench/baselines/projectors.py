"""Vision-to-language projectors of the Table-2 baselines, in plain ``torch.nn`` (each is a few layers).

- ``mlp2x_gelu`` (LLaVA-1.5 / LLaVA-Phi): Linear, GELU, Linear.
- ``fused_gelu_mlp`` (Prismatic / Cobra, over the concatenated DINOv2 + SigLIP features): Linear to 4x the input
  width, GELU, Linear, GELU, Linear.
- ``linear`` (VisualRWKV): one bias-free Linear.
- ``ldp`` (MobileVLM's lightweight downsample projector, Chu et al. 2023, Sec. 3.4): Linear, GELU, Linear to the
  LM width, then two MobileNetV3 inverted-residual blocks over the patch grid (expansion 1, so no expand conv; 3x3
  depthwise conv, LayerNorm over channels, hardswish, squeeze-excite with ReLU and hard-sigmoid at a quarter of the
  channels rounded to 8, 1x1 projection, LayerNorm), the first with stride 1 and a residual, the second with stride
  2: a 24 x 24 grid becomes 12 x 12 (576 -> 144 tokens).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: to a multiple of ``divisor``, never below 90% of ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        squeeze = _make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        s = F.adaptive_avg_pool2d(x, 1)  # [B, C, 1, 1]
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block with expansion 1: depthwise 3x3 (+LN, hardswish), squeeze-excite, 1x1 projection (+LN)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)
        self.norm1 = LayerNorm2d(channels)
        self.se = SqueezeExcite(channels)
        self.project = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm2 = LayerNorm2d(channels)
        self.residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W] -> [B, C, H/stride, W/stride]
        y = F.hardswish(self.norm1(self.depthwise(x)))
        y = self.norm2(self.project(self.se(y)))
        return x + y if self.residual else y


class LDP(nn.Module):
    def __init__(self, vision_width: int, llm_width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
        self.blocks = nn.Sequential(InvertedResidual(llm_width, 1), InvertedResidual(llm_width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, N, Cv], N = grid^2 -> [B, ceil(grid/2)^2, C]
        B, N, _ = x.shape
        grid = math.isqrt(N)
        if grid * grid != N:
            raise ValueError(f"LDP needs a square grid of patch tokens, got {N}")
        x = self.mlp(x).transpose(1, 2).reshape(B, -1, grid, grid)  # [B, C, grid, grid]
        return self.blocks(x).flatten(2).transpose(1, 2)


def build_projector(kind: str, vision_width: int, llm_width: int) -> nn.Module:
    """``[B, N, vision_width]`` -> ``[B, N', llm_width]`` (N' = N except ``ldp``: a quarter)."""
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
    if kind == "fused_gelu_mlp":
        mid = 4 * vision_width
        return nn.Sequential(nn.Linear(vision_width, mid), nn.GELU(), nn.Linear(mid, llm_width), nn.GELU(),
                             nn.Linear(llm_width, llm_width))
    if kind == "linear":
        return nn.Linear(vision_width, llm_width, bias=False)
    if kind == "ldp":
        return LDP(vision_width, llm_width)
    raise ValueError(f"unknown projector {kind!r}; choose from mlp2x_gelu, fused_gelu_mlp, linear, ldp")
