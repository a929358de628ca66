"""The SSD scan paths against the definition (the naive recurrence), on fresh random inputs."""

import pytest
import torch
import torch.nn.functional as F

from mmmamba_bench.model.mamba2 import causal_conv_width2, causal_conv_width2_ref
from mmmamba_bench.ops import ssd
from mmmamba_bench.ops.backends import BackendUnavailable, resolve_backend
from tests.helpers import RTOL, rel_err


def random_inputs(b, L, h, p, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, L, h, generator=g, dtype=torch.float64) - 1)
    A = -torch.exp(torch.rand(h, generator=g, dtype=torch.float64) * 2 - 1)
    B = torch.randn(b, L, h, n, generator=g, dtype=torch.float64) / n**0.5
    C = torch.randn(b, L, h, n, generator=g, dtype=torch.float64) / n**0.5
    s0 = torch.randn(b, h, p, n, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, dt, A, B, C)], s0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("L,chunk", [(1, 16), (37, 16), (64, 16), (100, 32), (129, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_naive(dtype, L, chunk, with_state):
    (x, dt, A, B, C), s0 = random_inputs(2, L, 3, 8, 6, dtype, seed=L * 7 + chunk)
    init = s0 if with_state else None
    y_ref, s_ref = ssd.ssd_naive(x.double(), dt.double(), A.double(), B.double(), C.double(), init)
    y, s = ssd.ssd_chunked(x, dt, A, B, C, chunk_size=chunk, initial_state=init)
    assert y.dtype == dtype
    assert rel_err(y, y_ref) < RTOL[dtype]
    assert rel_err(s, s_ref) < RTOL[dtype]


def test_chunked_is_sensitive():
    """A wrong decay (here: dropping the inter-chunk carry) must be caught by the comparison above."""
    (x, dt, A, B, C), s0 = random_inputs(1, 48, 2, 4, 4, torch.float64, seed=3)
    y_ref, _ = ssd.ssd_naive(x, dt, A, B, C)
    y_bad = torch.cat([ssd.ssd_chunked(x[:, i:i + 16], dt[:, i:i + 16], A, B[:, i:i + 16], C[:, i:i + 16],
                                       chunk_size=16)[0] for i in range(0, 48, 16)], dim=1)
    assert rel_err(y_bad, y_ref) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_matches_naive(dtype):
    (x, dt, A, B, C), s0 = random_inputs(2, 9, 3, 8, 6, dtype, seed=11)
    y_ref, s_ref = ssd.ssd_naive(x.double(), dt.double(), A.double(), B.double(), C.double(), s0)
    state = s0.to(torch.float64 if dtype == torch.float64 else torch.float32).clone()
    ys = [ssd.ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t]) for t in range(9)]
    assert rel_err(torch.stack(ys, 1), y_ref) < RTOL[dtype]
    assert rel_err(state, s_ref) < RTOL[dtype]


def test_split_scan_carries_state():
    """Scanning in two pieces with the carried state equals one scan (what chunked prefill relies on)."""
    (x, dt, A, B, C), _ = random_inputs(1, 50, 2, 4, 4, torch.float64, seed=5)
    y_all, s_all = ssd.ssd_chunked(x, dt, A, B, C, chunk_size=16)
    y1, s1 = ssd.ssd_chunked(x[:, :23], dt[:, :23], A, B[:, :23], C[:, :23], chunk_size=16)
    y2, s2 = ssd.ssd_chunked(x[:, 23:], dt[:, 23:], A, B[:, 23:], C[:, 23:], chunk_size=16, initial_state=s1)
    assert rel_err(torch.cat([y1, y2], 1), y_all) < 1e-12
    assert rel_err(s2, s_all) < 1e-12


@pytest.mark.parametrize("with_prev", [False, True])
def test_causal_conv_matches_conv1d(with_prev):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 1, 2, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    if with_prev:  # continuing a sequence: the previous token comes from the state
        full = causal_conv_width2_ref(x, w, b)
        out = causal_conv_width2(x[:, 3:], w, b, prev=x[:, 2])
        assert rel_err(out, full[:, 3:]) < 1e-14
    else:
        assert rel_err(causal_conv_width2(x, w, b, None), causal_conv_width2_ref(x, w, b)) < 1e-14


def test_backend_resolution_on_cpu():
    assert resolve_backend("auto", "cpu").name == "torch"
    assert resolve_backend("torch", "cpu").name == "torch"
    with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
        resolve_backend("mamba_ssm", "cpu")
    with pytest.raises(ValueError, match="unknown SSD backend"):
        resolve_backend("cudnn", "cpu")
