"""Typed shapes of the Table-2 baselines, read from their model cards (``models/<name>.yaml``, key ``architecture``).

A baseline VLM is: vision towers (library classes; features taken at ``feature_layer`` of their hidden states,
``drop_prefix`` leading CLS / register tokens dropped, the towers' features concatenated along channels), a
projector (:mod:`mmmamba_bench.baselines.projectors`) to the language model's width, and a causal language model
(a library class) fed ``[text before | visual tokens | text after]`` as ``inputs_embeds``.

``tiny-<name>`` is the same structure at a CPU-test scale (:func:`tiny`): every size field the card sets is
shrunk (:data:`TINY`), nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmmamba_bench.cards import ModelCard, find_card

TINY_PREFIX = "tiny-"
PROJECTORS = ("mlp2x_gelu", "ldp", "fused_gelu_mlp", "linear")
# A tiny copy keeps the card's structure and shrinks only these fields (where the card sets them).
TINY: Mapping[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "num_heads": 4, "vocab_size": 512, "image_size": 56, "time_step_rank": 8,
    "state_size": 8, "proj_low_rank_dim": 8, "gate_low_rank_dim": 8, "max_position_embeddings": 2048,
}


@dataclass(frozen=True)
class ModuleSpec:
    """A library model class (``"transformers.PhiForCausalLM"``) and the kwargs of its config class."""

    cls: str
    source: str  # where the shape comes from (a hub repo's config.json), for the reader
    config: Mapping[str, Any]

    @property
    def package(self) -> str:
        return self.cls.split(".", 1)[0]

    @property
    def class_name(self) -> str:
        return self.cls.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class VisionSpec(ModuleSpec):
    feature_layer: int = -1  # index into the tower's hidden_states (-1: last layer, -2: penultimate)
    drop_prefix: int = 0  # leading tokens dropped (CLS, registers)

    @property
    def grid(self) -> int:
        """Patches per side: image_size // patch_size (a strided conv floors)."""
        return int(self.config["image_size"]) // int(self.config["patch_size"])

    @property
    def width(self) -> int:
        return int(self.config["hidden_size"])

    def tokens(self) -> int:
        """Feature tokens after ``drop_prefix``: the patches, plus the CLS token when it is kept (CLIP has one)."""
        prefix = 1 + int(self.config.get("num_register_tokens", 0)) if "Dinov2" in self.cls else (
            0 if "Siglip" in self.cls else 1)
        return self.grid ** 2 + prefix - self.drop_prefix


@dataclass(frozen=True)
class BaselineSpec:
    """One Table-2 baseline (a model card's ``architecture``), at full or tiny scale."""

    name: str  # the card name, "tiny-" prefixed at tiny scale
    card: str
    paper_row: str | None  # its Table-2 row
    kind: str  # "transformer" | "linear" (the card's layout)
    llm: ModuleSpec
    vision: tuple[VisionSpec, ...]
    projector: str
    visual_tokens: int  # what the card states; checked against the shapes (:func:`expected_visual_tokens`)
    text_tokens: tuple[int, int]  # chat-template tokens before / after the image
    scale: str = "full"  # "full" | "tiny"

    @property
    def image_size(self) -> int:
        return int(self.vision[0].config["image_size"])

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens[0] + self.visual_tokens + self.text_tokens[1]


def expected_visual_tokens(vision: tuple[VisionSpec, ...], projector: str) -> int:
    """Visual tokens the shapes give: the towers' common token count, a quarter of it after the LDP (stride 2)."""
    counts = {v.tokens() for v in vision}
    if len(counts) != 1:
        raise ValueError(f"vision towers give different token counts {sorted(counts)}; they must match to be "
                         f"concatenated along channels")
    n = counts.pop()
    if projector == "ldp":
        grid = int(round(n ** 0.5))
        if grid * grid != n:
            raise ValueError(f"ldp needs a square grid of patch tokens, got {n} (drop the CLS token)")
        return ((grid + 1) // 2) ** 2
    return n


def _module(raw: Any, where: str, vision: bool) -> ModuleSpec:
    if not isinstance(raw, Mapping) or "class" not in raw or not isinstance(raw.get("config"), Mapping):
        raise ValueError(f"{where}: needs 'class' (e.g. transformers.PhiForCausalLM) and 'config' (a mapping)")
    known = {"class", "source", "config"} | ({"feature_layer", "drop_prefix"} if vision else set())
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    cls = str(raw["class"])
    if cls.split(".", 1)[0] not in ("transformers", "fla") or "." not in cls:
        raise ValueError(f"{where}: class {cls!r} must be 'transformers.<Class>' or 'fla.models.<Class>'")
    base = dict(cls=cls, source=str(raw.get("source", "")), config=dict(raw["config"]))
    if not vision:
        return ModuleSpec(**base)
    for key in ("image_size", "patch_size", "hidden_size"):
        if key not in raw["config"]:
            raise ValueError(f"{where}: config needs {key!r}")
    return VisionSpec(**base, feature_layer=int(raw.get("feature_layer", -1)),
                      drop_prefix=int(raw.get("drop_prefix", 0)))


def spec_from_card(card: ModelCard) -> BaselineSpec:
    """The card's ``architecture`` as a :class:`BaselineSpec`; errors name the card file and the field."""
    where = str(card.source or card.name)
    arch = card.architecture
    if not arch:
        raise ValueError(f"model card {card.name!r} ({where}) has no 'architecture': not a Table-2 baseline")
    known = {"llm", "vision", "projector", "visual_tokens", "text_tokens"}
    missing, unknown = sorted(known - set(arch)), sorted(set(arch) - known)
    if missing or unknown:
        raise ValueError(f"{where}: architecture: missing {missing}, unknown {unknown}")
    if arch["projector"] not in PROJECTORS:
        raise ValueError(f"{where}: architecture.projector {arch['projector']!r}: choose from {PROJECTORS}")
    towers = arch["vision"]
    if not isinstance(towers, list) or not towers:
        raise ValueError(f"{where}: architecture.vision must be a non-empty list of towers")
    text = arch["text_tokens"]
    if not (isinstance(text, list) and len(text) == 2 and all(isinstance(t, int) and t >= 0 for t in text)):
        raise ValueError(f"{where}: architecture.text_tokens must be [before, after], two integers >= 0")
    vision = tuple(_module(t, f"{where}: architecture.vision[{i}]", True) for i, t in enumerate(towers))
    spec = BaselineSpec(name=card.name, card=card.name, paper_row=card.speed_row, kind=card.layout,
                        llm=_module(arch["llm"], f"{where}: architecture.llm", False), vision=vision,
                        projector=arch["projector"], visual_tokens=int(arch["visual_tokens"]),
                        text_tokens=(text[0], text[1]))
    got = expected_visual_tokens(spec.vision, spec.projector)
    if got != spec.visual_tokens:
        raise ValueError(f"{where}: the shapes give {got} visual tokens, the card states {spec.visual_tokens}")
    return spec


def _shrink(module: ModuleSpec) -> ModuleSpec:
    config = {k: (TINY[k] if k in TINY else v) for k, v in module.config.items()}
    for key in [k for k in config if k.endswith("_token_id") and "vocab_size" in config]:
        config[key] = min(int(config[key]), int(config["vocab_size"]) - 1)  # special ids stay inside the vocabulary
    return dataclasses.replace(module, config=config)


def tiny(spec: BaselineSpec) -> BaselineSpec:
    """The same structure at CPU-test scale: the size fields of :data:`TINY` that the card sets are replaced (it
    stands for no paper row)."""
    vision = tuple(_shrink(v) for v in spec.vision)
    return dataclasses.replace(spec, name=TINY_PREFIX + spec.card, paper_row=None, llm=_shrink(spec.llm), vision=vision,
                               visual_tokens=expected_visual_tokens(vision, spec.projector),
                               text_tokens=(min(spec.text_tokens[0], 4), min(spec.text_tokens[1], 4)), scale="tiny")


def baseline_spec(name: str) -> BaselineSpec | None:
    """``llava-phi`` (full scale) or ``tiny-llava-phi`` (tiny scale) when that card has an ``architecture``;
    None when ``name`` is no baseline card (a preset of ours, a checkpoint directory)."""
    scale_tiny = name.startswith(TINY_PREFIX)
    card = find_card(name[len(TINY_PREFIX):] if scale_tiny else name)
    if card is None or not card.architecture:
        return None
    spec = spec_from_card(card)
    return tiny(spec) if scale_tiny else spec
