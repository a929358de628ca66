"""Choosing the implementation of the SSD scan and the one-token state update.

Backends (each computes exactly what :mod:`mmmamba_bench.ops.ssd` defines, within the dtype's tolerance):

- ``torch``: :func:`~mmmamba_bench.ops.ssd.ssd_chunked` and :func:`~mmmamba_bench.ops.ssd.ssd_step`; always there.
- ``mamba_ssm``: mamba-ssm's Triton kernels ``mamba_chunk_scan_combined`` and ``selective_state_update`` (CUDA only).
- ``fla``: flash-linear-attention's ``chunk_simple_gla`` for the scan (CUDA only; the step stays ``torch``).

``resolve_backend("auto", device)`` picks the first importable kernel backend on CUDA and ``torch`` elsewhere; an
explicit name that cannot be used raises instead of falling back. The choice is logged once per process and
device, and the model records it (``model.code_path``) so every result row can say which path ran.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from dataclasses import dataclass
from typing import Callable

import torch

from mmmamba_bench.ops import ssd

log = logging.getLogger(__name__)

BACKENDS = ("torch", "mamba_ssm", "fla")
_AUTO_ORDER = ("mamba_ssm", "fla")
_announced: set[tuple[str, str]] = set()

ScanFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
StepFn = Callable[..., torch.Tensor]


class BackendUnavailable(RuntimeError):
    """An explicitly requested kernel backend cannot run here (not installed, or no CUDA device)."""


@dataclass(frozen=True)
class SSDBackend:
    name: str  # of the scan
    step_name: str  # of the one-token update
    scan: ScanFn  # (x, dt, A, B, C, initial_state=None) -> (y, final_state fp32)
    step: StepFn  # (state, x, dt, A, B, C) -> y, updating state in place


def _torch_backend() -> SSDBackend:
    return SSDBackend("torch", "torch", lambda x, dt, A, B, C, initial_state=None:
                      ssd.ssd_chunked(x, dt, A, B, C, initial_state=initial_state), ssd.ssd_step)


def _import_mamba_triton() -> tuple[types.ModuleType, types.ModuleType]:
    """Import mamba-ssm's Triton modules.

    A Python-only mamba-ssm build (no compiled CUDA extension) cannot run ``mamba_ssm/__init__.py``, which imports
    the extension; its Triton modules work regardless. When the normal import fails for that reason, register the
    package without running its ``__init__`` and import the two Triton submodules directly.
    """
    names = ("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.triton.selective_state_update")
    try:
        return tuple(importlib.import_module(n) for n in names)  # type: ignore[return-value]
    except ImportError:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            raise
        for key in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
            del sys.modules[key]
        package = importlib.util.module_from_spec(spec)  # not executed: skips the extension import
        sys.modules["mamba_ssm"] = package
        return tuple(importlib.import_module(n) for n in names)  # type: ignore[return-value]


def _mamba_ssm_backend() -> SSDBackend:
    combined, ssu = _import_mamba_triton()

    def scan(x, dt, A, B, C, initial_state=None):
        y, final = combined.mamba_chunk_scan_combined(
            x, dt, A.float(), B, C, chunk_size=256, D=None, z=None, dt_bias=None,
            initial_states=None if initial_state is None else initial_state.float(),  # read as float32
            dt_softplus=False, return_final_states=True)
        return y, final.float()

    def step(state, x, dt, A, B, C):
        b, h, p = x.shape
        n = B.shape[-1]
        # selective_state_update's multi-head form: dt [b, h, p], A [h, p, n] (stride-0 views), D / dt_bias given as
        # zeros because None crashes in the released kernel.
        dt_e = dt[..., None].expand(b, h, p)
        A_e = A.float()[:, None, None].expand(h, p, n)
        zeros = torch.zeros(h, p, dtype=torch.float32, device=x.device)
        return ssu.selective_state_update(state, x, dt_e, A_e, B, C, D=zeros, z=None, dt_bias=zeros,
                                          dt_softplus=False)

    return SSDBackend("mamba_ssm", "mamba_ssm", scan, step)


def _fla_backend() -> SSDBackend:
    from fla.ops.simple_gla import chunk_simple_gla

    def scan(x, dt, A, B, C, initial_state=None):
        # Mamba-2's SSD as gated linear attention: q = C, k = B, v = x dt, per-step log decay g = dt A, no scale.
        # fla keeps the state as [b, h, n(k), p(v)]: the transpose of ours.
        init = None if initial_state is None else initial_state.transpose(-1, -2).float().contiguous()
        y, final = chunk_simple_gla(q=C, k=B, v=(x * dt[..., None]).to(x.dtype), g=(dt * A).float(), scale=1.0,
                                    initial_state=init, output_final_state=True)
        return y, final.transpose(-1, -2).float()

    return SSDBackend("fla", "torch", scan, ssd.ssd_step)


_FACTORIES: dict[str, Callable[[], SSDBackend]] = {
    "torch": _torch_backend, "mamba_ssm": _mamba_ssm_backend, "fla": _fla_backend}


def resolve_backend(name: str = "auto", device: torch.device | str = "cpu") -> SSDBackend:
    """Return the SSD backend to use on ``device``; ``name`` is ``auto`` or one of :data:`BACKENDS`."""
    device = torch.device(device)
    if name == "auto":
        chosen = _torch_backend()
        reason = "no CUDA device" if device.type != "cuda" else "no kernel package importable"
        if device.type == "cuda":
            for candidate in _AUTO_ORDER:
                try:
                    chosen = _FACTORIES[candidate]()
                    reason = "first importable kernel backend"
                    break
                except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
                    log.debug("SSD backend %s unavailable: %s", candidate, exc)
        _announce(chosen, device, reason)
        return chosen
    if name not in _FACTORIES:
        raise ValueError(f"unknown SSD backend {name!r}; choose from {('auto',) + BACKENDS}")
    if name != "torch" and device.type != "cuda":
        raise BackendUnavailable(f"SSD backend {name!r} needs a CUDA device (got {device})")
    try:
        chosen = _FACTORIES[name]()
    except Exception as exc:  # noqa: BLE001
        raise BackendUnavailable(f"SSD backend {name!r} is not importable: {exc}") from exc
    _announce(chosen, device, "requested")
    return chosen


def _announce(backend: SSDBackend, device: torch.device, reason: str) -> None:
    key = (f"{backend.name}/{backend.step_name}", str(device))
    if key not in _announced:
        _announced.add(key)
        log.info("SSD scan: %s, state update: %s on %s (%s)", backend.name, backend.step_name, device, reason)
