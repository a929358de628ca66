"""mmmamba-bench: evaluate, profile and build mmMamba-linear / mmMamba-hybrid and their HoVLE teacher.

Public API::

    from mmmamba_bench import load_model
    model = load_model("path/to/checkpoint", device="cpu", dtype=torch.float32)

Importing the package does one thing besides defining names: when transformers is installed, it registers the
released checkpoint families with transformers' Auto classes (``mmmamba_bench.hf.register(processor=False)``:
``AutoConfig`` for model_types ``internvl_chat`` (HoVLE) and ``mmMamba_chat`` (mmMamba), ``AutoModel`` and
``AutoModelForCausalLM`` through stand-ins that import the model code on first use), so that
``AutoModelForCausalLM.from_pretrained(DIR)`` loads a released directory without ``trust_remote_code``. This
imports transformers' config module and torch (several seconds); without transformers it is skipped silently.
``mmmamba_bench.hf.unregister()`` undoes it, e.g. to load another InternVL ``internvl_chat`` checkpoint with its
own remote code in the same process.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "convert", "__version__"]


def __getattr__(name: str):
    # Lazy re-exports: the model code (and any optional backend) is imported on first use.
    if name in ("load_model", "save_model"):
        from mmmamba_bench import checkpoint

        return getattr(checkpoint, name)
    if name == "convert":
        from mmmamba_bench.seeding import convert

        return convert
    raise AttributeError(f"module 'mmmamba_bench' has no attribute {name!r}")


def _register_with_transformers() -> None:
    from importlib.util import find_spec

    if find_spec("transformers") is None:
        return  # transformers is optional
    from mmmamba_bench.hf import register

    try:
        register(processor=False)
    except ImportError as exc:  # an installed transformers without the 5.x API: say so, keep the package usable
        import warnings

        warnings.warn(f"mmmamba_bench: could not register with transformers' Auto classes ({exc}); "
                      f"AutoModel will not know HoVLE / mmMamba checkpoints (needs transformers 5.x)", stacklevel=2)


_register_with_transformers()
