"""Models for the profiler: a preset with random weights built directly on the device, or a checkpoint dir."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mmmamba_bench.config import PRESETS, preset
from mmmamba_bench.model.stack import MMMambaChatModel

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def model_label(spec: str) -> str:
    return spec if spec in PRESETS else Path(spec).name


def build_model(spec: str, device: torch.device, dtype: torch.dtype, ssd_backend: str = "auto",
                seed: int = 0) -> MMMambaChatModel:
    """A preset name (random weights of the real shapes, created on ``device`` in ``dtype``: no float32 copy and
    no host round trip) or a checkpoint directory (loaded with :func:`mmmamba_bench.checkpoint.load_model`)."""
    if spec in PRESETS:
        torch.manual_seed(seed)
        with torch.device(device), _default_dtype(dtype if dtype.is_floating_point else torch.float32):
            model = MMMambaChatModel(preset(spec), ssd_backend=ssd_backend)
        model = model.to(dtype).eval()
        model.set_ssd_backend(ssd_backend)
        return model
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
    from mmmamba_bench.checkpoint import load_model

    return load_model(path, device=device, dtype=dtype, ssd_backend=ssd_backend).eval()
