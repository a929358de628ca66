"""Fused decode kernels (mmmamba_bench.fast.triton_ops) vs their plain-PyTorch twins, and the SSD kernel backends
(ops.backends: mamba_ssm, fla) vs the recurrence, on fresh random inputs.

GPU tests: skipped without CUDA (run through the device tool). With ``TRITON_INTERPRET=1`` the fused-kernel tests
also run on the CPU through Triton's interpreter (slow; small shapes).
"""

from __future__ import annotations

import math
import os
import zlib

import pytest
import torch

from mmmamba_bench.fast import torch_ops
from tests.helpers import rel_err

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (HAS_CUDA or INTERPRET), reason="needs CUDA (or TRITON_INTERPRET=1)")]
DEV = "cuda" if HAS_CUDA else "cpu"
BF = torch.bfloat16
# bf16 tolerance; Triton's interpreter truncates float32 -> bf16 instead of rounding to nearest, which biases
# chains of roundings by up to a few per cent, so it gets a wider bound (the GPU keeps 1e-2).
RTOL_BF16 = 1e-2 if HAS_CUDA else 4e-2

# (H, nh, nkv, hd, I, V): the real shapes on the GPU, small ones under the interpreter; and the embedded demo
# teacher's, whose MLP width (384) is not a power of two.
DEMO_SHAPE = (128, 4, 2, 32, 384, 1000)
SHAPES = [(2048, 16, 8, 128, 8192, 92553), DEMO_SHAPE] if HAS_CUDA else [(256, 4, 2, 32, 512, 1000), DEMO_SHAPE]


def _ops():
    pytest.importorskip("triton")
    from mmmamba_bench.fast.triton_ops import GemvTuner, TritonOps

    return TritonOps(GemvTuner(tune=False))


def _rand(*shape, scale=1.0, dtype=BF, gen=None):
    return (torch.randn(*shape, generator=gen, device="cpu") * scale).to(DEV, dtype)


@pytest.fixture
def gen(request):
    # a stable seed per test (Python's hash() of a string is salted per process)
    return torch.Generator().manual_seed(zlib.crc32(request.node.name.encode()))


@pytest.mark.parametrize("shape", SHAPES)
def test_norm_gemv_family(shape, gen):
    H, nh, nkv, hd, I, V = shape
    ops = _ops()
    x, nw = _rand(H, gen=gen), (1 + 0.1 * torch.randn(H, generator=gen)).to(DEV, BF)
    W = _rand(V, H, scale=H ** -0.5, gen=gen)
    out, ref = torch.full((V,), float("nan"), device=DEV, dtype=BF), torch.empty(V, device=DEV, dtype=BF)
    ops.norm_gemv(x, nw, 1e-5, W, out)
    torch_ops.norm_gemv(x, nw, 1e-5, W, ref)
    assert not out.isnan().any() and rel_err(out, ref) < RTOL_BF16
    W1, W3 = _rand(I, H, scale=H ** -0.5, gen=gen), _rand(I, H, scale=H ** -0.5, gen=gen)
    h, href = torch.full((I,), float("nan"), device=DEV, dtype=BF), torch.empty(I, device=DEV, dtype=BF)
    ops.norm_gemv_swiglu(x, nw, 1e-5, W1, W3, h)
    torch_ops.norm_gemv_swiglu(x, nw, 1e-5, W1, W3, href)
    assert not h.isnan().any() and rel_err(h, href) < RTOL_BF16
    W2 = _rand(H, I, scale=I ** -0.5, gen=gen)
    xa, xb = x.clone(), x.clone()
    ops.gemv_residual(href, W2, xa)
    torch_ops.gemv_residual(href, W2, xb)
    assert rel_err(xa - x, xb - x) < RTOL_BF16


@pytest.mark.parametrize("shape", SHAPES)
def test_mamba_step_ops(shape, gen):
    H, nh, nkv, hd, I, V = shape
    ops = _ops()
    C, G = (2 * nkv + nh) * hd, nh * hd
    x, nw = _rand(H, gen=gen), (1 + 0.1 * torch.randn(H, generator=gen)).to(DEV, BF)
    W = _rand(C + G + nh, H, scale=H ** -0.5, gen=gen)
    conv_w, conv_b = _rand(C, 2, scale=0.5, gen=gen), _rand(C, scale=0.1, gen=gen)
    dt_bias = (torch.rand(nh, generator=gen) * 2 - 3).to(DEV, BF)
    cs0 = _rand(C, gen=gen)
    outs = []
    for impl in (ops, torch_ops):
        cs = cs0.clone()
        xbc = torch.full((C,), float("nan"), device=DEV, dtype=BF)
        g = torch.full((G,), float("nan"), device=DEV, dtype=BF)
        dt = torch.full((nh,), float("nan"), device=DEV, dtype=torch.float32)
        impl.norm_gemv_mamba_in(x, nw, 1e-5, W, cs, conv_w, conv_b, dt_bias, xbc, g, dt)
        outs.append((cs, xbc, g, dt))
    for a, b in zip(*outs):
        assert not a.isnan().any() and rel_err(a, b) < RTOL_BF16
    _, xbc, g, dt = outs[1]
    A_log = (torch.rand(nh, generator=gen) * 2 - 1).to(DEV, BF)
    S0 = torch.randn(nh, hd, hd, generator=gen).to(DEV) * 0.1
    res = []
    for impl in (ops, torch_ops):
        S = S0.clone()
        y = torch.full((G,), float("nan"), device=DEV, dtype=BF)
        impl.ssm_step(xbc, dt, A_log, S, y, nkv)
        res.append((S, y))
    assert rel_err(res[0][0], res[1][0]) < 1e-5  # the state stays float32
    assert not res[0][1].isnan().any() and rel_err(res[0][1], res[1][1]) < RTOL_BF16
    gate_w = (1 + 0.1 * torch.randn(hd, generator=gen)).to(DEV, BF)
    Wo = _rand(H, G, scale=G ** -0.5, gen=gen)
    xa, xb = x.clone(), x.clone()
    ops.gated_gemv_residual(res[1][1], g, gate_w, 1e-5, Wo, xa)
    torch_ops.gated_gemv_residual(res[1][1], g, gate_w, 1e-5, Wo, xb)
    assert rel_err(xa - x, xb - x) < RTOL_BF16


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("length", [1, 77, 1000])
def test_attention_ops(shape, length, gen):
    from mmmamba_bench.fast.triton_ops import AttnPlan

    H, nh, nkv, hd, I, V = shape
    ops = _ops()
    n_rep, T = nh // nkv, 1024
    x, nw = _rand(H, gen=gen), (1 + 0.1 * torch.randn(H, generator=gen)).to(DEV, BF)
    W = _rand((nh + 2 * nkv) * hd, H, scale=H ** -0.5, gen=gen)
    ang = torch.rand(T, hd // 2, generator=gen, dtype=torch.float64) * 2 * math.pi
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(DEV, BF)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(DEV, BF)
    pos = torch.tensor([length - 1], device=DEV)
    k0, v0 = _rand(nkv, T, hd, gen=gen), _rand(nkv, T, hd, gen=gen)
    got = []
    for impl in (ops, torch_ops):
        k, v = k0.clone(), v0.clone()
        q = torch.full((nh * hd,), float("nan"), device=DEV, dtype=BF)
        impl.norm_gemv_qkv_rope(x, nw, 1e-5, W, cos, sin, pos, k, v, q, n_rep)
        got.append((q, k, v))
    (qa, ka, va), (qb, kb, vb) = got
    assert not qa.isnan().any() and rel_err(qa, qb) < RTOL_BF16
    assert rel_err(ka[:, length - 1], kb[:, length - 1]) < RTOL_BF16
    assert rel_err(va[:, length - 1], vb[:, length - 1]) < RTOL_BF16
    assert torch.equal(ka[:, length:], k0[:, length:]) and torch.equal(ka[:, :length - 1], k0[:, :length - 1])
    for plan_kw in ({}, {"target_splits": 3}):
        plan = AttnPlan(nh, hd, T, DEV, **plan_kw)
        out = torch.full((nh * hd,), float("nan"), device=DEV, dtype=BF)
        ref = torch.empty(nh * hd, device=DEV, dtype=BF)
        ops.attn_decode(qb, kb, vb, pos, out, plan)
        torch_ops.attn_decode(qb, kb, vb, pos, ref)
        assert not out.isnan().any() and rel_err(out, ref) < RTOL_BF16


# ---- SSD kernel backends (CUDA only) ------------------------------------------------------------------------------

def _ssd_inputs(dtype, gen, b=2, L=300, h=4, p=32, n=32):
    x = torch.randn(b, L, h, p, generator=gen).to(DEV, dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, generator=gen) - 1).to(DEV)
    A = -torch.exp(torch.rand(h, generator=gen) * 2 - 1).to(DEV)
    B = (torch.randn(b, L, h, n, generator=gen) * 0.3).to(DEV, dtype)
    C = (torch.randn(b, L, h, n, generator=gen) * 0.3).to(DEV, dtype)
    S0 = (torch.randn(b, h, p, n, generator=gen) * 0.3).to(DEV)
    return x, dt, A, B, C, S0


@pytest.mark.skipif(not HAS_CUDA, reason="kernel backends need CUDA")
@pytest.mark.parametrize("backend", ["mamba_ssm", "fla"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ssd_backend_scan_and_step(backend, dtype, gen):
    from mmmamba_bench.ops import ssd
    from mmmamba_bench.ops.backends import BackendUnavailable, resolve_backend

    try:
        be = resolve_backend(backend, DEV)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    x, dt, A, B, C, S0 = _ssd_inputs(dtype, gen)
    f64 = [t.double() for t in (x, dt, A, B, C)]
    for init in (None, S0):
        y_ref, s_ref = ssd.ssd_naive(*f64, initial_state=None if init is None else init.double())
        y, s = be.scan(x, dt, A, B, C, initial_state=init)
        tol = 1e-2 if dtype == torch.bfloat16 else 3e-3  # Triton dots in tf32 for float32 inputs
        assert rel_err(y, y_ref) < tol, (backend, dtype, init is None)
        assert rel_err(s, s_ref) < tol
    state = S0.clone()
    state_ref = S0.double().clone()
    for t in range(3):
        y = be.step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        y_ref = ssd.ssd_step(state_ref, *(u.double() for u in (x[:, t], dt[:, t], A, B[:, t], C[:, t])))
        assert rel_err(y, y_ref) < (1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert rel_err(state, state_ref) < 1e-5


@pytest.mark.skipif(not HAS_CUDA, reason="kernel backends need CUDA")
def test_mamba_ssm_scan_backward_matches_the_plain_scan(gen):
    """Distillation trains through the SSD scan: mamba-ssm's Triton backward gives the gradients of the plain
    chunked scan (float32 inputs; Triton's dots run in tf32)."""
    from mmmamba_bench.ops import ssd
    from mmmamba_bench.ops.backends import BackendUnavailable, resolve_backend

    try:
        be = resolve_backend("mamba_ssm", DEV)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    x, dt, A, B, C, _ = _ssd_inputs(torch.float32, gen)
    w = torch.randn(x.shape, generator=gen).to(DEV)  # a random linear read-out of y
    grads = []
    for scan in (be.scan, lambda *a: ssd.ssd_chunked(*a)):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, dt, A, B, C)]
        y, _ = scan(*leaves)
        (y * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for name, g, g_ref in zip(("x", "dt", "A", "B", "C"), *grads):
        assert rel_err(g, g_ref) < 3e-3, name


def test_head_argmax_picks_the_first_maximum(gen):
    """The output head with the greedy pick folded in: logits as ``norm_gemv``, the token = torch.argmax of the
    bf16 logits (first index on ties, planted here by duplicating rows, with -0.0 == +0.0), the key reset for the
    next step and the position advanced."""
    ops = _ops()
    from mmmamba_bench.fast.triton_ops import KEY_EMPTY, new_argmax_key

    H, V = (2048, 92553) if HAS_CUDA else (256, 1000)
    x, nw = _rand(H, gen=gen), (1 + 0.1 * torch.randn(H, generator=gen)).to(DEV, BF)
    for trial in range(3):
        W = _rand(V, H, scale=H ** -0.5, gen=gen)
        ref = torch.empty(V, device=DEV, dtype=BF)
        torch_ops.norm_gemv(x, nw, 1e-5, W, ref)
        top = int(ref.float().argmax())
        if trial == 1:  # a tie for the maximum, the copy placed first and last
            W[0], W[V - 1] = W[top], W[top]
        if trial == 2:  # every logit zero, some -0.0: the first row wins
            W.zero_()
            W[:V // 2] = -0.0
        out, key = torch.empty(V, device=DEV, dtype=BF), new_argmax_key(DEV)
        tok, pos = torch.zeros(1, dtype=torch.long, device=DEV), torch.full((1,), 7, dtype=torch.long, device=DEV)
        ops.norm_gemv_argmax(x, nw, 1e-5, W, out, key, tok, pos)
        torch_ops.norm_gemv(x, nw, 1e-5, W, ref)
        assert rel_err(out, ref) < RTOL_BF16 or trial == 2
        assert int(tok) == int(torch.argmax(out)), f"trial {trial}"
        if trial == 1:
            assert int(tok) == 0
        if trial == 2:
            assert int(tok) == 0 and not out.any()
        assert int(key) == KEY_EMPTY and int(pos) == 8
        tok2, pos2 = tok.clone(), pos.clone()
        torch_ops.norm_gemv_argmax(x, nw, 1e-5, W, ref, key, tok2, pos2)  # the twin agrees on the token
        assert int(tok2) == int(torch.argmax(ref)) and int(pos2) == 9
