"""Grouped-query attention with RoPE, in the released ``wqkv`` / ``wo`` layout.

``wqkv`` rows are grouped per KV head: for KV head g, first its n_rep = nh / nkv query heads (query head
g * n_rep + j), then its key head, then its value head, each ``hd`` rows ("(h gs d)", gs = n_rep + 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from mmmamba_bench.config import StackConfig
from mmmamba_bench.model.cache import AttentionCache
from mmmamba_bench.model.context import ForwardContext
from mmmamba_bench.model.layers import apply_rotary


def split_wqkv(w: torch.Tensor, nh: int, nkv: int, hd: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Un-group a ``wqkv`` weight [(nh + 2 nkv) hd, H] into W_q [nh hd, H], W_k [nkv hd, H], W_v [nkv hd, H]."""
    n_rep = nh // nkv
    g = w.view(nkv, n_rep + 2, hd, w.shape[-1])
    return (g[:, :n_rep].reshape(nh * hd, -1), g[:, n_rep].reshape(nkv * hd, -1),
            g[:, n_rep + 1].reshape(nkv * hd, -1))


class Attention(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.n_rep = self.nh // self.nkv
        self.wqkv = nn.Linear(cfg.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=False)
        self.wo = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, cache: AttentionCache | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        qkv = self.wqkv(x).view(B, L, self.nkv, self.n_rep + 2, self.hd)
        q = qkv[:, :, :, : self.n_rep].reshape(B, L, self.nh, self.hd).transpose(1, 2)  # [B, nh, L, hd]
        k = qkv[:, :, :, self.n_rep].transpose(1, 2)  # [B, nkv, L, hd]
        v = qkv[:, :, :, self.n_rep + 1].transpose(1, 2)  # [B, nkv, L, hd]
        q = apply_rotary(q, ctx.cos, ctx.sin)
        k = apply_rotary(k, ctx.cos, ctx.sin)
        if cache is not None:
            end = ctx.start + L
            cache.k[:, :, ctx.start:end] = k
            cache.v[:, :, ctx.start:end] = v
            k, v = cache.k[:, :, :end], cache.v[:, :, :end]  # read only the filled length
        if ctx.attn_mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attn_mask, enable_gqa=True)
        elif L > 1 and cache is not None and ctx.start > 0:
            # a chunk continuing a cached sequence: causal aligned to the bottom right (query i sits at
            # start + i), which flash / memory-efficient kernels take without a materialised [L, start + L] mask
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(L, ctx.start + L),
                                                 enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=L > 1, enable_gqa=True)
        return self.wo(out.transpose(1, 2).reshape(B, L, self.nh * self.hd))
