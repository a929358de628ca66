"""The two released checkpoint families, HoVLE and mmMamba: which one a config.json is, and what each one's code needs.

Both families share one tensor layout (``checkpoint_format.md``) and one model here; they differ in the code that
loads them, and so in what their ``config.json`` must say:

* **HoVLE** (the Transformer teacher, ``OpenGVLab/HoVLE``): ``model_type: "internvl_chat"``, built by HoVLE's
  ``InternVLChatModel`` with a ``HolisticEmbedding`` (``holistic_embedding``) and an ``InternLM2ForCausalLM``
  (``internlm2``). Its attention applies ``rope_scaling`` (dynamic NTK or linear) past ``max_position_embeddings``.
* **mmMamba** (the Mamba-2 students, ``hustvl/mmMamba-linear`` / ``hustvl/mmMamba_hybrid``): ``model_type:
  "mmMamba_chat"``, ``mmMamba_embedding`` / ``mmMamba`` sub-configs with ``layers_block_type`` in both. Its attention
  layers build flash-attn's ``RotaryEmbedding`` from ``rope_theta`` alone: ``rope_scaling`` is ignored.

Which family a config is (:func:`family_of`): ``mmMamba_chat``, or any Mamba-2 layer (HoVLE's code has no Mamba-2
mixer), is mmMamba; ``internvl_chat`` or this project's earlier invented value ``"hovle"`` (all attention) is
HoVLE, and so is any other all-attention config. A student written by ``convert`` / ``distill`` is mmMamba whatever
its layout; a teacher written by ``train-teacher`` is HoVLE.

:func:`stamp_released_fields` writes what each family's released config classes need, where their defaults differ
from what we implement: ``use_ls: false`` (HolisticEmbeddingConfig defaults to true, then refuses to build),
``bias`` / ``attention_bias`` / ``mlp_bias: false`` in both sub-configs (InternLM2Config's ``bias`` defaults to
true: biases on ``wqkv`` / ``wo``), the sub-config ``model_type`` / ``architectures`` / ``auto_map``,
``rope_scaling`` as exactly ``{"type", "factor": float}`` (InternLM2Config validates that), ``llm_hidden_size`` and
``torch_dtype``.

:func:`check_implemented` refuses fields whose released meaning changes the architecture in a way this project
does not implement (biases, LayerScale, LoRA wrappers, an unknown pixel-shuffle version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config.json that cannot describe a model: the message names the file and the field.

    Defined here (the lowest module that raises it) and re-exported by :mod:`mmmamba_bench.config`.
    """


HOVLE = "HoVLE"
MMMAMBA = "mmMamba"

_AUTO_KEYS = ("AutoConfig", "AutoModel", "AutoModelForCausalLM")


@dataclass(frozen=True)
class Family:
    """What one family's released code reads from config.json (the values its own writer produces)."""

    name: str
    model_type: str
    architectures: str | list[str]
    auto_map: dict[str, str]
    embedding_model_type: str
    llm_model_type: str
    llm_architectures: str | list[str]
    llm_auto_map: dict[str, str]
    applies_rope_scaling: bool  # whether its attention layers honour rope_scaling past max_position_embeddings
    block_types_on_disk: bool  # layers_block_type always written (mmMamba) or never (HoVLE's config has none)

    @property
    def class_name(self) -> str:
        arch = self.architectures
        return arch if isinstance(arch, str) else arch[0]

    @property
    def llm_class_name(self) -> str:
        arch = self.llm_architectures
        return arch if isinstance(arch, str) else arch[0]


def _auto_map(config_ref: str, model_ref: str) -> dict[str, str]:
    return {"AutoConfig": config_ref, "AutoModel": model_ref, "AutoModelForCausalLM": model_ref}


FAMILIES: dict[str, Family] = {
    # HoVLE's InternVLChatModel.save_pretrained output (hovle/configuration_*.py of the released code).
    HOVLE: Family(
        name=HOVLE, model_type="internvl_chat", architectures=["InternVLChatModel"],
        auto_map=_auto_map("configuration_internvl_chat.InternVLChatConfig",
                           "modeling_internvl_chat.InternVLChatModel"),
        embedding_model_type="holistic_embedding", llm_model_type="internlm2",
        llm_architectures=["InternLM2ForCausalLM"],
        llm_auto_map=_auto_map("configuration_internlm2.InternLM2Config", "modeling_internlm2.InternLM2ForCausalLM"),
        applies_rope_scaling=True, block_types_on_disk=False),
    # What the released convert_weight.py writes over HoVLE's config (plain strings, not lists).
    MMMAMBA: Family(
        name=MMMAMBA, model_type="mmMamba_chat", architectures="mmMambaChatModel",
        auto_map=_auto_map("configuration_mmMamba_chat.mmMambaChatConfig", "modeling_mmMamba_chat.mmMambaChatModel"),
        embedding_model_type="mmMamba_embedding", llm_model_type="mmMamba", llm_architectures="mmMambaForCausalLM",
        llm_auto_map=_auto_map("configuration_mmMamba.mmMambaConfig", "modeling_mmMamba.mmMambaForCausalLM"),
        applies_rope_scaling=False, block_types_on_disk=True),
}


def family_of(model_type: str | None, block_types: list[str], where: str = "config.json") -> Family:
    """The family of a config with top-level ``model_type`` and these layer types (embedding layers first)."""
    has_mamba = "mamba2" in block_types
    if model_type == FAMILIES[MMMAMBA].model_type:
        return FAMILIES[MMMAMBA]
    if model_type == FAMILIES[HOVLE].model_type and has_mamba:
        raise ConfigError(f"{where}: model_type 'internvl_chat' (HoVLE) but layers_block_type lists Mamba-2 layers; "
                          f"HoVLE's code has no Mamba-2 mixer (a student checkpoint says 'mmMamba_chat')")
    return FAMILIES[MMMAMBA] if has_mamba else FAMILIES[HOVLE]


# Sub-config fields that, when true, add parameters (and math) our layers do not have. HoVLE's InternLM2 puts
# biases on wqkv / wo when ``bias`` is true (its default!); HolisticEmbedding does so for ``attention_bias``.
_BIAS_FIELDS = ("bias", "attention_bias", "mlp_bias")


def _names_class(value: Any, class_name: str) -> bool:
    """``value`` is ``class_name`` as a string or a one-element list (both spellings occur in released files)."""
    return value == class_name or value == [class_name]


def _rope_scaling_on_disk(scaling: dict | None) -> dict | None:
    """``{"type": kind, "factor": float}``: the only form InternLM2Config accepts."""
    if scaling is None:
        return None
    kind = scaling.get("type", scaling.get("rope_type"))
    return {"type": kind, "factor": float(scaling["factor"])}


def stamp_released_fields(data: dict[str, Any], family: Family, torch_dtype: str | None = None) -> dict[str, Any]:
    """``data`` (a config.json dict) with the fields ``family``'s released code needs, in place; returns it.

    Family-defining fields are set to the family's values (``model_type``, the sub-configs' ``model_type``, the
    ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` entries of ``auto_map``); ``architectures`` is kept when
    it already names the family's class (string or one-element list), else set; ``layers_block_type`` is written in
    both sub-configs for mmMamba and left out for HoVLE (all attention). Other fields are left as they are.
    """
    emb, llm = data["embedding_config"], data["llm_config"]
    data["model_type"] = family.model_type
    if not _names_class(data.get("architectures"), family.class_name):
        data["architectures"] = family.architectures
    data["auto_map"] = {**(data.get("auto_map") or {}), **family.auto_map}
    if torch_dtype is not None:
        data["torch_dtype"] = torch_dtype

    emb["model_type"] = family.embedding_model_type
    emb["use_ls"] = False
    if emb.get("llm_hidden_size") is None:
        emb["llm_hidden_size"] = emb["hidden_size"]

    llm["model_type"] = family.llm_model_type
    if not _names_class(llm.get("architectures"), family.llm_class_name):
        llm["architectures"] = family.llm_architectures
    llm["auto_map"] = {**(llm.get("auto_map") or {}), **family.llm_auto_map}

    for sub in (emb, llm):
        for key in _BIAS_FIELDS:  # every bias switch of the released (LLaMA-derived) config classes: off
            sub[key] = False
        sub["rope_scaling"] = _rope_scaling_on_disk(sub.get("rope_scaling"))
        if not family.block_types_on_disk:
            sub.pop("layers_block_type", None)  # HoVLE: every layer is attention
        elif sub.get("layers_block_type") is None:
            sub["layers_block_type"] = ["mha"] * sub["num_hidden_layers"]
    return data


# ---- fields we refuse -------------------------------------------------------------------------------------------

# Pixel-shuffle versions the released code loads: it applies the v2 shuffle whatever ps_version says.
PS_VERSIONS = ("v1", "v2")


def check_implemented(data: dict[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` for a config.json field that asks for an architecture we do not implement.

    Accepted although the released configs carry them: ``pretraining_tp`` (the released HoVLE / InternLM2 code never
    reads it), ``attn_implementation`` (a kernel choice), ``drop_path_rate`` (training only). An absent ``bias`` /
    ``use_ls`` is read as false, as this project has always written and read its own checkpoints.
    """
    version = data.get("ps_version", "v2")
    if version not in PS_VERSIONS:
        raise ConfigError(f"{where}: ps_version {version!r} is not supported (the released code applies the v2 "
                          f"pixel shuffle for 'v1' and 'v2'; anything else is refused)")
    for key in ("use_backbone_lora", "use_llm_lora"):
        if data.get(key):
            raise ConfigError(f"{where}: {key}={data[key]!r} wraps the model in LoRA adapters (other tensor names); "
                              f"only merged checkpoints ({key}: 0) are supported")
    for sub_name in ("embedding_config", "llm_config"):
        sub = data.get(sub_name)
        if not isinstance(sub, dict):
            continue  # reported by the config reader
        for key in _BIAS_FIELDS:
            if sub.get(key) is True:
                raise ConfigError(f"{where}: {sub_name}.{key} is true: attention / MLP biases are not implemented "
                                  f"(only bias-free checkpoints, as released, are supported)")
        if sub.get("use_ls") is True:
            raise ConfigError(f"{where}: {sub_name}.use_ls is true: LayerScale is not implemented (the released "
                              f"code refuses it too: 'LS is not supported')")
        scaling = sub.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            raise ConfigError(f"{where}: {sub_name}.rope_scaling must be null or an object, got {scaling!r}")
        factor = (scaling or {}).get("factor", 1.0)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
            raise ConfigError(f"{where}: {sub_name}.rope_scaling factor must be a number >= 1, got {scaling!r}")
