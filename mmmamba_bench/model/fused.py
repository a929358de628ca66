"""Fused element-wise kernels for a bf16 prefill on CUDA, switched on only inside :func:`fused_prefill`.

The batched generation path (:mod:`mmmamba_bench.fast.batched`) runs the model's own forward for its prefill; at
Table-1 sizes (16 questions x 1.85K tokens) about half of that time is element-wise work between the GEMMs (RMSNorm
in float32 over several passes, the width-2 conv built from a shifted copy, the SwiGLU gate, the gated per-head
norm). Inside ``with fused_prefill():`` those modules call one Triton kernel each instead (the kernels of
:mod:`mmmamba_bench.fast.batch_triton_ops`, which round like the eager ops and are tested against their plain twins).
Only for bf16 CUDA tensors without autograd; everywhere else, and outside the context, the plain ops run.
"""

from __future__ import annotations

import contextlib
import threading

import torch

_state = threading.local()


@contextlib.contextmanager
def fused_prefill(enabled: bool = True):
    """Let bf16 CUDA forward passes (no autograd) in this block use the fused element-wise kernels."""
    old = getattr(_state, "on", False)
    _state.on = enabled
    try:
        yield
    finally:
        _state.on = old


def applies(x: torch.Tensor) -> bool:
    return (getattr(_state, "on", False) and x.is_cuda and x.dtype == torch.bfloat16
            and not torch.is_grad_enabled())


def _ops():
    from mmmamba_bench.fast.batch_triton_ops import TritonBatchOps

    return TritonBatchOps()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x [..., H] (the model's roundings)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty_like(x2)
    _ops().add_rms_norm(x2, None, weight, eps, out)
    return out.view(x.shape)


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SiLU(a) * b."""
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    _ops().swiglu(a, b, out)
    return out


def conv_silu(proj: torch.Tensor, C: int, token_mask: torch.Tensor | None, prev: torch.Tensor | None,
              conv_w: torch.Tensor, conv_b: torch.Tensor) -> torch.Tensor:
    """SiLU(width-2 causal conv of the first C channels of proj [B, L, N], padding zeroed by token_mask [B, L],
    ``prev`` [B, C] the token before the chunk) -> [B, L, C]."""
    B, L, N = proj.shape
    out = torch.empty(B, L, C, dtype=proj.dtype, device=proj.device)
    mask = None if token_mask is None else token_mask.to(proj.dtype).contiguous()
    _ops().conv_silu_prefill(proj.contiguous().view(B * L, N), L, mask, prev, conv_w.view(C, 2), conv_b,
                             out.view(B * L, C))
    return out


def gated_norm(y: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm_per_head(y) * weight * SiLU(g); y [B, L, nh, hd], g [B, L, G] (a column slice of the projection)."""
    B, L = y.shape[:2]
    y2 = y.reshape(B * L, -1).contiguous()
    g2 = g.reshape(B * L, -1)  # a view with the projection's row stride (a copy if it cannot be one)
    if g2.stride(1) != 1:
        g2 = g2.contiguous()
    out = torch.empty_like(y2)
    _ops().gated_norm(y2, g2, weight, eps, out)
    return out.view(B, L, -1)
