"""The project's model against an independent, plain float64 reference of the checkpoint spec.

``tests/ckpt_factory.py`` writes tiny checkpoints in exactly the released layout
(``/work/shared/reference/checkpoint_format.md``); ``tests/spec_reference.py`` computes their logits
straight from the safetensors files, written independently of ``mmmamba_bench``. These tests use only
the public API: ``load_model(path, device, dtype)``, ``model(input_ids=, pixel_values=).logits`` and
``model.generate(input_ids=, pixel_values=, max_new_tokens=)``.

Tolerances: relative error ||out - ref|| / ||ref|| < 1e-4 for a float32 load, < 1e-10 for a float64
load (tight enough that a formula slip cannot hide in float32 noise).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.ckpt_factory import (
    MAMBA2,
    MHA,
    TinyConfig,
    expected_shapes,
    make_config,
    make_image_inputs,
    make_state_dict,
    make_text_inputs,
    write_checkpoint,
)
from tests.spec_reference import (
    SpecReference,
    attention_mixer,
    load_checkpoint,
    mamba2_mixer,
    pixel_shuffle_v2,
    relative_error,
    softplus,
)

FP32_TOL = 1e-4
FP64_TOL = 1e-10
NEW_TOKENS = 8

# (embedding-module layer types, language-model layer types)
ARCHS = {
    "attn": ((MHA, MHA), (MHA, MHA, MHA)),  # HoVLE-like: no layers_block_type in config.json
    "linear": ((MAMBA2, MAMBA2), (MAMBA2, MAMBA2, MAMBA2)),  # mmMamba-linear
    "hybrid": ((MHA, MAMBA2), (MAMBA2, MHA, MAMBA2)),  # mixed, like mmMamba-hybrid
}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def make_ckpt(tmp_path_factory):
    """make_ckpt(arch, **TinyConfig overrides) -> (path, cfg); each distinct checkpoint written once."""
    cache: dict = {}

    def make(arch: str, **overrides):
        key = (arch, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in cache:
            emb_layers, llm_layers = ARCHS[arch]
            cfg = TinyConfig(embedding_layers=emb_layers, llm_layers=llm_layers, **overrides)
            path = write_checkpoint(tmp_path_factory.mktemp(f"ckpt_{arch}"), cfg)
            cache[key] = (path, cfg)
        return cache[key]

    return make


def make_inputs(cfg: TinyConfig, kind: str):
    """kind: "text" (B=2, no image), "img1" / "img2" (B=1, one or two tiles of cfg.image_size)."""
    if kind == "text":
        return make_text_inputs(cfg, batch=2, length=24), None
    n_tiles = {"img1": 1, "img2": 2}[kind]
    return make_image_inputs(cfg, n_tiles=n_tiles, n_text=12)


def load(path, dtype):
    from mmmamba_bench import load_model

    return load_model(str(path), device="cpu", dtype=dtype)


@torch.no_grad()
def model_logits(path, dtype, ids, pixel_values):
    model = load(path, dtype)
    pv = None if pixel_values is None else pixel_values.to(dtype)
    return model(input_ids=ids, pixel_values=pv).logits


def check_logits(path, ids, pixel_values, dtype, tol, label=""):
    """Load with ``dtype``, run the forward, compare with the float64 reference on the same file."""
    ref = SpecReference(path).logits(ids, pixel_values)  # [B, L, V] float64
    out = model_logits(path, dtype, ids, pixel_values)
    assert tuple(out.shape) == tuple(ref.shape), f"{label}: logits shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = relative_error(out, ref)
    assert torch.isfinite(out).all(), f"{label}: non-finite logits"
    assert err < tol, f"{label}: relative error {err:.3e} >= {tol:.0e} ({dtype})"
    return err


# ----------------------------------------------------------------------------------------------
# 1-2. Full forward, float32 and float64 loads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs", ["text", "img1", "img2"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "l2norm"])
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_logits_match_reference(make_ckpt, arch, normalize, inputs, dtype):
    path, cfg = make_ckpt(arch, normalize_encoder_output=normalize)
    ids, pv = make_inputs(cfg, inputs)
    tol = FP32_TOL if dtype == torch.float32 else FP64_TOL
    check_logits(path, ids, pv, dtype, tol, label=f"{arch}/{inputs}/normalize={normalize}")


# ----------------------------------------------------------------------------------------------
# 3. Greedy generation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs", ["text", "img1", "img2"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_generate_matches_reference(make_ckpt, arch, inputs):
    path, cfg = make_ckpt(arch, normalize_encoder_output=(inputs != "img1"))
    ids, pv = make_inputs(cfg, inputs)
    B, L = ids.shape
    ref = SpecReference(path)
    ref_ids = ref.greedy(ids, pv, max_new_tokens=NEW_TOKENS)  # full recompute per token
    top2 = ref.logits(ids, pv)[:, -1].topk(2, dim=-1).values  # [B, 2]
    gap = float((top2[:, 0] - top2[:, 1]).min())
    assert gap > 1e-3, f"test setup: first-token top-2 gap {gap:.1e} too small for a float32 token check"

    with torch.no_grad():
        out64 = load(path, torch.float64).generate(
            input_ids=ids, pixel_values=None if pv is None else pv.double(), max_new_tokens=NEW_TOKENS
        )
    assert tuple(out64.shape) == (B, L + NEW_TOKENS), f"generate returned shape {tuple(out64.shape)}"
    assert torch.equal(out64[:, :L].cpu(), ids), "generate must return the prompt first"
    assert torch.equal(out64[:, L:].cpu(), ref_ids[:, L:]), (
        f"{arch}/{inputs}: float64 greedy tokens {out64[:, L:].tolist()} != reference {ref_ids[:, L:].tolist()}"
    )

    with torch.no_grad():
        out32 = load(path, torch.float32).generate(input_ids=ids, pixel_values=pv, max_new_tokens=NEW_TOKENS)
    assert tuple(out32.shape) == (B, L + NEW_TOKENS)
    assert torch.equal(out32[:, L].cpu(), ref_ids[:, L]), (
        f"{arch}/{inputs}: float32 first new token {out32[:, L].tolist()} != reference {ref_ids[:, L].tolist()}"
    )


# ----------------------------------------------------------------------------------------------
# Storage variants: sharded, bf16 on disk, config spelling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sharded_checkpoint(make_ckpt, arch):
    path, cfg = make_ckpt(arch, sharded=True, normalize_encoder_output=True)
    assert (path / "model.safetensors.index.json").exists() and not (path / "model.safetensors").exists()
    ids, pv = make_inputs(cfg, "img2")
    check_logits(path, ids, pv, torch.float32, FP32_TOL, label=f"{arch}/sharded")
    check_logits(path, ids, pv, torch.float64, FP64_TOL, label=f"{arch}/sharded")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bf16_on_disk(make_ckpt, arch):
    """bf16 weights on disk, loaded as float32 (and float64): the reference upcasts the same bf16 values."""
    path, cfg = make_ckpt(arch, dtype=torch.bfloat16, sharded=(arch == "hybrid"))
    _, weights = load_checkpoint(path)
    assert all(w.dtype == torch.float64 for w in weights.values())
    ids, pv = make_inputs(cfg, "img1")
    check_logits(path, ids, pv, torch.float32, FP32_TOL, label=f"{arch}/bf16-on-disk")
    check_logits(path, ids, pv, torch.float64, FP64_TOL, label=f"{arch}/bf16-on-disk")


def test_config_spelling_variants(make_ckpt):
    """`architectures` as a list, unknown config fields at every level, more than 3 special tokens."""
    path, cfg = make_ckpt(
        "hybrid",
        architectures_as_list=True,
        extra_config_fields={"some_future_field": {"a": 1}, "use_flash_attn": True},
        num_special_tokens=5,
    )
    ids, pv = make_inputs(cfg, "img1")
    ids[0, 1] = cfg.llm_vocab_size + 4  # an extra special token (id >= llm_vocab_size + 3)
    check_logits(path, ids, pv, torch.float64, FP64_TOL, label="hybrid/config-variants")


# ----------------------------------------------------------------------------------------------
# 4. Dynamic NTK RoPE past max_position_embeddings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", ["short", "long"])
@pytest.mark.parametrize("arch", ["attn", "hybrid"])
def test_dynamic_rope_scaling(make_ckpt, arch, length):
    """HoVLE ("attn", model_type hovle_chat) applies rope_scaling past max_position_embeddings; mmMamba ("hybrid",
    mmMamba_chat) ignores it, as each family's released code does."""
    scaling = {"type": "dynamic", "factor": 2.0}
    path, cfg = make_ckpt(arch, rope_scaling=scaling, max_position_embeddings=24)
    n_text = 30 if length == "long" else 10  # L = 9 + n_text: 39 > 24 or 19 <= 24
    ids, pv = make_image_inputs(cfg, n_tiles=1, n_text=n_text)
    assert (ids.shape[1] > 24) == (length == "long")

    # For HoVLE the scaling must matter for the long sequence (and not for the short one); for mmMamba never:
    # compare with the same weights without rope_scaling.
    plain_path, _ = make_ckpt(arch, rope_scaling=None, max_position_embeddings=24)
    diff = relative_error(SpecReference(plain_path).logits(ids, pv), SpecReference(path).logits(ids, pv))
    assert (diff > 1e-3) if (length == "long" and arch == "attn") else (diff == 0.0), diff

    check_logits(path, ids, pv, torch.float32, FP32_TOL, label=f"{arch}/dynamic-rope/{length}")
    check_logits(path, ids, pv, torch.float64, FP64_TOL, label=f"{arch}/dynamic-rope/{length}")


# ----------------------------------------------------------------------------------------------
# 5. Tile size different from config image_size (position-embedding interpolation)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tiles", [1, 2])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_tile_size_differs_from_image_size(make_ckpt, arch, n_tiles):
    path, cfg = make_ckpt(arch)
    ids, pv = make_image_inputs(cfg, n_tiles=n_tiles, n_text=8, tile_size=84)  # 6x6 grid -> 9 tokens
    assert cfg.tokens_per_tile(84) == 9
    assert int((ids == cfg.img_context_token_id).sum()) == 9 * n_tiles
    check_logits(path, ids, pv, torch.float32, FP32_TOL, label=f"{arch}/84px/{n_tiles} tiles")
    check_logits(path, ids, pv, torch.float64, FP64_TOL, label=f"{arch}/84px/{n_tiles} tiles")


# ----------------------------------------------------------------------------------------------
# The factory and the reference themselves
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_factory_writes_the_released_layout(make_ckpt, arch):
    path, cfg = make_ckpt(arch, sharded=True)
    config, weights = load_checkpoint(path)
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected_shapes(cfg)
    for key in ("embedding_config", "llm_config", "normalize_encoder_output", "downsample_ratio", "ps_version"):
        assert key in config
    emb, llm = config["embedding_config"], config["llm_config"]
    for key in ("llm_vocab_size", "special_token_maps", "img_context_token_id", "image_size", "patch_size"):
        assert key in emb
    assert llm["vocab_size"] == emb["llm_vocab_size"] and llm["tie_word_embeddings"] is False
    assert "eos_token_id" not in config and "eos_token_id" not in llm
    if arch == "attn":  # HoVLE: no layers_block_type anywhere
        assert "layers_block_type" not in emb and "layers_block_type" not in llm
    else:
        assert emb["layers_block_type"] == list(ARCHS[arch][0])
        assert llm["layers_block_type"] == list(ARCHS[arch][1])
    assert make_config(cfg) == config


def test_factory_mamba2_decays_vary_in_unit_interval():
    cfg = TinyConfig(embedding_layers=(MAMBA2,), llm_layers=(MAMBA2,))
    sd = make_state_dict(cfg)
    P = "embedding_model.encoder.0.attention."
    decay = torch.exp(-softplus(sd[P + "dt_bias"].double()) * torch.exp(sd[P + "A_log_bias"].double()))
    assert ((decay > 0) & (decay < 1)).all() and decay.max() - decay.min() > 0.2, decay


def test_reference_is_sensitive_to_formula_slips(make_ckpt):
    """Each deliberate slip in the reference moves the logits far beyond the 1e-4 tolerance, so the
    agreement tests above would catch the same slip in the implementation."""
    cases = [
        ("linear", "img1", None, "swap_conv_taps"),
        ("hybrid", "img1", None, "swap_conv_taps"),
        ("linear", "text", None, "tile_kv_heads"),
        ("attn", "text", None, "tile_kv_heads"),
        ("attn", "text", None, "ungrouped_wqkv"),
        ("attn", "img1", None, "interleaved_rope"),
        ("hybrid", "img2", None, "pixel_shuffle_v1"),
        ("attn", "img1", 84, "pos_interp_align_corners"),
    ]
    for arch, kind, tile, mistake in cases:
        path, cfg = make_ckpt(arch)
        if tile is None:
            ids, pv = make_inputs(cfg, kind)
        else:
            ids, pv = make_image_inputs(cfg, n_tiles=1, n_text=8, tile_size=tile)
        good = SpecReference(path).logits(ids, pv)
        bad = SpecReference(path, mistakes={mistake}).logits(ids, pv)
        err = relative_error(bad, good)
        assert err > 1e-2, f"{mistake} on {arch}/{kind}: reference only moved by {err:.2e}"


def test_reference_mamba2_loop_equals_closed_form():
    """The per-token recurrence equals its unrolled form
    y_t = sum_{s<=t} exp(A sum_{u=s+1..t} dt_u) dt_s (q_t . k_s) v_s  (paper Eq. 2 unrolled)."""
    g = torch.Generator().manual_seed(5)
    B, L, H, nh, nkv, hd = 2, 7, 32, 4, 2, 8
    n_rep, conv_dim = nh // nkv, (2 * nkv + nh) * hd
    W = {
        "wvkqgdt.weight": torch.randn((2 * nkv + 2 * nh) * hd + nh, H, generator=g, dtype=torch.float64) * 0.2,
        "conv1d.weight": torch.randn(conv_dim, 1, 2, generator=g, dtype=torch.float64),
        "conv1d.bias": torch.randn(conv_dim, generator=g, dtype=torch.float64) * 0.1,
        "dt_bias": torch.randn(nh, generator=g, dtype=torch.float64),
        "A_log_bias": torch.randn(nh, generator=g, dtype=torch.float64),
        "g_norm_swish_gate.weight": torch.ones(hd, dtype=torch.float64),
        "o_proj.weight": torch.eye(H, nh * hd, dtype=torch.float64),  # identity: compare y directly
    }
    cfg = {"num_attention_heads": nh, "num_key_value_heads": nkv}
    x = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    out = mamba2_mixer(x, W, cfg, frozenset())

    # Independent path: F.conv1d for the causal conv, then the unrolled sum.
    proj = x @ W["wvkqgdt.weight"].T
    conv_in = F.pad(proj[..., :conv_dim].transpose(1, 2), (1, 0))  # left pad: causal
    conv = F.silu(F.conv1d(conv_in, W["conv1d.weight"], W["conv1d.bias"], groups=conv_dim)).transpose(1, 2)
    v = conv[..., : nkv * hd].reshape(B, L, nkv, hd).repeat_interleave(n_rep, dim=2)
    k = conv[..., nkv * hd : 2 * nkv * hd].reshape(B, L, nkv, hd).repeat_interleave(n_rep, dim=2)
    q = conv[..., 2 * nkv * hd :].reshape(B, L, nh, hd)
    gate = proj[..., conv_dim : conv_dim + nh * hd].reshape(B, L, nh, hd)
    dt = F.softplus(proj[..., conv_dim + nh * hd :] + W["dt_bias"])  # [B, L, nh]
    log_decay = dt * -torch.exp(W["A_log_bias"])  # [B, L, nh]
    cum = log_decay.cumsum(dim=1)  # [B, L, nh]
    seg = cum[:, :, None, :] - cum[:, None, :, :]  # [B, t, s, nh] = sum_{u=s+1..t}
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool))[None, :, :, None]
    weight = torch.where(mask, torch.exp(seg.clamp(max=0)), torch.zeros(()))  # [B, t, s, nh]
    qk = torch.einsum("bthd,bshd->btsh", q, k)
    y = torch.einsum("btsh,btsh,bsh,bshd->bthd", weight, qk, dt, v)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * F.silu(gate)
    expected = y.reshape(B, L, nh * hd) @ W["o_proj.weight"].T
    assert relative_error(out, expected) < 1e-12


def test_reference_attention_equals_sdpa():
    """The explicit masked-softmax attention equals torch's SDPA with the same (grouped) q/k/v and RoPE."""
    g = torch.Generator().manual_seed(6)
    B, L, H, nh, nkv = 2, 9, 32, 4, 2
    hd, n_rep = H // nh, nh // nkv
    W = {
        "wqkv.weight": torch.randn((nh + 2 * nkv) * hd, H, generator=g, dtype=torch.float64) * 0.3,
        "wo.weight": torch.randn(H, nh * hd, generator=g, dtype=torch.float64) * 0.2,
    }
    cfg = {"num_attention_heads": nh, "num_key_value_heads": nkv, "rope_theta": 100.0,
           "rope_scaling": None, "max_position_embeddings": 64}
    x = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    out = attention_mixer(x, W, cfg, frozenset())

    # Independent path: slice wqkv rows per KV group by index arithmetic, complex-number RoPE, SDPA.
    rows = torch.arange((nh + 2 * nkv) * hd).reshape(nkv, n_rep + 2, hd)
    Wq = W["wqkv.weight"][rows[:, :n_rep].reshape(-1)]
    Wk = W["wqkv.weight"][rows[:, n_rep].reshape(-1)]
    Wv = W["wqkv.weight"][rows[:, n_rep + 1].reshape(-1)]
    q = (x @ Wq.T).reshape(B, L, nh, hd).transpose(1, 2)
    k = (x @ Wk.T).reshape(B, L, nkv, hd).transpose(1, 2).repeat_interleave(n_rep, dim=1)
    v = (x @ Wv.T).reshape(B, L, nkv, hd).transpose(1, 2).repeat_interleave(n_rep, dim=1)
    theta = 100.0 ** (-torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    rot = torch.polar(torch.ones(L, hd // 2, dtype=torch.float64), torch.arange(L)[:, None] * theta)

    def rope(t):  # rotate-half pairs element i with element i + hd/2
        z = torch.complex(t[..., : hd // 2], t[..., hd // 2 :]) * rot
        return torch.cat([z.real, z.imag], dim=-1)

    o = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
    expected = o.transpose(1, 2).reshape(B, L, nh * hd) @ W["wo.weight"].T
    assert relative_error(out, expected) < 1e-12


def test_reference_pixel_shuffle_is_2x2_space_to_depth():
    """Pixel shuffle v2 (r = 0.5) on a row-major G x G grid: output token (i, j) (row-major over the
    G/2 x G/2 grid) is the concatenation of patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1)."""
    n, G, c = 2, 6, 5
    x = torch.randn(n, G * G, c, dtype=torch.float64)
    out = pixel_shuffle_v2(x, 0.5)
    grid = x.reshape(n, G, G, c)
    expected = torch.empty(n, (G // 2) ** 2, 4 * c, dtype=torch.float64)
    for i in range(G // 2):
        for j in range(G // 2):
            blocks = [grid[:, 2 * i, 2 * j], grid[:, 2 * i, 2 * j + 1], grid[:, 2 * i + 1, 2 * j], grid[:, 2 * i + 1, 2 * j + 1]]
            expected[:, i * (G // 2) + j] = torch.cat(blocks, dim=-1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_reference_runs(make_ckpt, arch):
    """The reference alone: right shapes, finite values, batch rows independent, images matter."""
    path, cfg = make_ckpt(arch)
    ref = SpecReference(path)
    ids = make_text_inputs(cfg, batch=2, length=16)
    logits = ref.logits(ids)
    assert logits.shape == (2, 16, cfg.llm_vocab_size) and torch.isfinite(logits).all()
    assert relative_error(ref.logits(ids[1:]), logits[1:]) < 1e-13
    ids, pv = make_image_inputs(cfg, n_tiles=2)
    a, b = ref.logits(ids, pv), ref.logits(ids, pv + 0.5)
    assert relative_error(a, b) > 1e-3
    assert math.isfinite(relative_error(a, b))
