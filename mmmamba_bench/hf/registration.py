"""Registering the config, model and processor classes with transformers' Auto classes, cheaply.

What gets registered, per family (``internvl_chat`` -> HoVLE, ``mmMamba_chat`` -> mmMamba):

* ``AutoConfig``: the real config class (:mod:`mmmamba_bench.hf.configuration`; imports
  ``transformers.configuration_utils``, which imports torch).
* ``AutoModel`` and ``AutoModelForCausalLM``: a stand-in class (:class:`_LazyModel`) that provides what
  transformers' Auto classes use of a registered model class (``config_class``, ``__module__``, ``from_pretrained``,
  ``_from_config`` / ``from_config``) and imports the real ``PreTrainedModel`` subclass
  (:mod:`mmmamba_bench.hf.modeling`, transformers' modeling code) only when one of those is called.
* ``AutoProcessor`` (only with ``processor=True``): a stand-in for :class:`mmmamba_bench.processor.Processor`.
  Importing transformers' ``processing_auto`` takes about as long again as everything else here (image
  processors, tokenizers), which is why ``import mmmamba_bench`` leaves it out.

transformers keeps registrations in process-wide mappings; :func:`unregister` removes ours again (through the
mappings' ``_extra_content``: transformers has no public way to unregister).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

# hub arguments AutoProcessor passes along; meaningless for a local directory, which is all Processor reads
_HUB_KWARGS = ("_from_auto", "revision", "cache_dir", "force_download", "local_files_only", "token", "proxies",
               "trust_remote_code", "subfolder")


class _LazyModel:
    """Stands in transformers' model mappings for ``_target`` in :mod:`mmmamba_bench.hf.modeling`."""

    _target = ""
    config_class: Any = None

    @classmethod
    def resolve(cls):
        from mmmamba_bench.hf import modeling

        return getattr(modeling, cls._target)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls.resolve().from_pretrained(*args, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return cls.resolve()._from_config(config, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        return cls.resolve()._from_config(config, **kwargs)


class _LazyProcessor:
    """Stands in transformers' processor mapping for :class:`mmmamba_bench.processor.Processor`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, max_tiles: int = 6, **kwargs):
        unknown = sorted(set(kwargs) - set(_HUB_KWARGS))
        if unknown:
            raise TypeError(f"Processor.from_pretrained got unexpected keyword argument(s) {unknown}")
        path = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            path = path / kwargs["subfolder"]
        if not path.is_dir():
            raise OSError(f"{pretrained_model_name_or_path}: mmmamba_bench's Processor reads a local checkpoint "
                          f"directory (download the repository first, e.g. huggingface_hub.snapshot_download)")
        from mmmamba_bench.processor import Processor

        return Processor.from_pretrained(path, max_tiles=max_tiles)


def _stand_ins():
    from mmmamba_bench.hf.configuration import HoVLEChatConfig, MMMambaChatConfig

    models = {}
    for config_class, target in ((HoVLEChatConfig, "HoVLEForCausalLM"), (MMMambaChatConfig, "MMMambaForCausalLM")):
        models[config_class] = type(target, (_LazyModel,), {
            "_target": target, "config_class": config_class,
            "__doc__": f"Resolves to mmmamba_bench.hf.modeling.{target} on first use."})
    return models


_MODELS: dict | None = None  # config class -> model stand-in, built once (registering twice keeps the same ones)


def register(processor: bool = True) -> None:
    """Register HoVLE (``internvl_chat``) and mmMamba (``mmMamba_chat``) with transformers' Auto classes.

    Afterwards ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` ``.from_pretrained(DIR)`` load a released
    checkpoint directory without ``trust_remote_code``; with ``processor=True`` ``AutoProcessor.from_pretrained(DIR)``
    gives :class:`mmmamba_bench.processor.Processor`. Idempotent. A model_type another library has already registered
    with transformers is left to it, with a warning.
    """
    global _MODELS
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, AutoConfig
    from transformers.models.auto.modeling_auto import AutoModel, AutoModelForCausalLM

    if processor:
        from transformers.models.auto.processing_auto import AutoProcessor
    if _MODELS is None:
        _MODELS = _stand_ins()
    for config_class, model in _MODELS.items():
        # (not CONFIG_MAPPING.get: the lazy mapping's dict.get bypasses its own __getitem__)
        current = CONFIG_MAPPING[config_class.model_type] if config_class.model_type in CONFIG_MAPPING else None
        if current is not None and current is not config_class:
            warnings.warn(f"mmmamba_bench: transformers already maps model_type {config_class.model_type!r} to "
                          f"{current.__module__}.{current.__name__}; not registering {config_class.__name__}",
                          stacklevel=2)
            continue
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model, exist_ok=True)
        if processor:
            AutoProcessor.register(config_class, _LazyProcessor, exist_ok=True)


def unregister() -> None:
    """Remove what :func:`register` added (e.g. to load another InternVL ``internvl_chat`` checkpoint with its own
    remote code in this process). Entries another library registered are left alone."""
    import sys

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if _MODELS is None:
        return
    mappings = [getattr(sys.modules.get(f"transformers.models.auto.{module}"), name, None)
                for module, name in (("modeling_auto", "MODEL_MAPPING"), ("modeling_auto", "MODEL_FOR_CAUSAL_LM_MAPPING"),
                                     ("processing_auto", "PROCESSOR_MAPPING"))]
    for config_class, model in _MODELS.items():
        if CONFIG_MAPPING._extra_content.get(config_class.model_type) is config_class:
            del CONFIG_MAPPING._extra_content[config_class.model_type]
        for mapping in mappings:
            if mapping is not None and mapping._extra_content.get(config_class) in (model, _LazyProcessor):
                del mapping._extra_content[config_class]
