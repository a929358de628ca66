"""Fused Triton kernels for the element-wise and attention parts of the BATCHED decode step (CUDA, bf16).

Each op has a plain-PyTorch twin of the same name in :mod:`.batch_torch_ops` (same arguments, same roundings)
that the GPU tests compare it with. The projections are cuBLAS GEMMs (``torch.mm``) between these kernels: at
batch > 1 a GEMM reads each weight once for all rows, which is what a batched step needs; these kernels fuse
everything between two GEMMs into one launch (residual add + RMSNorm; conv + SiLU + softplus + conv-state update;
the SSM state update; gated per-head RMSNorm; SwiGLU; RoPE + KV-cache write; split-KV attention + merge).

Attention reads the cache index of the token being decoded from a device tensor (``idx``) and each row's number of
left-padding slots from ``npad``: keys npad[b] <= t <= idx are attended, so one captured graph serves every step,
and programs whose split lies past the filled length exit at once.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from mmmamba_bench.fast.triton_ops import attn_tile

LOG2E = 1.4426950408889634


@triton.jit
def _bf(x):
    """Round a float32 value through bfloat16 (what a bf16 tensor op stores)."""
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _add_norm_kernel(x_ptr, d_ptr, w_ptr, out_ptr, eps, H: tl.constexpr, BLOCK: tl.constexpr,
                     HAS_DELTA: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < H
    x = tl.load(x_ptr + r * H + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_DELTA:
        d = tl.load(d_ptr + r * H + offs, mask=m, other=0.0).to(tl.float32)
        x = _bf(x + d)
        tl.store(x_ptr + r * H + offs, x.to(tl.bfloat16), mask=m)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + r * H + offs, _bf(_bf(x * rstd) * w).to(tl.bfloat16), mask=m)


@triton.jit
def _mamba_post_kernel(proj_ptr, cs_ptr, cw_ptr, cb_ptr, dtb_ptr, xbc_ptr, dt_ptr, N, C, DT0,
                       NH: tl.constexpr, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < C
    val = tl.load(proj_ptr + r * N + c, mask=m, other=0.0).to(tl.float32)
    w0 = tl.load(cw_ptr + c * 2, mask=m, other=0.0).to(tl.float32)
    w1 = tl.load(cw_ptr + c * 2 + 1, mask=m, other=0.0).to(tl.float32)
    bias = tl.load(cb_ptr + c, mask=m, other=0.0).to(tl.float32)
    prev = tl.load(cs_ptr + r * C + c, mask=m, other=0.0).to(tl.float32)
    conv = _bf(_bf(_bf(val * w1) + _bf(prev * w0)) + bias)
    tl.store(cs_ptr + r * C + c, val.to(tl.bfloat16), mask=m)
    tl.store(xbc_ptr + r * C + c, (conv / (1.0 + tl.exp(-conv))).to(tl.bfloat16), mask=m)
    if tl.program_id(1) == 0:  # dt = softplus(dt + dt_bias) in float32 (torch's threshold 20)
        h = tl.arange(0, BLOCK_H)
        hm = h < NH
        z = (tl.load(proj_ptr + r * N + DT0 + h, mask=hm, other=0.0).to(tl.float32)
             + tl.load(dtb_ptr + h, mask=hm, other=0.0).to(tl.float32))
        sp = tl.where(z > 20.0, z, libdevice.log1p(tl.exp(z)))
        tl.store(dt_ptr + r * NH + h, sp, mask=hm)


@triton.jit
def _conv_prefill_kernel(proj_ptr, mask_ptr, prev_ptr, cw_ptr, cb_ptr, out_ptr, L, N, C, HAS_MASK: tl.constexpr,
                         HAS_PREV: tl.constexpr, BLOCK: tl.constexpr):
    # one program per (token row of [B * L], BLOCK channels): the conv reads this row and the previous one
    r = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < C
    t = r % L
    val = tl.load(proj_ptr + r * N + c, mask=m, other=0.0).to(tl.float32)
    pv = tl.load(proj_ptr + (r - 1) * N + c, mask=m & (t > 0), other=0.0).to(tl.float32)
    if HAS_MASK:  # left padding contributes zeros (a multiplication by 1 or 0, exact)
        val = val * tl.load(mask_ptr + r).to(tl.float32)
        pv = pv * tl.load(mask_ptr + r - 1, mask=t > 0, other=0.0).to(tl.float32)
    if HAS_PREV:
        ps = tl.load(prev_ptr + (r // L) * C + c, mask=m & (t == 0), other=0.0).to(tl.float32)
        pv = tl.where(t == 0, ps, pv)
    w0 = tl.load(cw_ptr + c * 2, mask=m, other=0.0).to(tl.float32)
    w1 = tl.load(cw_ptr + c * 2 + 1, mask=m, other=0.0).to(tl.float32)
    bias = tl.load(cb_ptr + c, mask=m, other=0.0).to(tl.float32)
    conv = _bf(_bf(_bf(val * w1) + _bf(pv * w0)) + bias)
    tl.store(out_ptr + r * C + c, (conv / (1.0 + tl.exp(-conv))).to(tl.bfloat16), mask=m)


@triton.jit
def _ssm_step_kernel(xbc_ptr, dt_ptr, alog_ptr, S_ptr, y_ptr, N_REP: tl.constexpr, NKV: tl.constexpr,
                     NH: tl.constexpr, P: tl.constexpr, NS: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, NS)
    g = h // N_REP
    C: tl.constexpr = NKV * (P + NS) + NH * NS
    A = -tl.exp(tl.load(alog_ptr + h).to(tl.float32))
    offs = ((b * NH + h) * P + p[:, None]) * NS + n[None, :]
    S = tl.load(S_ptr + offs)
    v = tl.load(xbc_ptr + b * C + g * P + p).to(tl.float32)
    kB = tl.load(xbc_ptr + b * C + NKV * P + g * NS + n).to(tl.float32)
    qC = tl.load(xbc_ptr + b * C + NKV * (P + NS) + h * NS + n).to(tl.float32)
    dt = tl.load(dt_ptr + b * NH + h)
    S = S * tl.exp(dt * A) + (dt * v)[:, None] * kB[None, :]
    tl.store(S_ptr + offs, S)
    y = tl.sum(S * qC[None, :], axis=1)
    tl.store(y_ptr + b * (NH * P) + h * P + p, y.to(tl.bfloat16))


@triton.jit
def _gated_norm_kernel(y_ptr, g_ptr, g_stride, gw_ptr, z_ptr, eps, NH: tl.constexpr, HD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    d = tl.arange(0, HD)
    offs = h * HD + d
    y = tl.load(y_ptr + b * (NH * HD) + offs).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(y * y, axis=0) / HD + eps)
    gw = tl.load(gw_ptr + d).to(tl.float32)
    zn = _bf(_bf(y * rstd) * gw)
    gv = tl.load(g_ptr + b * g_stride + offs).to(tl.float32)
    z = _bf(zn * _bf(gv / (1.0 + tl.exp(-gv))))
    tl.store(z_ptr + b * (NH * HD) + offs, z.to(tl.bfloat16))


@triton.jit
def _swiglu_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    a = tl.load(a_ptr + offs, mask=m, other=0.0).to(tl.float32)
    bv = tl.load(b_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (_bf(a / (1.0 + tl.exp(-a))) * bv).to(tl.bfloat16), mask=m)


@triton.jit
def _rope_write_kernel(qkv_ptr, cos_ptr, sin_ptr, idx_ptr, kc_ptr, vc_ptr, q_ptr, T_max, NKV: tl.constexpr,
                       N_REP: tl.constexpr, HD: tl.constexpr):
    # one program per (row, hd-row block of wqkv): rotate-half RoPE needs rows j and j + HD/2 together
    HALF: tl.constexpr = HD // 2
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    grp = blk // (N_REP + 2)
    r = blk % (N_REP + 2)
    j = tl.arange(0, HALF)
    base = b * (NKV * (N_REP + 2) * HD) + blk * HD
    a = tl.load(qkv_ptr + base + j).to(tl.float32)
    c = tl.load(qkv_ptr + base + HALF + j).to(tl.float32)
    idx = tl.load(idx_ptr)
    if r < N_REP:
        qo = b * (NKV * N_REP * HD) + (grp * N_REP + r) * HD + j
        cs_lo = tl.load(cos_ptr + b * HD + j).to(tl.float32)
        cs_hi = tl.load(cos_ptr + b * HD + HALF + j).to(tl.float32)
        sn_lo = tl.load(sin_ptr + b * HD + j).to(tl.float32)
        sn_hi = tl.load(sin_ptr + b * HD + HALF + j).to(tl.float32)
        tl.store(q_ptr + qo, _bf(_bf(a * cs_lo) + _bf(-c * sn_lo)).to(tl.bfloat16))
        tl.store(q_ptr + qo + HALF, _bf(_bf(c * cs_hi) + _bf(a * sn_hi)).to(tl.bfloat16))
    elif r == N_REP:
        cs_lo = tl.load(cos_ptr + b * HD + j).to(tl.float32)
        cs_hi = tl.load(cos_ptr + b * HD + HALF + j).to(tl.float32)
        sn_lo = tl.load(sin_ptr + b * HD + j).to(tl.float32)
        sn_hi = tl.load(sin_ptr + b * HD + HALF + j).to(tl.float32)
        ko = ((b * NKV + grp) * T_max + idx) * HD + j
        tl.store(kc_ptr + ko, _bf(_bf(a * cs_lo) + _bf(-c * sn_lo)).to(tl.bfloat16))
        tl.store(kc_ptr + ko + HALF, _bf(_bf(c * cs_hi) + _bf(a * sn_hi)).to(tl.bfloat16))
    else:
        vo = ((b * NKV + grp) * T_max + idx) * HD + j
        tl.store(vc_ptr + vo, a.to(tl.bfloat16))
        tl.store(vc_ptr + vo + HALF, c.to(tl.bfloat16))


@triton.jit
def _attn_split_kernel(q_ptr, kc_ptr, vc_ptr, npad_ptr, idx_ptr, m_ptr, l_ptr, o_ptr, T_max, n_splits, qk_scale,
                       NKV: tl.constexpr, N_REP: tl.constexpr, HD: tl.constexpr, SPLIT: tl.constexpr,
                       BLOCK_T: tl.constexpr):
    bg = tl.program_id(0)
    s = tl.program_id(1)
    b = (bg // NKV).to(tl.int64)
    g = bg % NKV
    cur = tl.load(idx_ptr) + 1  # filled length including this step's token
    first = tl.load(npad_ptr + b)  # the row's first real (not left-padding) slot
    lo = s * SPLIT
    hi = tl.minimum(lo + SPLIT, cur)
    rq = tl.arange(0, 16)  # tl.dot needs 16 rows: the n_rep query heads of this KV head, zero-padded
    d = tl.arange(0, HD)
    qmask = rq < N_REP
    q = tl.load(q_ptr + b * (NKV * N_REP * HD) + (g * N_REP + rq)[:, None] * HD + d[None, :],
                mask=qmask[:, None], other=0.0).to(tl.float32)
    m_i = tl.full([16], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([16], dtype=tl.float32)
    acc = tl.zeros([16, HD], dtype=tl.float32)
    base = (b * NKV + g) * T_max * HD
    if hi > tl.maximum(lo, first):  # splits with no attended key only record "empty"
        for t0 in range(0, SPLIT, BLOCK_T):
            m_i, l_i, acc = attn_tile(q, kc_ptr, vc_ptr, base, lo + t0 + tl.arange(0, BLOCK_T), first, hi, d, m_i,
                                      l_i, acc, qk_scale, HD)
    head = b * (NKV * N_REP) + g * N_REP + rq
    tl.store(m_ptr + head * n_splits + s, m_i, mask=qmask)
    tl.store(l_ptr + head * n_splits + s, l_i, mask=qmask)
    tl.store(o_ptr + (head[:, None] * n_splits + s) * HD + d[None, :], acc, mask=qmask[:, None])


@triton.jit
def _attn_combine_kernel(m_ptr, l_ptr, o_ptr, out_ptr, n_splits: tl.constexpr, HD: tl.constexpr,
                         BLOCK_S: tl.constexpr):
    h = tl.program_id(0).to(tl.int64)  # over B * nh
    d = tl.arange(0, HD)
    s = tl.arange(0, BLOCK_S)
    sm = s < n_splits
    m = tl.load(m_ptr + h * n_splits + s, mask=sm, other=float("-inf"))
    Mx = tl.max(m, axis=0)
    w = tl.where(m > float("-inf"), tl.exp2(m - Mx), 0.0)
    L = tl.sum(tl.load(l_ptr + h * n_splits + s, mask=sm, other=0.0) * w, axis=0)
    o = tl.load(o_ptr + (h * n_splits + s)[:, None] * HD + d[None, :], mask=sm[:, None], other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / L
    tl.store(out_ptr + h * HD + d, out.to(tl.bfloat16))


class AttnPlan:
    """Split-KV workspace for one (batch, capacity): ``split`` keys per program, ``n_splits`` programs per
    (row, KV head), chosen so that about ``target_programs`` programs cover a full cache."""

    def __init__(self, batch: int, nh: int, nkv: int, hd: int, capacity: int, device, target_programs: int = 2048,
                 block_t: int = 64, max_splits: int = 128):
        self.block_t = block_t
        want = max(1, min(max_splits, triton.cdiv(target_programs, batch * nkv)))
        self.split = max(block_t, triton.cdiv(triton.cdiv(capacity, want), block_t) * block_t)
        self.n_splits = triton.cdiv(capacity, self.split)
        self.m = torch.empty(batch * nh, self.n_splits, device=device, dtype=torch.float32)
        self.l = torch.empty(batch * nh, self.n_splits, device=device, dtype=torch.float32)
        self.o = torch.empty(batch * nh, self.n_splits, hd, device=device, dtype=torch.float32)

    def describe(self) -> str:
        return f"{self.n_splits}x{self.split}"


class TritonBatchOps:
    """The :mod:`.batch_torch_ops` functions as Triton launches (bf16 buffers, contiguous rows)."""

    name = "triton"

    def add_rms_norm(self, x, delta, norm_w, eps, out) -> None:
        B, H = x.shape
        _add_norm_kernel[(B,)](x, delta if delta is not None else x, norm_w, out, eps, H=H,
                               BLOCK=triton.next_power_of_2(H), HAS_DELTA=delta is not None, num_warps=4)

    def mamba_post(self, proj, conv_state, conv_w, conv_b, dt_bias, xbc_out, dt_out) -> None:
        B, N = proj.shape
        C, nh = conv_state.shape[1], dt_out.shape[1]
        block = 1024
        _mamba_post_kernel[(B, triton.cdiv(C, block))](proj, conv_state, conv_w, conv_b, dt_bias, xbc_out, dt_out,
                                                       N, C, N - nh, NH=nh, BLOCK=block,
                                                       BLOCK_H=triton.next_power_of_2(nh), num_warps=4)

    def conv_silu_prefill(self, proj, L: int, mask, prev, conv_w, conv_b, out) -> None:
        BL, N = proj.shape
        C = out.shape[1]
        block = 1024
        _conv_prefill_kernel[(BL, triton.cdiv(C, block))](proj, mask if mask is not None else proj,
                                                          prev if prev is not None else proj, conv_w, conv_b, out,
                                                          L, N, C, HAS_MASK=mask is not None,
                                                          HAS_PREV=prev is not None, BLOCK=block, num_warps=4)

    def ssm_step(self, xbc, dt, A_log, state, y_out, nkv: int) -> None:
        B, nh, p, n = state.shape
        block_p = 16 if p % 16 == 0 else p
        _ssm_step_kernel[(B, nh, p // block_p)](xbc, dt, A_log, state, y_out, N_REP=nh // nkv, NKV=nkv, NH=nh, P=p,
                                                NS=n, BLOCK_P=block_p, num_warps=4)

    def gated_norm(self, y, g, gate_w, eps, z_out) -> None:
        B, G = y.shape
        hd = gate_w.shape[0]
        assert g.stride(1) == 1, "g must have contiguous columns"
        _gated_norm_kernel[(B, G // hd)](y, g, g.stride(0), gate_w, z_out, eps, NH=G // hd, HD=hd, num_warps=2)

    def swiglu(self, a, b, out) -> None:
        n = a.numel()
        block = 2048
        _swiglu_kernel[(triton.cdiv(n, block),)](a, b, out, n, BLOCK=block, num_warps=4)

    def rope_write(self, qkv, cos, sin, idx, k_cache, v_cache, q_out, n_rep: int) -> None:
        B, nkv, T, hd = k_cache.shape
        _rope_write_kernel[(B, nkv * (n_rep + 2))](qkv, cos, sin, idx, k_cache, v_cache, q_out, T, NKV=nkv,
                                                   N_REP=n_rep, HD=hd, num_warps=1)

    def attn_decode(self, q, k_cache, v_cache, npad, idx, out, plan: AttnPlan) -> None:
        B, nkv, T, hd = k_cache.shape
        nh = q.shape[1] // hd
        _attn_split_kernel[(B * nkv, plan.n_splits)](q, k_cache, v_cache, npad, idx, plan.m, plan.l, plan.o, T,
                                                     plan.n_splits, LOG2E / math.sqrt(hd), NKV=nkv,
                                                     N_REP=nh // nkv, HD=hd, SPLIT=plan.split,
                                                     BLOCK_T=plan.block_t, num_warps=4)
        _attn_combine_kernel[(B * nh,)](plan.m, plan.l, plan.o, out, plan.n_splits, HD=hd,
                                        BLOCK_S=triton.next_power_of_2(plan.n_splits), num_warps=4)

    def attn_plan(self, batch: int, nh: int, nkv: int, hd: int, capacity: int, device) -> AttnPlan:
        return AttnPlan(batch, nh, nkv, hd, capacity, device)
