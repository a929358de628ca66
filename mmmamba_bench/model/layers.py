"""Building blocks shared by both stacks: RMSNorm, the SwiGLU MLP and rotary position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmmamba_bench.config import StackConfig
from mmmamba_bench.model import fused


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps), computed in float32 and cast back, then times ``weight`` (InternLM2)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.applies(x):
            return fused.rms_norm(x, self.weight, self.eps)
        return self.weight * rms_normalize(x, self.eps)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dimension in (at least) float32; returns x's dtype."""
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cd)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class SwiGLU(nn.Module):
    """feed_forward: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, intermediate, bias=False)
        self.w3 = nn.Linear(hidden, intermediate, bias=False)
        self.w2 = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.applies(x):
            return self.w2(fused.swiglu(self.w1(x), self.w3(x)))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Rotary:
    """Rotate-half RoPE tables for one stack; ``rope_scaling`` (dynamic NTK or linear) only where the family applies it.

    Which rule follows the checkpoint's released code (``ChatConfig.applies_rope_scaling``): HoVLE's InternLM2
    attention applies ``rope_scaling``; mmMamba's attention layers build their rotary embedding from ``rope_theta``
    alone, so for mmMamba (``apply_scaling=False``) the tables are the plain ones at every length.

    Dynamic NTK (InternLM2 / HF): when the sequence seen so far is longer than ``max_position_embeddings``,
    base = theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (hd / (hd - 2)). Below that length the tables
    are the plain ones, so cached decoding equals a full forward pass exactly; beyond it the reference
    implementation also re-derives the base from the current length at each step (keys already cached keep
    their earlier rotation), which is what this reproduces.
    """

    def __init__(self, cfg: StackConfig, apply_scaling: bool):
        self.head_dim = cfg.head_dim
        self.theta = float(cfg.rope_theta)
        self.max_pos = cfg.max_position_embeddings
        scaling = (cfg.rope_scaling or {}) if apply_scaling else {}
        self.kind = scaling.get("type", scaling.get("rope_type"))  # None: plain theta
        self.factor = float(scaling.get("factor", 1.0))
        self.ignored = cfg.rope_scaling is not None and not apply_scaling

    @property
    def label(self) -> str:
        """The rule in use, for ``CodePath.rope``: "theta", "dynamic x2.0", "linear x4.0" or "theta (rope_scaling
        ignored)"."""
        if self.kind is not None:
            return f"{self.kind} x{self.factor:g}"
        return "theta (rope_scaling ignored)" if self.ignored else "theta"

    def inv_freq(self, seq_len: int, device: torch.device) -> torch.Tensor:
        base = self.theta
        hd = self.head_dim
        if self.kind == "dynamic" and seq_len > self.max_pos:
            base = base * ((self.factor * seq_len / self.max_pos) - (self.factor - 1)) ** (hd / (hd - 2))
        exponents = torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd
        return 1.0 / (base ** exponents)  # [hd / 2], float64

    def cos_sin(self, position_ids: torch.Tensor, seq_len: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: [B, L] -> cos, sin: [B, 1, L, hd] in ``dtype`` (computed in float64, then cast)."""
        pos = position_ids.to(torch.float64)
        if self.kind == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * self.inv_freq(seq_len, position_ids.device)  # [B, L, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, L, hd]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, L, hd]; cos / sin: [B, 1, L, hd]."""
    return x * cos + rotate_half(x) * sin
