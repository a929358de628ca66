"""transformers model classes over the one model of this project, :class:`mmmamba_bench.model.stack.MMMambaChatModel`.

There is no second implementation here. A :class:`ChatForCausalLM` builds the core model and registers the core's
two top-level modules, ``embedding_model`` and ``language_model``, as its own children: its parameter names are the
core's, which are the released checkpoint's tensor names, so transformers' loader fills exactly the core model's
parameters. ``forward`` and ``generate`` call the core model (``model.core``), which holds the same modules.

Loading (transformers 5.x ``from_pretrained``): the model is built on the meta device in the requested dtype
(``dtype="auto"``, the default, is config.json's ``torch_dtype``), tensors are matched by name, and transformers
would then initialise whatever is missing with ``_init_weights``. Here nothing may be missing:
:meth:`ChatForCausalLM.from_pretrained` raises :class:`~mmmamba_bench.checkpoint.CheckpointError` for a missing or
misshaped tensor, and for a tensor of a module the config builds without it (an attention bias), as
:func:`mmmamba_bench.load_model` does. ``_init_weights`` leaves parameters as built (``from_config`` gives the core
model's constructor initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from mmmamba_bench.checkpoint import CheckpointError, tensors_of_built_modules
from mmmamba_bench.hf.configuration import HoVLEChatConfig, MMMambaChatConfig
from mmmamba_bench.model.stack import CodePath, MMMambaChatModel

IGNORE_INDEX = -100


class ChatForCausalLM(PreTrainedModel):
    """A released HoVLE / mmMamba checkpoint behind transformers' ``PreTrainedModel`` interface.

    ``model(input_ids, pixel_values=, attention_mask=, labels=)`` -> ``CausalLMOutputWithPast`` (logits [B, L, V];
    with ``labels`` [B, L], the mean next-token cross-entropy over labels != -100, shifted inside as in the released
    ``InternVLChatModel``). ``model.generate(input_ids, pixel_values=, max_new_tokens=, ...)`` -> [B, L + n]
    (:func:`mmmamba_bench.generation.generate`: fixed-shape cache, greedy unless ``do_sample``).
    """

    main_input_name = "input_ids"
    _no_split_modules = ("DecoderLayer",)
    _supports_sdpa = True  # what the core model's attention runs
    # released extras the core model recomputes (checkpoint.IGNORED_SUFFIXES)
    _keys_to_ignore_on_load_unexpected = (r"rotary_emb\.inv_freq$",)

    def __init__(self, config, ssd_backend: str = "auto"):
        super().__init__(config)
        core = MMMambaChatModel(config.chat_config, ssd_backend=ssd_backend)
        self.embedding_model = core.embedding_model  # registered here: names = checkpoint tensor names
        self.language_model = core.language_model
        object.__setattr__(self, "_core", core)  # not a registered child: each parameter appears once
        self.post_init()

    @property
    def core(self) -> MMMambaChatModel:
        """The project's model, sharing this model's modules (caches, fast decoding, profiling run on it)."""
        core = self._core
        if core.embedding_model is not self.embedding_model or core.language_model is not self.language_model:
            raise RuntimeError("embedding_model / language_model were replaced on the transformers model; the core "
                               "model no longer shares them")
        return core

    @property
    def code_path(self) -> CodePath:
        return self.core.code_path

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Leave parameters as built: loading refuses missing tensors instead of initialising them."""

    def train(self, mode: bool = True):
        super().train(mode)
        self._core.train(mode)  # the core's own flag (its modules are ours)
        return self

    # ---- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' loader, then the checks of :func:`mmmamba_bench.load_model`: every tensor present and
        shaped as config.json says, none silently dropped."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)
        where = pretrained_model_name_or_path
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            raise CheckpointError(f"{where}: missing tensor(s) for this config: {', '.join(missing[:8])}"
                                  + (f" ... ({len(missing)} in all)" if len(missing) > 8 else ""))
        mismatched = sorted(info.get("mismatched_keys") or ())
        if mismatched:
            raise CheckpointError(f"{where}: tensor(s) shaped differently from config.json: {mismatched[:8]}")
        dropped = tensors_of_built_modules(model, sorted(info.get("unexpected_keys") or ()))
        if dropped:
            raise CheckpointError(f"{where}: tensor(s) {dropped[:8]} belong to modules this config builds without "
                                  f"them (e.g. attention biases): loading without them would change the model")
        for name, p in model.state_dict().items():  # NaN / inf weights would evaluate to meaningless scores
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise CheckpointError(f"{where}: tensor {name!r} holds NaN / inf value(s)")
        return (model, info) if want_info else model

    # ---- running ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None):
        """input_ids [B, L]; pixel_values [N_tiles, 3, S, S] replacing the image-context tokens in order;
        attention_mask [B, L] (0 = left padding); labels [B, L] (-100 = no loss)."""
        out = self.core(input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                        output_hidden_states=bool(output_hidden_states))
        loss = None
        if labels is not None:
            logits = out.logits[:, :-1].flatten(0, 1).float()  # position t predicts token t + 1
            loss = F.cross_entropy(logits, labels[:, 1:].flatten().to(logits.device), ignore_index=IGNORE_INDEX)
        hidden = tuple(out.hidden_states) if out.hidden_states is not None else None
        result = CausalLMOutputWithPast(loss=loss, logits=out.logits, hidden_states=hidden)
        return result if return_dict is not False else result.to_tuple()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Prompt + new tokens [B, L + n]; keyword arguments as :func:`mmmamba_bench.generation.generate`."""
        return self.core.generate(input_ids, pixel_values=pixel_values, **kwargs)


class HoVLEForCausalLM(ChatForCausalLM):
    """HoVLE (``internvl_chat``); the released class is ``InternVLChatModel``."""

    config_class = HoVLEChatConfig


class MMMambaForCausalLM(ChatForCausalLM):
    """mmMamba-linear / mmMamba-hybrid (``mmMamba_chat``); the released class is ``mmMambaChatModel``."""

    config_class = MMMambaChatConfig
