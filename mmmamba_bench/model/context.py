"""What every layer of one stack needs for one forward call: RoPE tables, masks, cache offset, SSD backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmmamba_bench.ops.backends import SSDBackend


@dataclass
class ForwardContext:
    cos: torch.Tensor  # [B, 1, L, hd]
    sin: torch.Tensor  # [B, 1, L, hd]
    start: int  # cache offset of the first token of this call (0 without a cache)
    attn_mask: torch.Tensor | None  # [B, 1, L, start + L] bool (True = attend), or None when plain causal works
    token_mask: torch.Tensor | None  # [B, L] bool, False at left-padding positions; None when there is no padding
    backend: SSDBackend
