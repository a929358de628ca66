"""Tiny checkpoints in exactly the released HoVLE / mmMamba layout, for tests.

Everything here follows ``/work/shared/reference/checkpoint_format.md`` ("the spec"):

* "Directory": ``config.json`` + ``model.safetensors`` (or shards ``model-0000k-of-0000n.safetensors``
  with ``model.safetensors.index.json``).
* "config.json": top-level chat fields, ``embedding_config`` (the holistic embedding module) and
  ``llm_config`` (the language model), each with ``layers_block_type`` (omitted when every layer of
  both stacks is attention, like a real HoVLE checkpoint).
* "Tensor names and shapes": the table, verbatim.

Weights are random (seeded ``torch.Generator``) and scaled so every activation stays O(1) (residual
branch outputs ``wo`` / ``o_proj`` / ``w2`` at gain 0.25, which keeps a float32 forward within ~1e-5
relative of float64, a >10x margin under the tests' 1e-4 tolerance); the
Mamba-2 ``dt_bias`` / ``A_log_bias`` give per-step decays ``exp(dt * A)`` spread over (0, 1), and
the conv taps are both non-trivial so that a swapped tap order changes the output.

This module does not import ``mmmamba_bench``: the tests use it to check the project's loader.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

MHA = "mha"
MAMBA2 = "mamba2"

# Special tokens, in id order: ids llm_vocab_size, llm_vocab_size + 1, ... (spec: "special_token_maps").
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
_EXTRA_SPECIAL_NAMES = ["<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]


@dataclass
class TinyConfig:
    """Shape and storage options of a test checkpoint (defaults: the tiny shape of the task brief)."""

    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # head_dim = 16, n_rep = 2
    intermediate_size: int = 128
    llm_vocab_size: int = 120  # LM vocab_size = llm_vocab_size
    num_special_tokens: int = 3  # <img>, </img>, <IMG_CONTEXT> (+ extras when > 3)
    embedding_layers: tuple[str, ...] = (MHA, MHA)  # one of "mha" / "mamba2" per embedding layer
    llm_layers: tuple[str, ...] = (MHA, MHA, MHA)  # one per language-model layer
    normalize_encoder_output: bool = False
    image_size: int = 56
    patch_size: int = 14  # 56 / 14 = 4x4 patches -> 2x2 = 4 image tokens per tile
    downsample_ratio: float = 0.5
    # Different values in the two stacks on purpose: a loader that reads the wrong sub-config fails.
    embedding_rope_theta: float = 1_000_000.0
    llm_rope_theta: float = 10_000.0
    embedding_rms_norm_eps: float = 1e-6
    llm_rms_norm_eps: float = 1e-5
    rope_scaling: dict | None = None  # e.g. {"type": "dynamic", "factor": 2.0}, used by both stacks
    max_position_embeddings: int = 2048
    sharded: bool = False
    num_shards: int = 3
    dtype: torch.dtype = torch.float32  # dtype on disk: float32 or bfloat16
    architectures_as_list: bool = False
    extra_config_fields: dict = field(default_factory=dict)  # unknown fields, added at every level
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def img_context_token_id(self) -> int:
        return self.llm_vocab_size + 2

    @property
    def special_token_maps(self) -> dict[str, int]:
        names = [IMG_START, IMG_END, IMG_CONTEXT] + _EXTRA_SPECIAL_NAMES
        assert 3 <= self.num_special_tokens <= len(names)
        return {name: self.llm_vocab_size + i for i, name in enumerate(names[: self.num_special_tokens])}

    @property
    def all_attention(self) -> bool:
        return all(t == MHA for t in (*self.embedding_layers, *self.llm_layers))

    def tokens_per_tile(self, tile_size: int | None = None) -> int:
        """Image tokens one tile yields after pixel shuffle: (S/p)^2 * r^2."""
        grid = (tile_size or self.image_size) // self.patch_size
        return int(grid * grid * self.downsample_ratio**2)


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------


def make_config(cfg: TinyConfig) -> dict:
    """The config.json dict, with the field names of the spec's "config.json" section."""
    H = cfg.hidden_size
    common = {
        "hidden_size": H,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "rope_scaling": cfg.rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_bias": False,  # present in the real configs; no bias tensors exist
    }
    embedding_config = {
        "model_type": "holistic_embedding",
        **common,
        "num_hidden_layers": len(cfg.embedding_layers),
        "rms_norm_eps": cfg.embedding_rms_norm_eps,
        "rope_theta": cfg.embedding_rope_theta,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": 3,
        "llm_vocab_size": cfg.llm_vocab_size,
        "llm_hidden_size": H,
        "special_token_maps": cfg.special_token_maps,
        "img_context_token_id": cfg.img_context_token_id,
        "use_pixel_shuffle_proj": True,
        "downsample_ratio": cfg.downsample_ratio,
        "pixel_shuffle_loc": "pre",
        "use_ls": False,
    }
    llm_config = {
        "model_type": "internlm2",
        "architectures": ["InternLM2ForCausalLM"],
        **common,
        "num_hidden_layers": len(cfg.llm_layers),
        "rms_norm_eps": cfg.llm_rms_norm_eps,
        "rope_theta": cfg.llm_rope_theta,
        "vocab_size": cfg.llm_vocab_size,
        "tie_word_embeddings": False,
        "bias": False,  # InternLM2Config's default is true (biases on wqkv / wo); the released file says false
    }
    if not cfg.all_attention:  # a HoVLE checkpoint (all attention) has no layers_block_type
        embedding_config["layers_block_type"] = list(cfg.embedding_layers)
        llm_config["layers_block_type"] = list(cfg.llm_layers)

    if cfg.all_attention:
        model_type, arch = "hovle_chat", "HoVLEChatModel"
    else:
        model_type, arch = "mmMamba_chat", "mmMambaChatModel"
    config = {
        "model_type": model_type,
        "architectures": [arch] if cfg.architectures_as_list else arch,
        "template": "internlm2-chat",
        "downsample_ratio": cfg.downsample_ratio,
        "force_image_size": cfg.image_size,
        "use_thumbnail": True,
        "ps_version": "v2",
        "select_layer": -1,
        "normalize_encoder_output": cfg.normalize_encoder_output,
        "torch_dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16"}[cfg.dtype],
        "embedding_config": embedding_config,
        "llm_config": llm_config,
    }
    for level in (config, embedding_config, llm_config):
        level.update(cfg.extra_config_fields)
    return config


# ----------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------


def make_state_dict(cfg: TinyConfig) -> dict[str, torch.Tensor]:
    """Random float32 tensors named and shaped as the spec's table ("Tensor names and shapes")."""
    g = torch.Generator().manual_seed(cfg.seed)
    H, nh, nkv, hd, I = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    V, p, r = cfg.llm_vocab_size, cfg.patch_size, cfg.downsample_ratio
    n_pos = (cfg.image_size // p) ** 2 + 1

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    def uniform(*shape, low, high):
        return torch.rand(*shape, generator=g) * (high - low) + low

    def linear(out_features, in_features, gain=1.0):
        # std ~ gain / sqrt(fan_in): outputs stay O(1) for O(1) inputs
        return randn(out_features, in_features, std=gain / math.sqrt(in_features))

    sd: dict[str, torch.Tensor] = {}
    e = "embedding_model."
    sd[e + "vision_embeddings.class_embedding"] = randn(1, 1, H, std=0.02)
    sd[e + "vision_embeddings.patch_embedding.weight"] = randn(H, 3, p, p, std=1.0 / math.sqrt(3 * p * p))
    sd[e + "vision_embeddings.patch_embedding.bias"] = randn(H, std=0.1)
    sd[e + "vision_embeddings.position_embedding"] = randn(1, n_pos, H, std=0.5)
    sd[e + "llm_text_embeddings.weight"] = randn(V, H, std=0.5)
    sd[e + "special_text_embeddings.weight"] = randn(cfg.num_special_tokens, H, std=0.5)
    sd[e + "pixel_shuffle_proj.0.weight"] = linear(H, int(H / r**2))
    sd[e + "pixel_shuffle_proj.0.bias"] = randn(H, std=0.1)
    sd[e + "pixel_shuffle_proj.2.weight"] = linear(H, H)
    sd[e + "pixel_shuffle_proj.2.bias"] = randn(H, std=0.1)

    def add_layer(prefix: str, block_type: str) -> None:
        sd[prefix + "attention_norm.weight"] = randn(H, std=0.1, mean=1.0)
        sd[prefix + "ffn_norm.weight"] = randn(H, std=0.1, mean=1.0)
        sd[prefix + "feed_forward.w1.weight"] = linear(I, H)
        sd[prefix + "feed_forward.w3.weight"] = linear(I, H)
        sd[prefix + "feed_forward.w2.weight"] = linear(H, I, gain=0.25)
        a = prefix + "attention."
        if block_type == MHA:
            sd[a + "wqkv.weight"] = linear((nh + 2 * nkv) * hd, H, gain=1.5)
            sd[a + "wo.weight"] = linear(H, nh * hd, gain=0.25)
        elif block_type == MAMBA2:
            conv_dim = (2 * nkv + nh) * hd
            sd[a + "wvkqgdt.weight"] = linear((2 * nkv + 2 * nh) * hd + nh, H)
            conv = torch.empty(conv_dim, 1, 2)
            conv[:, 0, 0] = randn(conv_dim, std=0.5)  # previous token
            conv[:, 0, 1] = randn(conv_dim, std=0.3, mean=1.0)  # current token
            sd[a + "conv1d.weight"] = conv
            sd[a + "conv1d.bias"] = randn(conv_dim, std=0.1)
            # dt = softplus(x W_dt + dt_bias): dt_bias = inverse softplus of dt in [0.01, 0.5], log-uniform
            dt = torch.exp(uniform(nh, low=math.log(0.01), high=math.log(0.5)))
            sd[a + "dt_bias"] = dt + torch.log(-torch.expm1(-dt))
            # A = -exp(A_log_bias) in [-8, -1]: decay exp(dt * A) spreads over (0, 1)
            sd[a + "A_log_bias"] = torch.log(uniform(nh, low=1.0, high=8.0))
            sd[a + "g_norm_swish_gate.weight"] = randn(hd, std=0.1, mean=1.0)
            sd[a + "o_proj.weight"] = linear(H, nh * hd, gain=0.25)
        else:
            raise ValueError(f"unknown layer type {block_type!r}")

    for i, t in enumerate(cfg.embedding_layers):
        add_layer(f"embedding_model.encoder.{i}.", t)
    for j, t in enumerate(cfg.llm_layers):
        add_layer(f"language_model.model.layers.{j}.", t)

    sd["language_model.model.tok_embeddings.weight"] = randn(V, H, std=0.5)  # unused in the image-text path
    sd["language_model.model.norm.weight"] = randn(H, std=0.1, mean=1.0)
    sd["language_model.output.weight"] = linear(V, H, gain=3.0)  # logits spread out: no near-ties
    return sd


def expected_shapes(cfg: TinyConfig) -> dict[str, tuple[int, ...]]:
    """The spec's table written out for ``cfg`` (used to check the factory itself)."""
    H, nh, nkv, hd, I = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    )
    V, p, r, S = cfg.llm_vocab_size, cfg.patch_size, cfg.downsample_ratio, cfg.num_special_tokens
    e = "embedding_model."
    shapes = {
        e + "vision_embeddings.class_embedding": (1, 1, H),
        e + "vision_embeddings.patch_embedding.weight": (H, 3, p, p),
        e + "vision_embeddings.patch_embedding.bias": (H,),
        e + "vision_embeddings.position_embedding": (1, (cfg.image_size // p) ** 2 + 1, H),
        e + "llm_text_embeddings.weight": (V, H),
        e + "special_text_embeddings.weight": (S, H),
        e + "pixel_shuffle_proj.0.weight": (H, int(H / r**2)),
        e + "pixel_shuffle_proj.0.bias": (H,),
        e + "pixel_shuffle_proj.2.weight": (H, H),
        e + "pixel_shuffle_proj.2.bias": (H,),
        "language_model.model.tok_embeddings.weight": (V, H),
        "language_model.model.norm.weight": (H,),
        "language_model.output.weight": (V, H),
    }
    layers = [(f"embedding_model.encoder.{i}.", t) for i, t in enumerate(cfg.embedding_layers)]
    layers += [(f"language_model.model.layers.{j}.", t) for j, t in enumerate(cfg.llm_layers)]
    for P, t in layers:
        shapes[P + "attention_norm.weight"] = (H,)
        shapes[P + "ffn_norm.weight"] = (H,)
        shapes[P + "feed_forward.w1.weight"] = (I, H)
        shapes[P + "feed_forward.w3.weight"] = (I, H)
        shapes[P + "feed_forward.w2.weight"] = (H, I)
        if t == MHA:
            shapes[P + "attention.wqkv.weight"] = ((nh + 2 * nkv) * hd, H)
            shapes[P + "attention.wo.weight"] = (H, nh * hd)
        else:
            shapes[P + "attention.wvkqgdt.weight"] = ((2 * nkv + 2 * nh) * hd + nh, H)
            shapes[P + "attention.conv1d.weight"] = ((2 * nkv + nh) * hd, 1, 2)
            shapes[P + "attention.conv1d.bias"] = ((2 * nkv + nh) * hd,)
            shapes[P + "attention.dt_bias"] = (nh,)
            shapes[P + "attention.A_log_bias"] = (nh,)
            shapes[P + "attention.g_norm_swish_gate.weight"] = (hd,)
            shapes[P + "attention.o_proj.weight"] = (H, nh * hd)
    return shapes


# ----------------------------------------------------------------------------------------------
# Writing the directory
# ----------------------------------------------------------------------------------------------


def write_checkpoint(path: str | Path, cfg: TinyConfig) -> Path:
    """Write config.json + safetensors (single file or sharded with an index) into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(make_config(cfg), indent=2))

    sd = {k: v.to(cfg.dtype).contiguous() for k, v in make_state_dict(cfg).items()}
    metadata = {"format": "pt"}
    if not cfg.sharded:
        save_file(sd, str(path / "model.safetensors"), metadata=metadata)
        return path

    names = list(sd)  # insertion order: embedding module first, language model last
    n = cfg.num_shards
    chunks = [names[k * len(names) // n : (k + 1) * len(names) // n] for k in range(n)]
    weight_map = {}
    for k, chunk in enumerate(chunks):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file({name: sd[name] for name in chunk}, str(path / fname), metadata=metadata)
        weight_map.update({name: fname for name in chunk})
    total_size = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def make_image_inputs(
    cfg: TinyConfig,
    n_tiles: int = 1,
    n_text: int = 10,
    tile_size: int | None = None,
    seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-row image prompt and its tiles.

    input_ids: [1, L] = 3 text ids + ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x n_tiles)
    + ``</img>`` + n_text text ids (the spec's "Prompt" line, without the chat template).
    pixel_values: [n_tiles, 3, S, S], normalised-image-like values (standard normal).
    """
    g = torch.Generator().manual_seed(seed)
    S = tile_size or cfg.image_size
    maps = cfg.special_token_maps
    n_ctx = cfg.tokens_per_tile(S) * n_tiles
    head = torch.randint(0, cfg.llm_vocab_size, (3,), generator=g)
    tail = torch.randint(0, cfg.llm_vocab_size, (n_text,), generator=g)
    ids = torch.cat(
        [
            head,
            torch.tensor([maps[IMG_START]]),
            torch.full((n_ctx,), cfg.img_context_token_id),
            torch.tensor([maps[IMG_END]]),
            tail,
        ]
    )
    pixel_values = torch.randn(n_tiles, 3, S, S, generator=g)
    return ids[None, :].long(), pixel_values


def make_text_inputs(cfg: TinyConfig, batch: int = 2, length: int = 20, seed: int = 2) -> torch.Tensor:
    """Text-only input_ids [batch, length]: random text ids, with ``</img>`` (a special token,
    id >= llm_vocab_size) at position 1 so the special-embedding path is used too."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.llm_vocab_size, (batch, length), generator=g)
    ids[:, 1] = cfg.special_token_maps[IMG_END]
    return ids.long()
