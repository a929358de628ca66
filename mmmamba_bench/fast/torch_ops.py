"""The fused batch-1 decode ops in plain PyTorch: the reference twins of :mod:`.triton_ops` and the CPU path.

Each op reads and writes preallocated 1-D buffers (batch 1, one token) and reproduces the eager model's roundings
(a bf16 model rounds after every op: Linear outputs, RMSNorm, SiLU, products and residual adds), so the fused
kernels can be checked against these within bf16 tolerance. Shapes use H (hidden), C (conv channels
(2 nkv + nh) hd), G (nh hd), I (MLP width), T (cache length).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The model's RMSNorm: normalise in float32, round to x's dtype, times weight (rounded again)."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def norm_gemv_mamba_in(x, norm_w, eps, W, conv_state, conv_w, conv_b, dt_bias, xbc_out, g_out, dt_out) -> None:
    """RMSNorm + ``wvkqgdt`` + width-2 causal conv + SiLU on [v|k|q], softplus on dt; updates ``conv_state``.

    x [H]; W [C + G + nh, H]; conv_state [C] (previous token's pre-conv channels); conv_w [C, 2] (tap 0 on the
    previous token, tap 1 on the current one); conv_b [C]; dt_bias [nh] -> xbc_out [C], g_out [G], dt_out [nh] f32.
    """
    C, G = conv_state.shape[0], g_out.shape[0]
    proj = F.linear(rms_norm(x, norm_w, eps), W)
    xbc = proj[:C]
    conv = xbc * conv_w[:, 1] + conv_state * conv_w[:, 0] + conv_b
    conv_state.copy_(xbc)
    xbc_out.copy_(F.silu(conv))
    g_out.copy_(proj[C:C + G])
    dt_out.copy_(F.softplus(proj[C + G:].float() + dt_bias.float()))


def ssm_step(xbc, dt, A_log, state, y_out, nkv: int) -> None:
    """One SSD step for every head, updating ``state`` [nh, p, n] (float32) in place; y_out [nh p].

    xbc [C] = [v (nkv p) | k (nkv n) | q (nh n)] after conv and SiLU; KV head h // (nh / nkv) serves head h.
    """
    nh, p, n = state.shape
    rep = nh // nkv
    v = xbc[:nkv * p].view(nkv, p).repeat_interleave(rep, 0).float()
    k = xbc[nkv * p:nkv * (p + n)].view(nkv, n).repeat_interleave(rep, 0).float()
    q = xbc[nkv * (p + n):].view(nh, n).float()
    A = -torch.exp(A_log.float())
    state.mul_(torch.exp(dt * A)[:, None, None])
    state.add_((dt[:, None] * v)[..., None] * k[:, None, :])
    y_out.copy_(torch.einsum("hpn,hn->hp", state, q).reshape(-1))


def gated_gemv_residual(y, g, gate_w, eps, W, x) -> None:
    """x += o_proj(RMSNorm_per_head(y) * gate_w * SiLU(g)), with the model's roundings; x updated in place."""
    hd = gate_w.shape[0]
    yh = y.view(-1, hd)
    yf = yh.float()
    z = (yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + eps)).to(y.dtype) * gate_w
    z = z * F.silu(g.view(-1, hd))
    x.copy_(x + F.linear(z.reshape(-1), W))


def norm_gemv_swiglu(x, norm_w, eps, W1, W3, h_out) -> None:
    """h = SiLU(W1 n) * (W3 n), n = RMSNorm(x)."""
    n = rms_norm(x, norm_w, eps)
    h_out.copy_(F.silu(F.linear(n, W1)) * F.linear(n, W3))


def gemv_residual(v, W, x) -> None:
    """x += W v (rounded like a Linear followed by a residual add)."""
    x.copy_(x + F.linear(v, W))


def norm_gemv(x, norm_w, eps, W, out) -> None:
    """out = W RMSNorm(x) (the output head)."""
    out.copy_(F.linear(rms_norm(x, norm_w, eps), W))


def norm_gemv_argmax(x, norm_w, eps, W, out, key, tok, pos) -> None:
    """The output head, then the greedy pick: tok = argmax(out) (first index on ties), pos += 1.

    ``key`` is the Triton kernel's reduction buffer, accepted and left alone here.
    """
    norm_gemv(x, norm_w, eps, W, out)
    tok.copy_(torch.argmax(out).view(1))
    pos.add_(1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def norm_gemv_qkv_rope(x, norm_w, eps, W, cos_t, sin_t, pos, k_cache, v_cache, q_out, n_rep: int) -> None:
    """RMSNorm + ``wqkv`` + RoPE at position ``pos``; writes K and V at ``pos`` of the static cache, Q to q_out.

    W rows: per KV head g, its n_rep query heads, then its key head, then its value head (hd rows each).
    cos_t / sin_t [T, hd]: the rotation used for a token decoded at each position; pos: int64 [1] (device).
    k_cache / v_cache [nkv, T, hd].
    """
    nkv, _, hd = k_cache.shape
    p = int(pos)
    qkv = F.linear(rms_norm(x, norm_w, eps), W).view(nkv, n_rep + 2, hd)
    cos, sin = cos_t[p], sin_t[p]
    q_out.copy_(_rotate(qkv[:, :n_rep], cos, sin).reshape(-1))
    k_cache[:, p] = _rotate(qkv[:, n_rep], cos, sin)
    v_cache[:, p] = qkv[:, n_rep + 1]


def attn_decode(q, k_cache, v_cache, pos, out, plan=None) -> None:
    """Attention of one query token (position ``pos``) over the cache's first pos + 1 entries; out [nh hd].

    ``plan`` (the Triton kernel's split-KV workspace) is accepted and ignored.
    """
    nkv, _, hd = k_cache.shape
    L = int(pos) + 1
    qh = q.view(1, -1, 1, hd)
    o = F.scaled_dot_product_attention(qh, k_cache[None, :, :L], v_cache[None, :, :L], enable_gqa=True)
    out.copy_(o.reshape(-1))
