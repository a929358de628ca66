"""Which code a baseline's library actually ran, for the ``path`` of every speed row (no silent fallbacks).

transformers' Mamba resolves each of its kernels once, when ``modeling_mamba`` is imported: mamba_ssm's /
causal_conv1d's function when that package imports, else its own PyTorch reference (``use_kernel_func_from_hub_
with_fallback``). :func:`mamba_kernels` reads what each function resolved to, and why a package did not import
(on the lent GPU: mamba_ssm is a Python-only build whose ``__init__`` imports the absent ``selective_scan_cuda``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

MAMBA_FUNCTIONS = ("mamba_selective_scan", "mamba_selective_state_update", "causal_conv1d_fn",
                   "causal_conv1d_update", "mamba_inner_fn")


def version(package: str) -> str:
    try:
        return str(getattr(importlib.import_module(package), "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        return f"not importable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


def import_status(package: str) -> str:
    """``"ok <version>"`` or why ``import package`` fails."""
    try:
        mod = importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001
        return f"import failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return f"ok {getattr(mod, '__version__', '?')}"


def resolved_implementation(fn: Any) -> str:
    """What a ``use_kernel_func_from_hub_with_fallback``-wrapped function calls: ``"torch (transformers
    reference)"`` or the kernel's ``module.name``; ``"unknown (...)"`` when the wrapper is not the one read here."""
    try:
        impl = inspect.getclosurevars(fn).nonlocals.get("implementation")
    except (TypeError, ValueError) as exc:
        return f"unknown ({type(exc).__name__})"
    if impl is None:
        return "unknown (no resolved implementation found on the wrapper)"
    if impl is getattr(fn, "__wrapped__", None):
        return "torch (transformers reference)"
    return f"{getattr(impl, '__module__', '?')}.{getattr(impl, '__qualname__', repr(impl))}"


def mamba_kernels() -> dict[str, str]:
    """``{function: implementation}`` for transformers' Mamba, plus the import status of mamba_ssm and
    causal_conv1d (the packages it would take kernels from)."""
    from transformers.models.mamba import modeling_mamba

    out = {f"mamba.{name}": resolved_implementation(getattr(modeling_mamba, name)) for name in MAMBA_FUNCTIONS
           if hasattr(modeling_mamba, name)}
    out["mamba_ssm"] = import_status("mamba_ssm")
    out["causal_conv1d"] = import_status("causal_conv1d")
    out["mambapy"] = import_status("mambapy")
    return out


def attention_of(module: Any) -> str:
    config = getattr(module, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "-")


def library_path(model: Any) -> dict[str, str]:
    """The libraries and classes a :class:`~mmmamba_bench.baselines.build.BaselineVLM` runs, with their kernels."""
    spec = model.spec
    path = {"framework": f"transformers {version('transformers')}", "llm": spec.llm.class_name,
            "llm_attention": attention_of(model.llm) if spec.kind == "transformer" else "-",
            "vision": "+".join(v.class_name for v in spec.vision),
            "vision_attention": "+".join(attention_of(t) for t in model.towers),
            "projector": f"{spec.projector} (torch.nn)"}
    if spec.llm.class_name.startswith("Mamba"):
        path.update(mamba_kernels())
    if spec.llm.package == "fla":
        path["fla"] = version("fla")
        path["triton"] = version("triton")
        mode = getattr(model.llm.config, "attn_mode", "?")
        path["fla_kernels"] = f"{mode} (prompt) / fused_recurrent (steps of <= 64 tokens)"
        path["fuse_norm"] = str(getattr(model.llm.config, "fuse_norm", "?"))
    return path
