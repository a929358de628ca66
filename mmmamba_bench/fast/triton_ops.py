"""Fused Triton kernels for the batch-1 decode step; each has a plain-PyTorch twin of the same name in
:mod:`.torch_ops` (same arguments, same roundings) that the tests compare it with.

Design (memory-bound: each step reads every weight once, so the kernels are built around batch-1 GEMV):

- GEMV: a program owns ``BLOCK_N`` output rows and walks K in ``BLOCK_K`` slices with 16-byte loads, keeping a
  [BLOCK_N, BLOCK_K] float32 accumulator and reducing once at the end; many programs per SM keep enough loads in
  flight. Norms and activations are fused as prologues (RMSNorm of the input, recomputed per program from the
  4 KB hidden vector) and epilogues (conv + SiLU + softplus, SiLU gate, RoPE + cache write, residual add).
- Mamba-2 state update: one program per (head, BLOCK_P rows of the state), state read and written once.
- Attention: flash-decoding over the static cache, split along its length into ``n_splits`` programs per KV head
  (fixed at capture time); each reads the filled length from a device tensor, so one captured graph serves every
  step, and splits past the filled length exit at once; a second kernel merges the splits.

- Programmatic dependent launch (sm_90+, ``TritonOps(pdl=...)``): each kernel loads its first weight tile before
  ``gdc_wait`` and then lets the next kernel launch, so launch latency and the next weight fetch overlap the
  previous kernel's tail inside the captured graph; results are bit-identical to serial launches.

- Output head + greedy pick: each head program also reduces its rows to (max, first index) and folds that into
  one int64 key with ``atomic_max`` (order-preserving bits of the bf16 logit, then the complemented row index, so
  ties go to the first row like ``torch.argmax``); a one-program kernel turns the key into the next token,
  resets it and advances the position — no separate argmax pass over the logits.

Only bfloat16 models are supported here (the fast path's dtype); launch configurations
``(BLOCK_N, BLOCK_K, num_warps, num_stages)`` are chosen per device by :class:`~.tuning.GemvTuner`.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from mmmamba_bench.fast.tuning import (ATTN_CANDIDATES, ATTN_DEFAULT, GEMV_CANDIDATES, Config,  # noqa: F401
                                       GemvTuner, default_config)

LOG2E = 1.4426950408889634
KEY_EMPTY = -(2 ** 63)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests)  # the argmax key before any head program has folded its rows in


def pdl_supported(device: torch.device | None = None) -> bool:
    """Programmatic dependent launch needs Hopper (sm_90) or newer, and real hardware (not the interpreter)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


@triton.jit
def _pdl_sync(PDL: tl.constexpr):
    """With programmatic dependent launch this kernel may start while the previous one still runs: everything
    before this point may read only what no recent kernel writes (weights); after it, all earlier kernels have
    finished and their writes are visible. Then let the next kernel start its own prologue."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _wtile(W_ptr, rows, rmask, k0, cols, K: tl.constexpr, EVEN_N: tl.constexpr):
    wp = W_ptr + rows[:, None].to(tl.int64) * K + (k0 + cols)[None, :]
    if EVEN_N:
        w = tl.load(wp)
    else:
        w = tl.load(wp, mask=rmask[:, None], other=0.0)
    return w


@triton.jit
def _bf(x):
    """Round a float32 value through bfloat16 (what a bf16 tensor op stores)."""
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _rstd(x_ptr, eps, K: tl.constexpr, BLOCK_K: tl.constexpr):
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        xv = tl.load(x_ptr + k0 + tl.arange(0, BLOCK_K)).to(tl.float32)
        acc += xv * xv
    return 1.0 / tl.sqrt(tl.sum(acc, axis=0) / K + eps)


@triton.jit
def _normed(x_ptr, nw_ptr, offs, rstd):
    xv = tl.load(x_ptr + offs).to(tl.float32)
    nw = tl.load(nw_ptr + offs).to(tl.float32)
    return _bf(_bf(xv * rstd) * nw)


# ---- RMSNorm + GEMV family --------------------------------------------------------------------------------------

@triton.jit
def _norm_gemv_kernel(x_ptr, nw_ptr, eps, W_ptr, out_ptr, key_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr, PDL: tl.constexpr, ARGMAX: tl.constexpr = False):
    """out = W RMSNorm(x); with ARGMAX (the output head of a greedy step) also this program's share of the pick:
    the max of its rows' bf16 logits and the first row holding it, folded into ``key`` [1] int64 (``atomic_max``)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    w = _wtile(W_ptr, rows, rmask, 0, cols, K, EVEN_N)  # the first weight tile, before waiting
    _pdl_sync(PDL)
    rstd = _rstd(x_ptr, eps, K, BLOCK_K)
    acc = w.to(tl.float32) * _normed(x_ptr, nw_ptr, cols, rstd)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        xin = _normed(x_ptr, nw_ptr, k0 + cols, rstd)
        w = _wtile(W_ptr, rows, rmask, k0, cols, K, EVEN_N)
        acc += w.to(tl.float32) * xin[None, :]
    out = tl.sum(acc, axis=1).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows, out, mask=rmask)
    if ARGMAX:
        v = out.to(tl.float32)
        v = tl.where(v == 0.0, 0.0, v)  # -0.0 == +0.0 for argmax
        v = tl.where(rmask, v, float("-inf"))
        best = tl.max(v, axis=0)
        row = tl.program_id(0) * BLOCK_N + tl.argmax(v, axis=0, tie_break_left=True)
        bits = best.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # signed-int order == float order
        low = tl.full([], 4294967295, tl.int64) - row.to(tl.int64)  # a smaller row wins a tie
        tl.atomic_max(key_ptr, (ordered.to(tl.int64) << 32) | low)


@triton.jit
def _argmax_finish_kernel(key_ptr, tok_ptr, pos_ptr, PDL: tl.constexpr):
    """Next token = the row in the key; reset the key for the next step; advance the position."""
    _pdl_sync(PDL)
    key = tl.load(key_ptr)
    row = tl.full([], 4294967295, tl.int64) - (key & tl.full([], 4294967295, tl.int64))
    tl.store(tok_ptr, row)
    tl.store(key_ptr, tl.full([], KEY_EMPTY, tl.int64))
    tl.store(pos_ptr, tl.load(pos_ptr) + 1)


@triton.jit
def _mamba_in_kernel(x_ptr, nw_ptr, eps, W_ptr, cs_ptr, cw_ptr, cb_ptr, dtb_ptr, xbc_ptr, g_ptr, dt_ptr, N,
                     C: tl.constexpr, G: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    is_conv = rows < C
    is_g = (rows >= C) & (rows < C + G)
    is_dt = (rows >= C + G) & rmask
    # weights first (nothing writes them), then wait for the previous kernel
    w = _wtile(W_ptr, rows, rmask, 0, cols, K, EVEN_N)
    w0 = tl.load(cw_ptr + rows * 2, mask=is_conv, other=0.0).to(tl.float32)
    w1 = tl.load(cw_ptr + rows * 2 + 1, mask=is_conv, other=0.0).to(tl.float32)
    bias = tl.load(cb_ptr + rows, mask=is_conv, other=0.0).to(tl.float32)
    _pdl_sync(PDL)
    rstd = _rstd(x_ptr, eps, K, BLOCK_K)
    acc = w.to(tl.float32) * _normed(x_ptr, nw_ptr, cols, rstd)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        xin = _normed(x_ptr, nw_ptr, k0 + cols, rstd)
        w = _wtile(W_ptr, rows, rmask, k0, cols, K, EVEN_N)
        acc += w.to(tl.float32) * xin[None, :]
    val = _bf(tl.sum(acc, axis=1))  # the Linear output, bf16
    # width-2 causal conv with the previous token's channels, then SiLU (bf16 roundings as in the eager model)
    prev = tl.load(cs_ptr + rows, mask=is_conv, other=0.0).to(tl.float32)
    conv = _bf(_bf(_bf(val * w1) + _bf(prev * w0)) + bias)
    act = conv / (1.0 + tl.exp(-conv))
    tl.store(cs_ptr + rows, val.to(tl.bfloat16), mask=is_conv)
    tl.store(xbc_ptr + rows, act.to(tl.bfloat16), mask=is_conv)
    tl.store(g_ptr + (rows - C), val.to(tl.bfloat16), mask=is_g)
    z = val + tl.load(dtb_ptr + (rows - C - G), mask=is_dt, other=0.0).to(tl.float32)
    sp = tl.where(z > 20.0, z, tl.where(z < -15.0, tl.exp(z), tl.log(1.0 + tl.exp(z))))
    tl.store(dt_ptr + (rows - C - G), sp, mask=is_dt)


@triton.jit
def _swiglu_kernel(x_ptr, nw_ptr, eps, W1_ptr, W3_ptr, h_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    w1 = _wtile(W1_ptr, rows, rmask, 0, cols, K, EVEN_N)
    w3 = _wtile(W3_ptr, rows, rmask, 0, cols, K, EVEN_N)
    _pdl_sync(PDL)
    rstd = _rstd(x_ptr, eps, K, BLOCK_K)
    xin = _normed(x_ptr, nw_ptr, cols, rstd)
    acc1 = w1.to(tl.float32) * xin[None, :]
    acc3 = w3.to(tl.float32) * xin[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        xin = _normed(x_ptr, nw_ptr, k0 + cols, rstd)
        w1 = _wtile(W1_ptr, rows, rmask, k0, cols, K, EVEN_N)
        w3 = _wtile(W3_ptr, rows, rmask, k0, cols, K, EVEN_N)
        acc1 += w1.to(tl.float32) * xin[None, :]
        acc3 += w3.to(tl.float32) * xin[None, :]
    a = _bf(tl.sum(acc1, axis=1))
    b = _bf(tl.sum(acc3, axis=1))
    h = _bf(a / (1.0 + tl.exp(-a))) * b
    tl.store(h_ptr + rows, h.to(tl.bfloat16), mask=rmask)


@triton.jit
def _gemv_residual_kernel(v_ptr, W_ptr, x_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          EVEN_N: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    w = _wtile(W_ptr, rows, rmask, 0, cols, K, EVEN_N)
    _pdl_sync(PDL)
    acc = w.to(tl.float32) * tl.load(v_ptr + cols).to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        vin = tl.load(v_ptr + k0 + cols).to(tl.float32)
        w = _wtile(W_ptr, rows, rmask, k0, cols, K, EVEN_N)
        acc += w.to(tl.float32) * vin[None, :]
    out = _bf(tl.sum(acc, axis=1))
    xo = tl.load(x_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(x_ptr + rows, (xo + out).to(tl.bfloat16), mask=rmask)


@triton.jit
def _gated_z(y_ptr, g_ptr, gw, eps, k0, heads, d, HD: tl.constexpr, BLOCK_K: tl.constexpr):
    offs2 = k0 + heads[:, None] * HD + d[None, :]
    yv = tl.load(y_ptr + offs2).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(yv * yv, axis=1) / HD + eps)
    zn = _bf(_bf(yv * rstd[:, None]) * gw[None, :])
    gv = tl.load(g_ptr + offs2).to(tl.float32)
    z = _bf(zn * _bf(gv / (1.0 + tl.exp(-gv))))
    return tl.reshape(z, [BLOCK_K])


@triton.jit
def _gated_gemv_residual_kernel(y_ptr, g_ptr, gw_ptr, eps, W_ptr, x_ptr, N, K: tl.constexpr, HD: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr,
                                PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = tl.arange(0, BLOCK_K)
    heads = tl.arange(0, BLOCK_K // HD)
    d = tl.arange(0, HD)
    gw = tl.load(gw_ptr + d).to(tl.float32)
    w = _wtile(W_ptr, rows, rmask, 0, cols, K, EVEN_N)
    _pdl_sync(PDL)
    acc = w.to(tl.float32) * _gated_z(y_ptr, g_ptr, gw, eps, 0, heads, d, HD, BLOCK_K)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        zin = _gated_z(y_ptr, g_ptr, gw, eps, k0, heads, d, HD, BLOCK_K)
        w = _wtile(W_ptr, rows, rmask, k0, cols, K, EVEN_N)
        acc += w.to(tl.float32) * zin[None, :]
    out = _bf(tl.sum(acc, axis=1))
    xo = tl.load(x_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(x_ptr + rows, (xo + out).to(tl.bfloat16), mask=rmask)


@triton.jit
def _qkv_rope_kernel(x_ptr, nw_ptr, eps, W_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, q_ptr, T_max,
                     K: tl.constexpr, HD: tl.constexpr, N_REP: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    # A program owns rows j and j + HD/2 of one hd-row block, so it can rotate them (rotate-half RoPE).
    HALF: tl.constexpr = HD // 2
    PER_BLOCK: tl.constexpr = HALF // BLOCK_N
    pid = tl.program_id(0)
    blk = pid // PER_BLOCK
    j = (pid % PER_BLOCK) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_lo = blk * HD + j
    cols = tl.arange(0, BLOCK_K)
    off = rows_lo[:, None].to(tl.int64) * K + cols[None, :]
    w_lo = tl.load(W_ptr + off)
    w_hi = tl.load(W_ptr + off + HALF * K)
    _pdl_sync(PDL)
    rstd = _rstd(x_ptr, eps, K, BLOCK_K)
    xin = _normed(x_ptr, nw_ptr, cols, rstd)
    acc_lo = w_lo.to(tl.float32) * xin[None, :]
    acc_hi = w_hi.to(tl.float32) * xin[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        xin = _normed(x_ptr, nw_ptr, k0 + cols, rstd)
        w_lo = tl.load(W_ptr + off + k0)
        w_hi = tl.load(W_ptr + off + k0 + HALF * K)
        acc_lo += w_lo.to(tl.float32) * xin[None, :]
        acc_hi += w_hi.to(tl.float32) * xin[None, :]
    a = _bf(tl.sum(acc_lo, axis=1))
    c = _bf(tl.sum(acc_hi, axis=1))
    pos = tl.load(pos_ptr)
    cs_lo = tl.load(cos_ptr + pos * HD + j).to(tl.float32)
    cs_hi = tl.load(cos_ptr + pos * HD + HALF + j).to(tl.float32)
    sn_lo = tl.load(sin_ptr + pos * HD + j).to(tl.float32)
    sn_hi = tl.load(sin_ptr + pos * HD + HALF + j).to(tl.float32)
    r_lo = _bf(_bf(a * cs_lo) + _bf(-c * sn_lo))
    r_hi = _bf(_bf(c * cs_hi) + _bf(a * sn_hi))
    grp = blk // (N_REP + 2)
    r = blk % (N_REP + 2)
    if r < N_REP:
        qo = (grp * N_REP + r) * HD + j
        tl.store(q_ptr + qo, r_lo.to(tl.bfloat16))
        tl.store(q_ptr + qo + HALF, r_hi.to(tl.bfloat16))
    elif r == N_REP:
        ko = grp.to(tl.int64) * T_max * HD + pos * HD + j
        tl.store(kc_ptr + ko, r_lo.to(tl.bfloat16))
        tl.store(kc_ptr + ko + HALF, r_hi.to(tl.bfloat16))
    else:
        vo = grp.to(tl.int64) * T_max * HD + pos * HD + j
        tl.store(vc_ptr + vo, a.to(tl.bfloat16))
        tl.store(vc_ptr + vo + HALF, c.to(tl.bfloat16))


# ---- Mamba-2 state update ---------------------------------------------------------------------------------------

@triton.jit
def _ssm_step_kernel(xbc_ptr, dt_ptr, alog_ptr, S_ptr, y_ptr, N_REP: tl.constexpr, NKV: tl.constexpr,
                     P: tl.constexpr, NS: tl.constexpr, BLOCK_P: tl.constexpr, PDL: tl.constexpr):
    h = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, NS)
    g = h // N_REP
    A = -tl.exp(tl.load(alog_ptr + h).to(tl.float32))
    offs = h * P * NS + p[:, None] * NS + n[None, :]
    # The state was last written by this layer's update one decode step ago, well before the previous kernel
    # (which only waits for the kernel before it): safe to read before waiting.
    S = tl.load(S_ptr + offs)
    _pdl_sync(PDL)
    v = tl.load(xbc_ptr + g * P + p).to(tl.float32)
    kB = tl.load(xbc_ptr + NKV * P + g * NS + n).to(tl.float32)
    qC = tl.load(xbc_ptr + NKV * (P + NS) + h * NS + n).to(tl.float32)
    dt = tl.load(dt_ptr + h)
    decay = tl.exp(dt * A)
    S = S * decay + (dt * v)[:, None] * kB[None, :]
    tl.store(S_ptr + offs, S)
    y = tl.sum(S * qC[None, :], axis=1)
    tl.store(y_ptr + h * P + p, y.to(tl.bfloat16))


# ---- attention over the static cache ----------------------------------------------------------------------------

@triton.jit
def attn_tile(q, kc_ptr, vc_ptr, base, t, first, end, d, m_i, l_i, acc, qk_scale, HD: tl.constexpr):
    """One BLOCK_T slice t of a KV cache (keys first <= t < end attended) folded into the online softmax
    (m_i, l_i, acc) of 16 query rows (log2 domain). Shared by the batch-1 and the batched split-KV kernels."""
    tm = (t < end) & (t >= first)
    kv_off = base + t[:, None].to(tl.int64) * HD + d[None, :]
    k = tl.load(kc_ptr + kv_off, mask=tm[:, None], other=0.0)
    # float32 operands (tf32 dots hold bf16 values exactly; Triton's interpreter mis-multiplies bf16 dots)
    sc = tl.dot(q, tl.trans(k.to(tl.float32))) * qk_scale
    sc = tl.where(tm[None, :], sc, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(sc, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a slice with nothing attended yet adds nothing
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(sc - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(vc_ptr + kv_off, mask=tm[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
    return m_new, l_i, acc


@triton.jit
def _attn_split_kernel(q_ptr, kc_ptr, vc_ptr, pos_ptr, m_ptr, l_ptr, o_ptr, T_max, n_splits, qk_scale, split,
                       N_REP: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr, STATIC_SPLIT: tl.constexpr,
                       PDL: tl.constexpr):
    g = tl.program_id(0)
    s = tl.program_id(1)
    _pdl_sync(PDL)
    cur = tl.load(pos_ptr) + 1  # filled length including this step's token
    start = s * split
    end = tl.minimum(start + split, cur)
    rq = tl.arange(0, 16)  # tl.dot needs 16 rows: the n_rep query heads of this KV head, zero-padded
    d = tl.arange(0, HD)
    qmask = rq < N_REP
    q = tl.load(q_ptr + (g * N_REP + rq)[:, None] * HD + d[None, :], mask=qmask[:, None], other=0.0).to(tl.float32)
    m_i = tl.full([16], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([16], dtype=tl.float32)
    acc = tl.zeros([16, HD], dtype=tl.float32)
    base = g.to(tl.int64) * T_max * HD
    if start < cur:  # splits past the filled length only record "empty"
        # a fixed trip count per split, masked past ``end`` (the first block always holds a valid token). On the
        # GPU ``split`` is a run-time value, so one compiled kernel serves every cache size; Triton's interpreter
        # cannot loop to a run-time bound, so there the split comes as the constant STATIC_SPLIT.
        if STATIC_SPLIT > 0:
            for t0 in range(0, STATIC_SPLIT, BLOCK_T):
                m_i, l_i, acc = attn_tile(q, kc_ptr, vc_ptr, base, start + t0 + tl.arange(0, BLOCK_T), 0, end, d,
                                          m_i, l_i, acc, qk_scale, HD)
        else:
            for t0 in range(0, split, BLOCK_T):
                m_i, l_i, acc = attn_tile(q, kc_ptr, vc_ptr, base, start + t0 + tl.arange(0, BLOCK_T), 0, end, d,
                                          m_i, l_i, acc, qk_scale, HD)
    head = g * N_REP + rq
    tl.store(m_ptr + head * n_splits + s, m_i, mask=qmask)
    tl.store(l_ptr + head * n_splits + s, l_i, mask=qmask)
    tl.store(o_ptr + (head[:, None] * n_splits + s) * HD + d[None, :], acc, mask=qmask[:, None])


@triton.jit
def _attn_combine_kernel(m_ptr, l_ptr, o_ptr, out_ptr, n_splits, HD: tl.constexpr, BLOCK_S: tl.constexpr,
                         N_CHUNKS: tl.constexpr, PDL: tl.constexpr):
    """Merge one head's splits, BLOCK_S at a time over N_CHUNKS (a compile-time count, unrolled)."""
    h = tl.program_id(0)
    d = tl.arange(0, HD)
    _pdl_sync(PDL)
    M = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    for c in tl.static_range(N_CHUNKS):
        s = c * BLOCK_S + tl.arange(0, BLOCK_S)
        M = tl.maximum(M, tl.load(m_ptr + h * n_splits + s, mask=s < n_splits, other=float("-inf")))
    Mx = tl.max(M, axis=0)
    L = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc = tl.zeros([BLOCK_S, HD], dtype=tl.float32)
    for c in tl.static_range(N_CHUNKS):
        s = c * BLOCK_S + tl.arange(0, BLOCK_S)
        sm = s < n_splits
        m = tl.load(m_ptr + h * n_splits + s, mask=sm, other=float("-inf"))
        w = tl.where(m > float("-inf"), tl.exp2(m - Mx), 0.0)
        L += tl.load(l_ptr + h * n_splits + s, mask=sm, other=0.0) * w
        o = tl.load(o_ptr + (h * n_splits + s)[:, None] * HD + d[None, :], mask=sm[:, None], other=0.0)
        acc += o * w[:, None]
    out = tl.sum(acc, axis=0) / tl.sum(L, axis=0)
    tl.store(out_ptr + h * HD + d, out.to(tl.bfloat16))


# ---- launch configurations (chosen in .tuning) ------------------------------------------------------------------

def _grid_n(N: int, bn: int) -> tuple[int]:
    return (triton.cdiv(N, bn),)


class TritonOps:
    """The :mod:`.torch_ops` functions as Triton launches; launch configurations come from ``tuner``."""

    name = "triton"

    def __init__(self, tuner: GemvTuner | None = None, pdl: bool | None = None):
        self.tuner = tuner or GemvTuner(tune=False)
        # programmatic dependent launch: each kernel's launch and weight prefetch overlap the previous kernel's tail
        self.pdl = pdl_supported() if pdl is None else bool(pdl)
        self._kw = {"PDL": self.pdl, "launch_pdl": self.pdl}

    def _needs(self, name: str, N: int, K: int) -> bool:
        return self.tuner.tune and (name, N, K) not in self.tuner.chosen

    # Each op picks its config (tuning once on scratch outputs), then launches.
    def norm_gemv_mamba_in(self, x, norm_w, eps, W, conv_state, conv_w, conv_b, dt_bias, xbc_out, g_out,
                           dt_out) -> None:
        N, K = W.shape
        C, G = conv_state.shape[0], g_out.shape[0]

        def launch(cfg, cs, xo, go, do):
            bn, bk, nw, ns = cfg
            _mamba_in_kernel[_grid_n(N, bn)](x, norm_w, eps, W, cs, conv_w, conv_b, dt_bias, xo, go, do, N, C=C,
                                             G=G, K=K, BLOCK_N=bn, BLOCK_K=bk, EVEN_N=N % bn == 0, num_warps=nw, num_stages=ns,
                                             **self._kw)

        scratch = None
        if self._needs("mamba_in", N, K):
            scratch = (conv_state.clone(), torch.empty_like(xbc_out), torch.empty_like(g_out), torch.empty_like(dt_out))
        cfg = self.tuner.get("mamba_in", N, K, bench=(lambda c: launch(c, *scratch)) if scratch else None)
        launch(cfg, conv_state, xbc_out, g_out, dt_out)

    def ssm_step(self, xbc, dt, A_log, state, y_out, nkv: int) -> None:
        nh, p, n = state.shape
        block_p = 8 if p % 8 == 0 else p
        _ssm_step_kernel[(nh, p // block_p)](xbc, dt, A_log, state, y_out, N_REP=nh // nkv, NKV=nkv, P=p, NS=n,
                                            BLOCK_P=block_p, num_warps=4, **self._kw)

    def gated_gemv_residual(self, y, g, gate_w, eps, W, x) -> None:
        N, K = W.shape
        hd = gate_w.shape[0]

        def launch(cfg, xo):
            bn, bk, nw, ns = cfg
            _gated_gemv_residual_kernel[_grid_n(N, bn)](y, g, gate_w, eps, W, xo, N, K=K, HD=hd, BLOCK_N=bn,
                                                        BLOCK_K=bk, EVEN_N=N % bn == 0, num_warps=nw, num_stages=ns, **self._kw)

        scratch = x.clone() if self._needs("gated_oproj", N, K) else None
        cfg = self.tuner.get("gated_oproj", N, K, bench=(lambda c: launch(c, scratch)) if scratch is not None else None,
                             constraint=lambda c: c[1] % hd == 0)
        if cfg[1] % hd:
            cfg = (cfg[0], hd * max(1, cfg[1] // hd), cfg[2], cfg[3])
        launch(cfg, x)

    def norm_gemv_swiglu(self, x, norm_w, eps, W1, W3, h_out) -> None:
        N, K = W1.shape

        def launch(cfg, ho):
            bn, bk, nw, ns = cfg
            _swiglu_kernel[_grid_n(N, bn)](x, norm_w, eps, W1, W3, ho, N, K=K, BLOCK_N=bn, BLOCK_K=bk,
                                           EVEN_N=N % bn == 0, num_warps=nw, num_stages=ns, **self._kw)

        scratch = torch.empty_like(h_out) if self._needs("swiglu", N, K) else None
        cfg = self.tuner.get("swiglu", N, K, bench=(lambda c: launch(c, scratch)) if scratch is not None else None)
        launch(cfg, h_out)

    def gemv_residual(self, v, W, x) -> None:
        N, K = W.shape

        def launch(cfg, xo):
            bn, bk, nw, ns = cfg
            _gemv_residual_kernel[_grid_n(N, bn)](v, W, xo, N, K=K, BLOCK_N=bn, BLOCK_K=bk, EVEN_N=N % bn == 0,
                                                  num_warps=nw, num_stages=ns, **self._kw)

        scratch = x.clone() if self._needs("gemv_residual", N, K) else None
        cfg = self.tuner.get("gemv_residual", N, K,
                             bench=(lambda c: launch(c, scratch)) if scratch is not None else None)
        launch(cfg, x)

    def norm_gemv(self, x, norm_w, eps, W, out) -> None:
        N, K = W.shape

        def launch(cfg, o):
            bn, bk, nw, ns = cfg
            _norm_gemv_kernel[_grid_n(N, bn)](x, norm_w, eps, W, o, None, N, K=K, BLOCK_N=bn, BLOCK_K=bk,
                                              EVEN_N=N % bn == 0, num_warps=nw, num_stages=ns, **self._kw)

        scratch = torch.empty_like(out) if self._needs("norm_gemv", N, K) else None
        cfg = self.tuner.get("norm_gemv", N, K, bench=(lambda c: launch(c, scratch)) if scratch is not None else None)
        launch(cfg, out)

    def norm_gemv_argmax(self, x, norm_w, eps, W, out, key, tok, pos) -> None:
        """The output head, then tok = argmax(out) (first index on ties) and pos += 1; ``key`` [1] int64 holds
        ``KEY_EMPTY`` between steps (allocate it with :func:`new_argmax_key`)."""
        N, K = W.shape

        def launch(cfg, o, kk):
            bn, bk, nw, ns = cfg
            _norm_gemv_kernel[_grid_n(N, bn)](x, norm_w, eps, W, o, kk, N, K=K, BLOCK_N=bn, BLOCK_K=bk,
                                              EVEN_N=N % bn == 0, ARGMAX=True, num_warps=nw, num_stages=ns,
                                              **self._kw)

        scratch = (torch.empty_like(out), new_argmax_key(out.device)) if self._needs("head_argmax", N, K) else None
        cfg = self.tuner.get("head_argmax", N, K, bench=(lambda c: launch(c, *scratch)) if scratch else None)
        launch(cfg, out, key)
        _argmax_finish_kernel[(1,)](key, tok, pos, num_warps=1, **self._kw)

    def attn_plan(self, nh: int, nkv: int, hd: int, max_len: int, device) -> "AttnPlan":
        """The split-KV workspace for a cache of ``max_len`` tokens, in the tuner's configuration."""
        cfg = self.tuner.get("attn", nkv * hd, max_len, candidates=ATTN_CANDIDATES, default=ATTN_DEFAULT)
        return AttnPlan(nh, hd, max_len, device, *cfg)

    def norm_gemv_qkv_rope(self, x, norm_w, eps, W, cos_t, sin_t, pos, k_cache, v_cache, q_out, n_rep: int) -> None:
        N, K = W.shape
        nkv, T, hd = k_cache.shape

        def launch(cfg, kc, vc, qo):
            bn, bk, nw, ns = cfg
            grid = (N // hd * (hd // 2 // bn),)
            _qkv_rope_kernel[grid](x, norm_w, eps, W, cos_t, sin_t, pos, kc, vc, qo, T, K=K, HD=hd, N_REP=n_rep,
                                   BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns, **self._kw)

        scratch = None
        if self._needs("qkv_rope", N, K):
            # k/v writes land at ``pos`` only; a scratch copy of one cache head would do, but the write is
            # idempotent (same values at the same place), so the live caches are safe to use while tuning.
            scratch = (k_cache, v_cache, torch.empty_like(q_out))
        cfg = self.tuner.get("qkv_rope", N, K, bench=(lambda c: launch(c, *scratch)) if scratch else None,
                             constraint=lambda c: (hd // 2) % c[0] == 0)
        launch(cfg, k_cache, v_cache, q_out)

    def attn_decode(self, q, k_cache, v_cache, pos, out, plan: "AttnPlan") -> None:
        nkv, T, hd = k_cache.shape
        nh = q.numel() // hd
        _attn_split_kernel[(nkv, plan.n_splits)](q, k_cache, v_cache, pos, plan.m, plan.l, plan.o, T, plan.n_splits,
                                                 LOG2E / math.sqrt(hd), plan.split, N_REP=nh // nkv, HD=hd,
                                                 BLOCK_T=plan.block_t, STATIC_SPLIT=plan.split if INTERPRET else 0,
                                                 num_warps=plan.num_warps, num_stages=plan.num_stages, **self._kw)
        _attn_combine_kernel[(nh,)](plan.m, plan.l, plan.o, out, plan.n_splits, HD=hd, BLOCK_S=32,
                                    N_CHUNKS=triton.cdiv(plan.n_splits, 32), num_warps=4, **self._kw)


def new_argmax_key(device) -> torch.Tensor:
    """The [1] int64 buffer :meth:`TritonOps.norm_gemv_argmax` folds the greedy pick into."""
    return torch.full((1,), KEY_EMPTY, dtype=torch.int64, device=device)


class AttnPlan:
    """Split-KV workspace for one cache size: ``split`` tokens per program, ``n_splits`` programs per KV head."""

    def __init__(self, nh: int, hd: int, max_len: int, device, target_splits: int = 64, block_t: int = 64,
                 num_warps: int = 4, num_stages: int = 3):
        self.block_t, self.num_warps, self.num_stages = block_t, num_warps, num_stages
        self.split = max(block_t, triton.cdiv(triton.cdiv(max_len, target_splits), block_t) * block_t)
        self.n_splits = triton.cdiv(max_len, self.split)
        self.m = torch.empty(nh, self.n_splits, device=device, dtype=torch.float32)
        self.l = torch.empty(nh, self.n_splits, device=device, dtype=torch.float32)
        self.o = torch.empty(nh, self.n_splits, hd, device=device, dtype=torch.float32)
