"""Shared test helpers: tolerances from the dtype, relative error, small random models."""

from __future__ import annotations

from pathlib import Path

import torch

from mmmamba_bench.config import ChatConfig, preset
from mmmamba_bench.model.stack import MMMambaChatModel

# ||out - ref|| / ||ref|| bounds, set from the dtype's precision (not tuned to pass).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


KIND_LAYOUTS = {
    "transformer": ["mha", "mha", "mha", "mha"],
    "linear": ["mamba2", "mamba2", "mamba2", "mamba2"],
    "hybrid": ["mha", "mamba2", "mamba2", "mha"],
}


def random_model(kind: str, dtype=torch.float64, seed: int = 0, normalize: bool = False) -> MMMambaChatModel:
    """The ``tiny`` preset with random weights of O(1) activations and realistic SSM parameters."""
    cfg: ChatConfig = preset("tiny").with_block_types(KIND_LAYOUTS[kind])
    cfg.normalize_encoder_output = normalize
    gen = torch.Generator().manual_seed(seed)
    model = MMMambaChatModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log_bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
            elif name.endswith("dt_bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 3)
            elif name.endswith("norm.weight") or name.endswith("gate.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.08)
    return model.to(dtype).eval()


def image_prompt(model: MMMambaChatModel, n_tiles: int = 1, text_len: int = 10, batch: int = 1, seed: int = 1):
    """input_ids [B, L] with ``<img>`` + context tokens + ``</img>`` + random text, and matching pixel_values."""
    cfg = model.config.embedding_config
    gen = torch.Generator().manual_seed(seed)
    sp = cfg.special_token_maps
    ids = [sp["<img>"]] + [cfg.img_context_token_id] * (cfg.tokens_per_tile * n_tiles) + [sp["</img>"]]
    rows = [ids + torch.randint(0, cfg.llm_vocab_size, (text_len,), generator=gen).tolist() for _ in range(batch)]
    pv = torch.randn(n_tiles * batch, 3, cfg.image_size, cfg.image_size, generator=gen)
    return torch.tensor(rows), pv


def assert_cli_refuses_in_one_line(argv: list[str], extra: list[str], message: str, capsys, out: Path) -> None:
    """``mmmamba-bench argv + extra`` exits 2 with one stderr line holding ``message`` and creates nothing at
    ``out``; skipped when ``--cost`` is given and a CUDA GPU is visible (measured cost is then allowed)."""
    import pytest

    from mmmamba_bench.cli import main

    if "--cost" in extra and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: --cost measured is allowed")
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()

