"""The mmMamba Mamba-2 mixer, in the released ``wvkqgdt`` layout (checkpoint_format.md, "Mamba-2 mixer").

Per token t and head h:

    [v (nkv hd) | k (nkv hd) | q (nh hd) | g (nh hd) | dt (nh)] = wvkqgdt x
    [v | k | q] = SiLU(depthwise causal conv, width 2, with bias)   # weight[:, 0, 1] on the current token
    v, k: KV head h // n_rep serves head h;  q is C, k is B, v is x
    dt = softplus(dt + dt_bias);  A = -exp(A_log_bias)
    S_t = exp(dt A) S_{t-1} + dt v_t k_t^T;  y_t = S_t q_t             # no D term, no RoPE
    out = o_proj(RMSNorm_hd(y) * g_norm_swish_gate.weight * g * sigmoid(g))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmmamba_bench.config import StackConfig
from mmmamba_bench.model import fused
from mmmamba_bench.model.cache import Mamba2Cache
from mmmamba_bench.model.context import ForwardContext
from mmmamba_bench.model.layers import rms_normalize

GATE_NORM_EPS = 1e-5


class GatedNormWeight(nn.Module):
    """Holds ``g_norm_swish_gate.weight`` [hd] under the released name."""

    def __init__(self, hd: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hd))


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        H = cfg.hidden_size
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.n_rep = self.nh // self.nkv
        self.conv_dim = (2 * self.nkv + self.nh) * self.hd
        self.wvkqgdt = nn.Linear(H, self.conv_dim + self.nh * self.hd + self.nh, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=2, groups=self.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.nh))
        self.A_log_bias = nn.Parameter(torch.zeros(self.nh))
        self.g_norm_swish_gate = GatedNormWeight(self.hd)
        self.o_proj = nn.Linear(self.nh * self.hd, H, bias=False)

    # Row ranges of wvkqgdt, in order: v, k, q, g, dt.
    def row_slices(self) -> dict[str, slice]:
        kv, qd = self.nkv * self.hd, self.nh * self.hd
        edges = {"v": kv, "k": kv, "q": qd, "g": qd, "dt": self.nh}
        out, start = {}, 0
        for name, size in edges.items():
            out[name] = slice(start, start + size)
            start += size
        return out

    def forward(self, x: torch.Tensor, ctx: ForwardContext, cache: Mamba2Cache | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        proj = self.wvkqgdt(x)
        xbc, g, dt = proj.split([self.conv_dim, self.nh * self.hd, self.nh], dim=-1)
        prev = cache.conv if (cache is not None and ctx.start > 0) else None
        if fused.applies(x) and L > 1:  # one kernel: mask, conv, SiLU (module docstring of model.fused)
            act = fused.conv_silu(proj, self.conv_dim, ctx.token_mask, prev, self.conv1d.weight, self.conv1d.bias)
            last = xbc[:, -1]
            if ctx.token_mask is not None:
                last = last * ctx.token_mask[:, -1, None].to(xbc.dtype)
        else:
            if ctx.token_mask is not None:  # left padding must not reach the state or the next token's conv tap
                xbc = xbc * ctx.token_mask[..., None].to(xbc.dtype)
            act = F.silu(causal_conv_width2(xbc, self.conv1d.weight, self.conv1d.bias, prev))
            last = xbc[:, -1]
        if cache is not None:
            cache.conv.copy_(last)  # after the conv has read ``prev``
        xbc = act
        kv = self.nkv * self.hd
        v, k, q = xbc.split([kv, kv, self.nh * self.hd], dim=-1)
        v = v.view(B, L, self.nkv, self.hd).repeat_interleave(self.n_rep, dim=2)  # [B, L, nh, hd]
        k = k.view(B, L, self.nkv, self.hd).repeat_interleave(self.n_rep, dim=2)  # [B, L, nh, hd]
        q = q.view(B, L, self.nh, self.hd)  # [B, L, nh, hd]
        cd = torch.float64 if x.dtype == torch.float64 else torch.float32  # dt and A in at least float32
        dt = F.softplus(dt.to(cd) + self.dt_bias.to(cd))  # [B, L, nh]
        if ctx.token_mask is not None:
            dt = dt * ctx.token_mask[..., None]
        A = -torch.exp(self.A_log_bias.to(cd))  # [nh]
        if cache is not None and L == 1 and ctx.start > 0:
            y = ctx.backend.step(cache.ssm, v[:, 0], dt[:, 0], A, k[:, 0], q[:, 0])[:, None]  # [B, 1, nh, hd]
        else:
            init = cache.ssm if (cache is not None and ctx.start > 0) else None
            y, final = ctx.backend.scan(v, dt, A, k, q, initial_state=init)
            if cache is not None:
                cache.ssm.copy_(final)
        if fused.applies(y) and L > 1:
            return self.o_proj(fused.gated_norm(y, g, self.g_norm_swish_gate.weight, GATE_NORM_EPS))
        y = rms_normalize(y, GATE_NORM_EPS) * self.g_norm_swish_gate.weight  # per head over hd
        y = y * F.silu(g.view(B, L, self.nh, self.hd))
        return self.o_proj(y.reshape(B, L, self.nh * self.hd))


def causal_conv_width2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       prev: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal convolution of width 2 along time.

    x: [B, L, C]; weight: [C, 1, 2] (tap 1 on the current token, tap 0 on the previous one); bias: [C];
    prev: [B, C], the token before x[:, 0] (zeros at the start of a sequence).
    """
    shifted = torch.cat([x[:, :1] * 0 if prev is None else prev[:, None].to(x.dtype), x[:, :-1]], dim=1)
    return x * weight[:, 0, 1] + shifted * weight[:, 0, 0] + bias


def causal_conv_width2_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The reference twin of :func:`causal_conv_width2` (no carried state): ``F.conv1d`` with left padding."""
    C = x.shape[-1]
    return F.conv1d(F.pad(x.transpose(1, 2), (1, 0)), weight, bias, groups=C).transpose(1, 2)
