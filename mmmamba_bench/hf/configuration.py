"""transformers config classes for the released config.json of HoVLE (``internvl_chat``) and mmMamba (``mmMamba_chat``).

Each wraps one :class:`~mmmamba_bench.config.ChatConfig` (``config.chat_config``), parsed and validated by the same
reader as :func:`mmmamba_bench.load_model`, so the two loaders accept and refuse exactly the same files.
``config.embedding_config`` / ``config.llm_config`` give attribute access to the two stacks (as the released config
classes do); ``to_dict`` / ``save_pretrained`` write the released layout (``ChatConfig.to_dict``), with
``torch_dtype`` from ``config.dtype``.

Importing this module imports ``transformers.configuration_utils`` (and with it torch), nothing of transformers'
modeling code.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from transformers.configuration_utils import PreTrainedConfig

from mmmamba_bench.config import HOVLE, MMMAMBA, ChatConfig, ConfigError, EmbeddingConfig, LLMConfig
from mmmamba_bench.families import FAMILIES

# Keyword arguments that belong to transformers' PreTrainedConfig, not to the released config.json's own fields.
_HF_KWARGS = ("name_or_path", "dtype", "torch_dtype", "attn_implementation", "experts_implementation",
              "output_attentions", "output_hidden_states", "return_dict", "num_labels", "id2label", "label2id",
              "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "_commit_hash")


class _ReleasedChatConfig(PreTrainedConfig):
    """A released config.json as transformers sees it: ``chat_config`` plus PreTrainedConfig's own fields."""

    family: ClassVar[str]  # HOVLE or MMMAMBA

    def __init__(self, embedding_config: dict | None = None, llm_config: dict | None = None, **kwargs: Any):
        hf = {key: kwargs.pop(key) for key in _HF_KWARGS if key in kwargs}
        where = f"{hf['name_or_path']}/config.json" if hf.get("name_or_path") else "config.json"
        if embedding_config is None or llm_config is None:
            raise self._not_our_layout(where, kwargs, "embedding_config" if embedding_config is None else "llm_config")
        released = {"model_type": self.model_type, **kwargs, "embedding_config": embedding_config,
                    "llm_config": llm_config}
        self.chat_config = ChatConfig.from_dict(released, where=where)
        super().__init__(**hf)
        # transformers' own view (AutoModel picks classes by it); the released value is kept in chat_config
        self.architectures = [self.chat_config.family.class_name]

    @classmethod
    def _not_our_layout(cls, where: str, fields: dict, missing: str) -> ConfigError:
        return ConfigError(f"{where}: no {missing!r} field; mmmamba_bench registers model_type "
                           f"{cls.model_type!r} with transformers for the released {cls.family} layout only")

    # ---- attribute access as in the released config classes -------------------------------------------------
    @property
    def embedding_config(self) -> EmbeddingConfig:
        return self.chat_config.embedding_config

    @property
    def llm_config(self) -> LLMConfig:
        return self.chat_config.llm_config

    # ---- serialisation: the released layout ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        dtype = self.dtype
        name = None if dtype is None else dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        return self.chat_config.to_dict(torch_dtype=name)

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()  # every field: the released code has its own (different) defaults

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"  # released key order, not sorted


class HoVLEChatConfig(_ReleasedChatConfig):
    """HoVLE's config.json (``model_type: internvl_chat``; released class ``InternVLChatConfig``).

    ``internvl_chat`` is also the model_type of other InternVL checkpoints (a ``vision_config`` instead of HoVLE's
    ``embedding_config``): those are refused with a message saying how to load them with their own code.
    """

    model_type = FAMILIES[HOVLE].model_type
    family = HOVLE

    def __init__(self, **kwargs: Any):  # defined here: transformers wraps an inherited __init__ of a subclass
        super().__init__(**kwargs)

    @classmethod
    def _not_our_layout(cls, where: str, fields: dict, missing: str) -> ConfigError:
        other = " (it has 'vision_config': another InternVL model)" if "vision_config" in fields else ""
        return ConfigError(
            f"{where}: no {missing!r} field{other}. mmmamba_bench registers model_type 'internvl_chat' with "
            f"transformers for HoVLE-layout checkpoints only. To load another InternVL checkpoint with its own code, "
            f"call mmmamba_bench.hf.unregister() first and pass trust_remote_code=True (transformers prefers a "
            f"registered class even when trust_remote_code=True)")


class MMMambaChatConfig(_ReleasedChatConfig):
    """mmMamba's config.json (``model_type: mmMamba_chat``; released class ``mmMambaChatConfig``)."""

    model_type = FAMILIES[MMMAMBA].model_type
    family = MMMAMBA

    def __init__(self, **kwargs: Any):  # defined here: transformers wraps an inherited __init__ of a subclass
        super().__init__(**kwargs)


CONFIG_CLASSES: tuple[type[_ReleasedChatConfig], ...] = (HoVLEChatConfig, MMMambaChatConfig)

