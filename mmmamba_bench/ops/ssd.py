"""The Mamba-2 state-space recurrence (SSD) in plain PyTorch: the definition, a chunked scan, a one-token step.

Notation (per batch b, time t, head h), following mamba_ssm:

    x: [b, L, h, p]   values (the mixer's v, KV heads already repeated to h heads)
    dt: [b, L, h]     step sizes, already softplus(dt + dt_bias)
    A: [h]            negative decay rates, A = -exp(A_log_bias)
    B: [b, L, h, n]   input projections (the mixer's k)
    C: [b, L, h, n]   output projections (the mixer's q)
    state S: [b, h, p, n]

    S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,      y_t = S_t C_t      (no D term)

``ssd_naive`` is that loop, the definition every other path is tested against. ``ssd_chunked`` is the
block decomposition of the SSD paper (Dao & Gu 2024, "minimal SSD" listing) extended with an initial state and
lengths that are not a multiple of the chunk size; it is the default path on CPU and GPU. ``ssd_step`` updates a
decode state in place for one token. All three compute in float32 (or float64 if given float64) and return
``y`` in the input dtype and the state in float32/float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def ssd_naive(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence, one token at a time. Returns ``(y [b, L, h, p], final_state [b, h, p, n])``."""
    cd = _compute_dtype(x)
    b, L, h, p = x.shape
    n = B.shape[-1]
    S = (torch.zeros(b, h, p, n, dtype=cd, device=x.device) if initial_state is None
         else initial_state.to(cd).clone())
    xs, dts, Bs, Cs, As = x.to(cd), dt.to(cd), B.to(cd), C.to(cd), A.to(cd)
    ys = []
    for t in range(L):
        decay = torch.exp(dts[:, t] * As)  # [b, h]
        S = decay[:, :, None, None] * S + (dts[:, t, :, None] * xs[:, t])[..., None] * Bs[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Cs[:, t]))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=cd)
    return y.to(x.dtype), S


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: out[..., i, j] = sum(a[..., j+1 : i+1]) for j <= i, -inf above the diagonal.

    a: [..., T] -> [..., T, T]
    """
    T = a.size(-1)
    a = a[..., None].expand(*a.shape, T)  # [..., T(i), T(j)] holding a[i]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~below, 0)
    out = torch.cumsum(a, dim=-2)
    on_or_below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=0)
    return out.masked_fill(~on_or_below, float("-inf"))


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int = 64, initial_state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan (quadratic within a chunk, a recurrence across chunks).

    Returns ``(y [b, L, h, p] in x.dtype, final_state [b, h, p, n] in float32/float64)``.
    """
    cd = _compute_dtype(x)
    b, L, h, p = x.shape
    n = B.shape[-1]
    if L == 0:
        state = (torch.zeros(b, h, p, n, dtype=cd, device=x.device) if initial_state is None
                 else initial_state.to(cd).clone())
        return x.new_zeros(b, 0, h, p), state
    pad = (-L) % chunk_size
    # Padding with dt = 0 leaves the state untouched (decay 1, no input), so the final state stays exact.
    xs = F.pad(x.to(cd) * dt.to(cd)[..., None], (0, 0, 0, 0, 0, pad))  # [b, L', h, p]
    a = F.pad(dt.to(cd) * A.to(cd), (0, 0, 0, pad))  # [b, L', h]
    Bs = F.pad(B.to(cd), (0, 0, 0, 0, 0, pad))
    Cs = F.pad(C.to(cd), (0, 0, 0, 0, 0, pad))
    c = xs.shape[1] // chunk_size
    xs = xs.view(b, c, chunk_size, h, p)
    Bs = Bs.view(b, c, chunk_size, h, n)
    Cs = Cs.view(b, c, chunk_size, h, n)
    a = a.view(b, c, chunk_size, h).permute(0, 3, 1, 2)  # [b, h, c, l]
    a_cum = torch.cumsum(a, dim=-1)  # [b, h, c, l]

    # 1. Within each chunk: y_diag[l] = sum_{s<=l} (C_l . B_s) exp(a_cum[l] - a_cum[s]) x_s dt_s
    decay_in = torch.exp(_segsum(a))  # [b, h, c, l, s]
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cs, Bs, decay_in, xs)

    # 2. Each chunk's contribution to the state at its end.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [b, h, c, l]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bs, decay_to_end, xs)  # [b, c, h, p, n]

    # 3. Across chunks: the state entering each chunk (and the final state).
    init = (torch.zeros(b, 1, h, p, n, dtype=cd, device=x.device) if initial_state is None
            else initial_state.to(cd)[:, None])
    states = torch.cat([init, chunk_states], dim=1)  # [b, c+1, h, p, n]
    decay_chunk = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 4. The entering state's contribution to each position.
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cs, entering, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(b, c * chunk_size, h, p)[:, :L]
    return y.to(x.dtype), final_state


def ssd_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor) -> torch.Tensor:
    """One decode step, updating ``state [b, h, p, n]`` in place.

    x: [b, h, p], dt: [b, h], B, C: [b, h, n]. Returns y: [b, h, p] in x.dtype.
    """
    cd = state.dtype
    decay = torch.exp(dt.to(cd) * A.to(cd))  # [b, h]
    state.mul_(decay[:, :, None, None])
    state.add_((dt.to(cd)[..., None] * x.to(cd))[..., None] * B.to(cd)[:, :, None, :])
    return torch.einsum("bhpn,bhn->bhp", state, C.to(cd)).to(x.dtype)
