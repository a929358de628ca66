"""RoPE past ``max_position_embeddings`` follows each family's released code.

HoVLE's InternLM2 attention applies ``rope_scaling`` (dynamic NTK: the base is re-derived from the sequence length;
linear: positions divided by the factor); mmMamba's attention layers build their rotary embedding from
``rope_theta`` alone. Expected tables are computed by hand here, in float64, from those formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from mmmamba_bench.config import make_config
from mmmamba_bench.fast.decoder import rope_tables
from mmmamba_bench.model.stack import MMMambaChatModel
from tests.helpers import rel_err

MAX_POS = 16
THETA = {"embedding": 1000.0, "llm": 10_000.0}
HD = 16  # hidden 64 / 4 heads


def _config(family: str, scaling: dict | None, layout: list[str]):
    model_type = {"HoVLE": "internvl_chat", "mmMamba": "mmMamba_chat"}[family]
    cfg = make_config(hidden=64, heads=4, kv_heads=2, emb_layers=1, llm_layers=2, intermediate=128, vocab=64,
                      image_size=28, patch_size=14, block_types=layout, max_position_embeddings=MAX_POS,
                      rope_theta=THETA["llm"], rope_scaling=scaling, model_type=model_type)
    cfg.embedding_config.rope_theta = THETA["embedding"]  # the two stacks differ: each must use its own
    return cfg


def _hand_cos_sin(theta: float, positions: torch.Tensor, seq_len: int, scaling: dict | None):
    """cos, sin [L, HD] for rotate-half RoPE: InternLM2's dynamic-NTK / linear rules, or plain theta (None)."""
    base, pos = theta, positions.double()
    if scaling is not None and scaling["type"] == "dynamic" and seq_len > MAX_POS:
        f = scaling["factor"]
        base = theta * ((f * seq_len / MAX_POS) - (f - 1)) ** (HD / (HD - 2))
    if scaling is not None and scaling["type"] == "linear":
        pos = pos / scaling["factor"]
    angles = torch.stack([pos * base ** (-2 * i / HD) for i in range(HD // 2)], dim=-1)  # [L, HD/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


CASES = [  # (family, rope_scaling, applied)
    ("HoVLE", {"type": "dynamic", "factor": 2.0}, True),
    ("HoVLE", {"type": "linear", "factor": 4.0}, True),
    ("mmMamba", {"type": "dynamic", "factor": 2.0}, False),
    ("mmMamba", {"type": "linear", "factor": 4.0}, False),
]


@pytest.mark.parametrize("family, scaling, applied", CASES)
def test_tables_past_max_position_follow_the_family(family, scaling, applied):
    layout = ["mha", "mha", "mha"] if family == "HoVLE" else ["mha", "mamba2", "mha"]
    cfg = _config(family, scaling, layout)
    assert cfg.family.name == family and cfg.applies_rope_scaling == applied
    model = MMMambaChatModel(cfg)
    L = 3 * MAX_POS  # well past max_position_embeddings
    positions = torch.arange(L)
    for stack, theta in enumerate(THETA.values()):
        cos, sin = model._rotary[stack].cos_sin(positions[None], L, torch.float64)  # [1, 1, L, HD]
        want_cos, want_sin = _hand_cos_sin(theta, positions, L, scaling if applied else None)
        assert torch.allclose(cos[0, 0], want_cos, rtol=0, atol=1e-12)
        assert torch.allclose(sin[0, 0], want_sin, rtol=0, atol=1e-12)
        # and the rule matters at this length: the other family's table differs
        other_cos, _ = _hand_cos_sin(theta, positions, L, None if applied else scaling)
        assert (cos[0, 0] - other_cos).abs().max() > 1e-2
    expected = f"{scaling['type']} x{scaling['factor']:g}" if applied else "theta (rope_scaling ignored)"
    assert model.code_path.rope == expected and model.code_path.as_dict()["rope"] == expected


def test_dynamic_ntk_base_is_the_internlm2_formula():
    """One number checked outright: HoVLE-2.6B's rule (factor 2, max 32768, theta 1e6, hd 128) at 131072 tokens."""
    from mmmamba_bench.config import preset
    from mmmamba_bench.model.layers import Rotary

    cfg = preset("hovle-2.6b")
    rot = Rotary(cfg.llm_config, cfg.applies_rope_scaling)
    inv = rot.inv_freq(131072, torch.device("cpu"))
    base = 1e6 * (2 * 131072 / 32768 - 1) ** (128 / 126)  # = 1e6 * 7 ** (64 / 63)
    assert math.isclose(float(1 / inv[1]), base ** (2 / 128), rel_tol=1e-12)
    student = preset("mmmamba-hybrid")  # same rope_scaling in its config.json, ignored by its family
    assert student.llm_config.rope_scaling == {"type": "dynamic", "factor": 2.0}
    assert not student.applies_rope_scaling and not preset("mmmamba-linear").applies_rope_scaling
    inv = Rotary(student.llm_config, student.applies_rope_scaling).inv_freq(131072, torch.device("cpu"))
    assert math.isclose(float(inv[1]), 1e6 ** (-2 / 128), rel_tol=1e-12)


@pytest.mark.parametrize("family, scaling, applied", CASES)
def test_fast_decode_tables_agree_with_the_model(family, scaling, applied):
    """The fast decode path's precomputed tables (row p: a token decoded at position p, sequence length p + 1)."""
    layout = ["mha", "mha", "mha"] if family == "HoVLE" else ["mha", "mamba2", "mha"]
    model = MMMambaChatModel(_config(family, scaling, layout))
    n = 3 * MAX_POS
    for rot in model._rotary:
        cos_t, sin_t = rope_tables(rot, n, torch.device("cpu"), torch.float64, chunk=7)
        for p in range(n):
            cos, sin = rot.cos_sin(torch.tensor([[p]]), p + 1, torch.float64)
            assert torch.allclose(cos_t[p], cos[0, 0, 0], rtol=0, atol=1e-13)
            assert torch.allclose(sin_t[p], sin[0, 0, 0], rtol=0, atol=1e-13)


def test_mmmamba_cached_decoding_equals_full_forward_past_max_position():
    """With rope_scaling ignored, the tables do not depend on the length: cached == full also past max_pos (HoVLE's
    dynamic rule re-derives the base per step, so there only the full pass at each length is the reference)."""
    cfg = _config("mmMamba", {"type": "dynamic", "factor": 2.0}, ["mha", "mamba2", "mha"])
    torch.manual_seed(0)
    model = MMMambaChatModel(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))
    ids = torch.randint(0, 64, (1, 3 * MAX_POS))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.allocate_cache(1, ids.shape[1])
        parts = [model(ids[:, :4], cache=cache).logits]
        parts += [model(ids[:, t:t + 1], cache=cache).logits for t in range(4, ids.shape[1])]
    assert rel_err(torch.cat(parts, 1), full) < 1e-12
