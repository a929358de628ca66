"""Typed configs for the HoVLE / mmMamba family, read from and written to the released ``config.json``.

The released layout (``../shared/reference/checkpoint_format.md``) has a top-level "chat" config with two
sub-configs: ``embedding_config`` (the holistic embedding module: vision patch embedding, text embeddings and a
stack of decoder layers) and ``llm_config`` (the language model). Both stacks share the decoder-layer fields in
:class:`StackConfig`; each layer is either ``"mha"`` (grouped-query attention) or ``"mamba2"`` (the mmMamba
Mamba-2 mixer), listed in ``layers_block_type`` (absent in a HoVLE checkpoint, meaning all ``"mha"``).

Unknown fields are kept in ``extra`` and written back unchanged, so a real checkpoint's config survives a
load/save round trip. Which released code a config belongs to (HoVLE or mmMamba), what is written for it and which
fields are refused: :mod:`mmmamba_bench.families`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

# ConfigError, HOVLE and MMMAMBA are also this module's public names
from mmmamba_bench.families import (FAMILIES, HOVLE, MMMAMBA, PS_VERSIONS, ConfigError, Family, check_implemented,
                                    family_of, stamp_released_fields)

BLOCK_TYPES = ("mha", "mamba2")


@dataclass(kw_only=True)
class StackConfig:
    """One stack of decoder layers (the embedding module's or the language model's)."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    intermediate_size: int
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None  # None or {"type": "dynamic", "factor": 2.0}
    max_position_embeddings: int = 32768
    layers_block_type: list[str] | None = None  # None: every layer is "mha" (a HoVLE checkpoint)
    extra: dict[str, Any] = field(default_factory=dict)

    # Fields written back only when they were present (HoVLE omits layers_block_type).
    _optional_on_disk: ClassVar[tuple[str, ...]] = ("layers_block_type",)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def block_types(self) -> list[str]:
        """One of ``"mha"`` / ``"mamba2"`` per layer."""
        if self.layers_block_type is None:
            return ["mha"] * self.num_hidden_layers
        return list(self.layers_block_type)

    def validate(self, where: str) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{where}: hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"{where}: num_attention_heads {self.num_attention_heads} is not divisible by "
                              f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_act != "silu":
            raise ConfigError(f"{where}: hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if self.layers_block_type is not None:
            if len(self.layers_block_type) != self.num_hidden_layers:
                raise ConfigError(f"{where}: layers_block_type has {len(self.layers_block_type)} entries but "
                                  f"num_hidden_layers is {self.num_hidden_layers}")
            bad = sorted({t for t in self.layers_block_type if t not in BLOCK_TYPES})
            if bad:
                raise ConfigError(f"{where}: unknown layers_block_type value(s) {bad}; expected {BLOCK_TYPES}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            if kind not in ("dynamic", "linear"):
                raise ConfigError(f"{where}: rope_scaling type {kind!r} is not supported ('dynamic' or 'linear')")
            if "factor" not in self.rope_scaling:
                raise ConfigError(f"{where}: rope_scaling needs a 'factor'")


@dataclass(kw_only=True)
class EmbeddingConfig(StackConfig):
    """The holistic embedding module: patch embedding, text embeddings, pixel-shuffle projection, decoder layers."""

    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    llm_vocab_size: int = 92553
    llm_hidden_size: int | None = None
    special_token_maps: dict[str, int] = field(default_factory=dict)  # name -> id (ids >= llm_vocab_size)
    img_context_token_id: int | None = None
    use_pixel_shuffle_proj: bool = True
    downsample_ratio: float = 0.5
    pixel_shuffle_loc: str = "pre"

    @property
    def num_special_tokens(self) -> int:
        return len(self.special_token_maps)

    @property
    def grid_size(self) -> int:
        """Patches per side of a tile of ``image_size`` pixels."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens per tile after pixel shuffle (256 for HoVLE)."""
        return int(round(self.grid_size**2 * self.downsample_ratio**2))

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.image_size % self.patch_size:
            raise ConfigError(f"{where}: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        scaled = self.grid_size * self.downsample_ratio
        if abs(scaled - round(scaled)) > 1e-9:
            raise ConfigError(f"{where}: the {self.grid_size}x{self.grid_size} patch grid cannot be pixel-shuffled "
                              f"with downsample_ratio {self.downsample_ratio}")
        if not self.use_pixel_shuffle_proj or self.pixel_shuffle_loc != "pre":
            raise ConfigError(f"{where}: only use_pixel_shuffle_proj=true with pixel_shuffle_loc='pre' is supported")
        if self.img_context_token_id is None:
            raise ConfigError(f"{where}: img_context_token_id is missing")
        for name, idx in self.special_token_maps.items():
            if not self.llm_vocab_size <= idx < self.llm_vocab_size + self.num_special_tokens:
                raise ConfigError(f"{where}: special token {name!r} has id {idx}, outside "
                                  f"[{self.llm_vocab_size}, {self.llm_vocab_size + self.num_special_tokens})")
        if self.llm_hidden_size is not None and self.llm_hidden_size != self.hidden_size:
            raise ConfigError(f"{where}: llm_hidden_size {self.llm_hidden_size} differs from hidden_size "
                              f"{self.hidden_size}; the embedding module must emit the LM's width")


@dataclass(kw_only=True)
class LLMConfig(StackConfig):
    """The language model: decoder layers, final norm and output head."""

    vocab_size: int = 92553
    tie_word_embeddings: bool = False

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.tie_word_embeddings:
            raise ConfigError(f"{where}: tie_word_embeddings=true is not part of the released layout")


@dataclass(kw_only=True)
class ChatConfig:
    """The top-level config.json of a HoVLE / mmMamba checkpoint.

    ``ps_version`` may be "v1" or "v2": the released code applies InternVL's v2 pixel shuffle whatever it says, and so
    does this project.
    """

    embedding_config: EmbeddingConfig
    llm_config: LLMConfig
    model_type: str = "mmMamba_chat"  # with the layer types, decides the family (see ``family``)
    architectures: str | list[str] = "mmMambaChatModel"
    template: str = "internlm2-chat"  # the chat prompt format (preprocessing.chat_prompt; "mmmamba-bench-mini": demo)
    downsample_ratio: float = 0.5
    force_image_size: int | None = None
    use_thumbnail: bool = True
    ps_version: str = "v2"
    select_layer: int = -1
    normalize_encoder_output: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- derived ---------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.force_image_size or self.embedding_config.image_size

    @property
    def block_types(self) -> list[str]:
        """Layer types over the global index: embedding-module layers first, then language-model layers."""
        return self.embedding_config.block_types + self.llm_config.block_types

    @property
    def num_layers(self) -> int:
        return self.embedding_config.num_hidden_layers + self.llm_config.num_hidden_layers

    @property
    def kind(self) -> str:
        """"transformer" (all attention), "linear" (all Mamba-2) or "hybrid"."""
        types = set(self.block_types)
        if types == {"mha"}:
            return "transformer"
        if types == {"mamba2"}:
            return "linear"
        return "hybrid"

    @property
    def family(self) -> Family:
        """The released code this checkpoint belongs to: ``FAMILIES["HoVLE"]`` or ``FAMILIES["mmMamba"]``.

        ``mmMamba_chat`` or any Mamba-2 layer: mmMamba; otherwise (``internvl_chat``, the legacy ``hovle``, ...): HoVLE.
        """
        return family_of(self.model_type, self.block_types)

    @property
    def applies_rope_scaling(self) -> bool:
        """Whether attention honours ``rope_scaling`` past ``max_position_embeddings`` (both stacks).

        True for HoVLE (its InternLM2 attention builds dynamic-NTK / linear rotary embeddings); false for mmMamba,
        whose attention layers build their rotary embedding from ``rope_theta`` alone.
        """
        return self.family.applies_rope_scaling

    def with_family(self, name: str) -> "ChatConfig":
        """A copy that belongs to family ``name`` (``HOVLE`` / ``MMMAMBA``): that family's ``model_type`` and
        ``architectures``."""
        fam = FAMILIES[name]
        new = copy.deepcopy(self)
        new.model_type = fam.model_type
        new.architectures = copy.deepcopy(fam.architectures)
        new.validate("config")
        return new

    def with_block_types(self, block_types: list[str]) -> "ChatConfig":
        """A copy whose global layer list is ``block_types`` (embedding layers first).

        A layout with a Mamba-2 layer makes the copy an mmMamba config (HoVLE's code has no Mamba-2 mixer).
        """
        n_emb = self.embedding_config.num_hidden_layers
        if len(block_types) != self.num_layers:
            raise ConfigError(f"layout has {len(block_types)} layers but the model has {self.num_layers} "
                              f"({n_emb} embedding + {self.llm_config.num_hidden_layers} language-model)")
        new = copy.deepcopy(self)
        new.embedding_config.layers_block_type = list(block_types[:n_emb])
        new.llm_config.layers_block_type = list(block_types[n_emb:])
        if "mamba2" in block_types and self.family.name == HOVLE:
            new = new.with_family(MMMAMBA)
        new.validate("config")
        return new

    def validate(self, where: str = "config.json") -> None:
        self.embedding_config.validate(f"{where}: embedding_config")
        self.llm_config.validate(f"{where}: llm_config")
        if self.ps_version not in PS_VERSIONS:
            raise ConfigError(f"{where}: ps_version {self.ps_version!r} is not supported (only {PS_VERSIONS}; the "
                              f"released code applies the v2 pixel shuffle for both)")
        family_of(self.model_type, self.block_types, where)
        if self.embedding_config.hidden_size != self.llm_config.hidden_size:
            raise ConfigError(f"{where}: embedding_config.hidden_size {self.embedding_config.hidden_size} differs "
                              f"from llm_config.hidden_size {self.llm_config.hidden_size}")
        if self.llm_config.vocab_size != self.embedding_config.llm_vocab_size:
            raise ConfigError(f"{where}: llm_config.vocab_size {self.llm_config.vocab_size} differs from "
                              f"embedding_config.llm_vocab_size {self.embedding_config.llm_vocab_size}")

    # ---- json ------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config.json") -> "ChatConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object, found {type(data).__name__}")
        for key in ("embedding_config", "llm_config"):
            if key not in data:
                raise ConfigError(f"{where}: missing field {key!r}")
        check_implemented(data, where)
        emb = _dataclass_from_dict(EmbeddingConfig, data["embedding_config"], f"{where}: embedding_config")
        llm = _dataclass_from_dict(LLMConfig, data["llm_config"], f"{where}: llm_config")
        top = {k: v for k, v in data.items() if k not in ("embedding_config", "llm_config")}
        cfg = _dataclass_from_dict(cls, top, where, embedding_config=emb, llm_config=llm)
        cfg.validate(where)
        return cfg

    def to_dict(self, torch_dtype: str | None = None) -> dict[str, Any]:
        """The config.json dict, with what this config's family's released code needs (``stamp_released_fields``).

        torch_dtype: the dtype of the tensors written beside it ("float32", "bfloat16", ...), recorded as
        ``torch_dtype``; None keeps whatever was read.
        """
        out = _dataclass_to_dict(self, skip=("embedding_config", "llm_config"))
        out["embedding_config"] = _dataclass_to_dict(self.embedding_config)
        out["llm_config"] = _dataclass_to_dict(self.llm_config)
        return stamp_released_fields(out, self.family, torch_dtype)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ChatConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config.json not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where=str(path))

    def to_json_string(self, torch_dtype: str | None = None) -> str:
        return json.dumps(self.to_dict(torch_dtype), indent=2) + "\n"


# Fields without a default that a config.json must contain; everything else has the HoVLE default.
_REQUIRED = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size")
_REQUIRED_BY_CLASS: dict[type, tuple[str, ...]] = {
    EmbeddingConfig: _REQUIRED + ("llm_vocab_size", "img_context_token_id", "special_token_maps", "image_size",
                                  "patch_size"),
    LLMConfig: _REQUIRED + ("vocab_size",),
    ChatConfig: (),
}


def _dataclass_from_dict(cls, data: Any, where: str, **given):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, found {type(data).__name__}")
    known = {f.name for f in fields(cls)} - {"extra"}
    for name in _REQUIRED_BY_CLASS.get(cls, ()):
        if name not in data:
            raise ConfigError(f"{where}: missing field {name!r}")
    kwargs: dict[str, Any] = dict(given)
    extra: dict[str, Any] = {}
    present: list[str] = []
    for key, value in data.items():
        if key in known and key not in given:
            kwargs[key] = value
            present.append(key)
        elif key not in given:
            extra[key] = value
    try:
        obj = cls(**kwargs, extra=extra)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    _check_types(obj, where)
    obj.__dict__["_present"] = set(present)
    return obj


def _check_types(obj, where: str) -> None:
    ints = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
            "image_size", "patch_size", "llm_vocab_size", "vocab_size", "max_position_embeddings")
    for name in ints:
        value = getattr(obj, name, None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"{where}: field {name!r} must be a positive integer, found {value!r}")
    for name in ("rms_norm_eps", "rope_theta", "downsample_ratio"):
        value = getattr(obj, name, None)
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
            raise ConfigError(f"{where}: field {name!r} must be a positive number, found {value!r}")


def _dataclass_to_dict(obj, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    present = obj.__dict__.get("_present")
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip or f.name == "extra":
            continue
        value = getattr(obj, f.name)
        optional = getattr(type(obj), "_optional_on_disk", ())
        if f.name in optional and value is None and (present is None or f.name not in present):
            continue
        out[f.name] = copy.deepcopy(value)
    out.update(copy.deepcopy(obj.extra))
    return out


# ---- presets ---------------------------------------------------------------------------------------------------

def _stack_fields(hidden: int, heads: int, kv: int, layers: int, inter: int, max_pos: int, theta: float,
                  scaling: dict | None) -> dict[str, Any]:
    return dict(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, num_hidden_layers=layers,
                intermediate_size=inter, rope_theta=theta, rope_scaling=scaling, max_position_embeddings=max_pos,
                rms_norm_eps=1e-5)


def make_config(*, hidden: int, heads: int, kv_heads: int, emb_layers: int, llm_layers: int, intermediate: int,
                vocab: int, image_size: int, patch_size: int, block_types: list[str] | None = None,
                normalize_encoder_output: bool = False, max_position_embeddings: int = 32768,
                rope_theta: float = 1_000_000.0, rope_scaling: dict | None = None,
                model_type: str = "mmMamba_chat", template: str = "internlm2-chat") -> ChatConfig:
    """Build a config in the released layout with the three special tokens ``<img>``, ``</img>``, ``<IMG_CONTEXT>``."""
    specials = {"<img>": vocab, "</img>": vocab + 1, "<IMG_CONTEXT>": vocab + 2}
    stack = _stack_fields(hidden, heads, kv_heads, 0, intermediate, max_position_embeddings, rope_theta, rope_scaling)
    emb = EmbeddingConfig(**{**stack, "num_hidden_layers": emb_layers}, image_size=image_size, patch_size=patch_size,
                          llm_vocab_size=vocab, llm_hidden_size=hidden, special_token_maps=specials,
                          img_context_token_id=specials["<IMG_CONTEXT>"])
    llm = LLMConfig(**{**stack, "num_hidden_layers": llm_layers}, vocab_size=vocab)
    cfg = ChatConfig(embedding_config=emb, llm_config=llm, model_type=model_type, template=template,
                     normalize_encoder_output=normalize_encoder_output, force_image_size=image_size)
    if block_types is not None:
        cfg = cfg.with_block_types(block_types)
    cfg.validate("preset")
    return cfg


def _hovle_base(model_type: str = "internvl_chat") -> ChatConfig:
    # HoVLE-2.6B: 8 embedding layers + 24 LM layers, hidden 2048, 16 heads / 8 KV heads, MLP 8192, vocab 92553.
    return make_config(hidden=2048, heads=16, kv_heads=8, emb_layers=8, llm_layers=24, intermediate=8192,
                       vocab=92553, image_size=448, patch_size=14, normalize_encoder_output=True,
                       max_position_embeddings=32768, rope_scaling={"type": "dynamic", "factor": 2.0},
                       model_type=model_type)


def preset(name: str) -> ChatConfig:
    """Named configs: ``hovle-2.6b``, ``mmmamba-linear``, ``mmmamba-hybrid``, ``tiny`` (tests) and ``demo``."""
    from mmmamba_bench.layouts import parse_layout

    if name == "hovle-2.6b":
        return _hovle_base()
    if name == "mmmamba-linear":
        return _hovle_base("mmMamba_chat").with_block_types(parse_layout("linear", 32))
    if name == "mmmamba-hybrid":
        return _hovle_base("mmMamba_chat").with_block_types(parse_layout("hybrid", 32))
    if name == "tiny":
        return make_config(hidden=64, heads=4, kv_heads=2, emb_layers=2, llm_layers=2, intermediate=128,
                           vocab=128, image_size=56, patch_size=14, max_position_embeddings=512,
                           rope_theta=10_000.0, model_type="internvl_chat")
    if name == "demo":
        # The embedded default of `mmmamba-bench demo`: small enough to train on 2 CPU cores in minutes.
        return make_config(hidden=128, heads=4, kv_heads=2, emb_layers=2, llm_layers=4, intermediate=384,
                           vocab=512, image_size=64, patch_size=8, normalize_encoder_output=True,
                           max_position_embeddings=2048, rope_theta=10_000.0, model_type="internvl_chat")
    raise KeyError(f"unknown preset {name!r}; choose from {PRESETS}")


PRESETS = ("hovle-2.6b", "mmmamba-linear", "mmmamba-hybrid", "tiny", "demo")

