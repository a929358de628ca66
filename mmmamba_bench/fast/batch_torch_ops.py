"""The element-wise and attention ops of the BATCHED decode step, in plain PyTorch.

These are the reference twins of :mod:`.batch_triton_ops` (same names, same arguments) and the ops the batched
step uses where Triton cannot run (CPU, or a dtype other than bf16). The projections are not here: the batched
step runs them as cuBLAS / CPU GEMMs (``torch.mm``), reading every weight once for all rows.

Every op works on preallocated row-major buffers with one row per sequence (shape [B, ...]), reproduces the eager
model's roundings (a bf16 model rounds after every op), and never reads a value on the host, so a step built
from them can be captured in a CUDA graph. Shapes: H hidden, C conv channels (2 nkv + nh) hd, G = nh hd, I the
MLP width, T the cache capacity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmmamba_bench.model.layers import rms_normalize
from mmmamba_bench.ops.ssd import ssd_step


def add_rms_norm(x, delta, norm_w, eps, out) -> None:
    """x += delta (when given; the residual add), then out = RMSNorm(x). x, delta, out: [B, H]."""
    if delta is not None:
        x.copy_(x + delta)
    out.copy_(norm_w * rms_normalize(x, eps))  # the model's RMSNorm (float32, or float64 for a float64 model)


def mamba_post(proj, conv_state, conv_w, conv_b, dt_bias, xbc_out, dt_out) -> None:
    """The in-projection's epilogue: width-2 causal conv + SiLU on [v|k|q], softplus on dt; updates conv_state.

    proj [B, C + G + nh] (the ``wvkqgdt`` output); conv_state [B, C]; conv_w [C, 2] (tap 0 on the previous token);
    conv_b [C]; dt_bias [nh] -> xbc_out [B, C], dt_out [B, nh] float32.
    """
    C, nh = conv_state.shape[1], dt_out.shape[1]
    xbc = proj[:, :C]
    conv = xbc * conv_w[:, 1] + conv_state * conv_w[:, 0] + conv_b
    conv_state.copy_(xbc)
    xbc_out.copy_(F.silu(conv))
    dt_out.copy_(F.softplus(proj[:, proj.shape[1] - nh:].to(dt_out.dtype) + dt_bias.to(dt_out.dtype)))


def conv_silu_prefill(proj, L: int, mask, prev, conv_w, conv_b, out) -> None:
    """A prefill chunk's conv: SiLU(width-2 causal conv) of the first C channels of proj [B L, N] (rows of B
    sequences of L tokens), left padding zeroed by mask [B, L] (0 / 1 in proj's dtype; None: no padding), prev
    [B, C] the token before the chunk (None: zeros) -> out [B L, C]."""
    from mmmamba_bench.model.mamba2 import causal_conv_width2

    BL, N = proj.shape
    B, C = BL // L, out.shape[1]
    xbc = proj.view(B, L, N)[..., :C]
    if mask is not None:
        xbc = xbc * mask[..., None]
    out.copy_(F.silu(causal_conv_width2(xbc, conv_w.view(C, 1, 2), conv_b, prev)).reshape(BL, C))


def ssm_step(xbc, dt, A_log, state, y_out, nkv: int) -> None:
    """One SSD step for every row and head; state [B, nh, p, n] (float32) updated in place; y_out [B, nh p]."""
    B, nh, p, n = state.shape
    rep = nh // nkv
    v = xbc[:, :nkv * p].reshape(B, nkv, p).repeat_interleave(rep, 1)
    k = xbc[:, nkv * p:nkv * (p + n)].reshape(B, nkv, n).repeat_interleave(rep, 1)
    q = xbc[:, nkv * (p + n):].reshape(B, nh, n)
    A = -torch.exp(A_log.to(state.dtype))
    y_out.copy_(ssd_step(state, v, dt, A, k, q).reshape(B, -1))


def gated_norm(y, g, gate_w, eps, z_out) -> None:
    """z = RMSNorm_per_head(y) * gate_w * SiLU(g). y [B, G]; g [B, G] (may be a strided view); z_out [B, G]."""
    B, hd = y.shape[0], gate_w.shape[0]
    z = rms_normalize(y.view(B, -1, hd), eps) * gate_w
    z = z * F.silu(g.reshape(B, -1, hd))
    z_out.copy_(z.reshape(B, -1))


def swiglu(a, b, out) -> None:
    """out = SiLU(a) * b (the MLP's gate, after the w1 / w3 GEMMs). [B, I]."""
    out.copy_(F.silu(a) * b)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def rope_write(qkv, cos, sin, idx, k_cache, v_cache, q_out, n_rep: int) -> None:
    """RoPE on the wqkv output; K and V written at cache index ``idx`` of every row, Q to q_out.

    qkv [B, (nh + 2 nkv) hd] grouped per KV head (its n_rep query heads, its key head, its value head);
    cos / sin [B, hd] (each row's own position); idx int64 [1] on the device; k_cache / v_cache [B, nkv, T, hd];
    q_out [B, nh hd].
    """
    B, nkv, _, hd = k_cache.shape
    g = qkv.view(B, nkv, n_rep + 2, hd)
    c, s = cos[:, None], sin[:, None]
    q_out.copy_(_rotate(g[:, :, :n_rep].reshape(B, nkv * n_rep, hd), c, s).reshape(B, -1))
    k_cache.index_copy_(2, idx, _rotate(g[:, :, n_rep], c, s)[:, :, None])
    v_cache.index_copy_(2, idx, g[:, :, n_rep + 1][:, :, None])


def attn_decode(q, k_cache, v_cache, npad, idx, out, plan=None) -> None:
    """One query token per row over its cache: keys npad[b] <= t <= idx (left padding and unfilled slots masked).

    q [B, nh hd]; k_cache / v_cache [B, nkv, T, hd]; npad int64 [B]; idx int64 [1]; out [B, nh hd]. Reads the whole
    capacity T (a fixed shape, so it can be captured); ``plan`` (the Triton kernel's workspace) is ignored.
    """
    B, _, T, hd = k_cache.shape
    t = torch.arange(T, device=k_cache.device)
    keep = (t[None] >= npad[:, None]) & (t[None] <= idx)  # [B, T]
    o = F.scaled_dot_product_attention(q.view(B, -1, 1, hd), k_cache, v_cache, attn_mask=keep[:, None, None],
                                       enable_gqa=True)
    out.copy_(o.reshape(B, -1))


class TorchBatchOps:
    """This module's functions under the interface :class:`~.batch_triton_ops.TritonBatchOps` has."""

    name = "torch"
    add_rms_norm = staticmethod(add_rms_norm)
    mamba_post = staticmethod(mamba_post)
    conv_silu_prefill = staticmethod(conv_silu_prefill)
    ssm_step = staticmethod(ssm_step)
    gated_norm = staticmethod(gated_norm)
    swiglu = staticmethod(swiglu)
    rope_write = staticmethod(rope_write)
    attn_decode = staticmethod(attn_decode)

    def attn_plan(self, batch: int, nh: int, nkv: int, hd: int, capacity: int, device) -> None:
        return None
