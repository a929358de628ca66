"""transformers integration: released HoVLE / mmMamba directories through ``AutoConfig`` / ``AutoModel`` /
``AutoModelForCausalLM`` (and ``AutoProcessor``), without ``trust_remote_code``.

``import mmmamba_bench`` calls ``register(processor=False)`` when transformers is installed; call :func:`register`
yourself for ``AutoProcessor`` too. Then::

    import mmmamba_bench
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("path/to/mmMamba-linear", dtype=torch.float32)
    model(input_ids=ids, pixel_values=tiles).logits          # the same logits as mmmamba_bench.load_model

- :mod:`~mmmamba_bench.hf.configuration`: ``HoVLEChatConfig`` (``internvl_chat``), ``MMMambaChatConfig``
  (``mmMamba_chat``), both wrapping the project's :class:`~mmmamba_bench.config.ChatConfig`.
- :mod:`~mmmamba_bench.hf.modeling`: ``HoVLEForCausalLM`` / ``MMMambaForCausalLM``, ``PreTrainedModel`` classes over
  the project's one model (:class:`~mmmamba_bench.model.stack.MMMambaChatModel`).
- :mod:`~mmmamba_bench.hf.registration`: :func:`register` / :func:`unregister`, with lazily resolving stand-ins so
  that registering does not import transformers' modeling code.

Importing this package imports nothing from transformers; :func:`register` does.
"""

from __future__ import annotations

from mmmamba_bench.hf.registration import register, unregister

__all__ = ["register", "unregister"]
