"""Full-size presets build on the meta device with the paper's parameter counts."""

import pytest
import torch

from mmmamba_bench.config import PRESETS, ChatConfig, preset
from mmmamba_bench.model.stack import MMMambaChatModel


def count(name: str) -> tuple[int, int]:
    with torch.device("meta"):
        model = MMMambaChatModel(preset(name))
    total = sum(p.numel() for p in model.parameters())
    mixer = sum(p.numel() for n, p in model.named_parameters() if ".attention.wvkqgdt" in n)
    return total, mixer


def test_hovle_is_2_6b():
    total, _ = count("hovle-2.6b")
    assert 2.55e9 < total < 2.65e9  # paper: 2.6B


@pytest.mark.parametrize("name,trainable_pct", [("mmmamba-linear", 14.7), ("mmmamba-hybrid", 11.2)])
def test_mmmamba_is_2_7b_with_paper_trainable_share(name, trainable_pct):
    total, mixer = count(name)
    assert 2.65e9 < total < 2.75e9  # paper: 2.7B
    # The distilled parameters are the Mamba-2 input projections (q/k/v/g/dt rows) plus tiny extras: Table 1's "# T.P.".
    assert abs(100 * mixer / total - trainable_pct) < 0.3


def test_hybrid_layout_and_shapes():
    cfg = preset("mmmamba-hybrid")
    assert [i for i, t in enumerate(cfg.block_types) if t == "mha"] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert cfg.embedding_config.tokens_per_tile == 256 and cfg.embedding_config.head_dim == 128


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    assert ChatConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
