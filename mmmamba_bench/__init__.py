"""mmmamba-bench: evaluate, profile and build mmMamba-linear / mmMamba-hybrid and their HoVLE teacher.

Public API::

    from mmmamba_bench import load_model
    model = load_model("path/to/checkpoint", device="cpu", dtype=torch.float32)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "convert", "__version__"]


def __getattr__(name: str):
    # Lazy re-exports: importing the package does not import torch or any optional backend.
    if name in ("load_model", "save_model"):
        from mmmamba_bench import checkpoint

        return getattr(checkpoint, name)
    if name == "convert":
        from mmmamba_bench.seeding import convert

        return convert
    raise AttributeError(f"module 'mmmamba_bench' has no attribute {name!r}")
