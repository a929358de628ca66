"""The full model: holistic embedding (embeddings + E decoder layers) -> optional L2 norm -> LM layers -> head.

Module names equal the released tensor names, so ``state_dict()`` keys are the checkpoint's keys:
``embedding_model.encoder.{i}.*``, ``language_model.model.layers.{j}.*``, ``language_model.output.weight`` ...
The global layer index runs over the embedding layers first, then the LM layers (``model.layers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from mmmamba_bench.config import ChatConfig, LLMConfig, StackConfig
from mmmamba_bench.model.attention import Attention
from mmmamba_bench.model.cache import InferenceCache
from mmmamba_bench.model.context import ForwardContext
from mmmamba_bench.model.embedding import HolisticEmbedding, InputError
from mmmamba_bench.model.layers import RMSNorm, Rotary, SwiGLU
from mmmamba_bench.model.mamba2 import Mamba2Mixer
from mmmamba_bench.ops.backends import SSDBackend, resolve_backend


class DecoderLayer(nn.Module):
    """x = x + mixer(RMSNorm(x)); x = x + MLP(RMSNorm(x)); the mixer is attention or Mamba-2."""

    def __init__(self, cfg: StackConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg) if kind == "mha" else Mamba2Mixer(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, cache=None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), ctx, cache)
        return x + self.feed_forward(self.ffn_norm(x))


def build_layers(cfg: StackConfig) -> nn.ModuleList:
    return nn.ModuleList(DecoderLayer(cfg, kind) for kind in cfg.block_types)


class _LMBody(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # unused in the image-text path
        self.layers = build_layers(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LanguageModel(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.model = _LMBody(cfg)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, L, V] (or [B, 1, V] with last_logits_only)
    hidden_states: list[torch.Tensor] | None = None  # input of every global layer, then the final pre-norm state


@dataclass
class CodePath:
    """Which implementation ran; recorded in every result row."""

    ssd_scan: str = "torch"
    ssd_step: str = "torch"
    attention: str = "sdpa"
    conv: str = "torch"
    graph: str = "none"
    rope: str = "theta"  # the RoPE rule of the checkpoint's family (Rotary.label), e.g. "dynamic x2.0"
    extra: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, str]:
        out = {"ssd_scan": self.ssd_scan, "ssd_step": self.ssd_step, "attention": self.attention,
               "conv": self.conv, "graph": self.graph, "rope": self.rope}
        out.update(self.extra)
        return out


class MMMambaChatModel(nn.Module):
    """HoVLE (all attention), mmMamba-linear (all Mamba-2) or mmMamba-hybrid, by ``config.block_types``."""

    def __init__(self, config: ChatConfig, ssd_backend: str = "torch"):
        super().__init__()
        self.config = config
        self.embedding_model = HolisticEmbedding(config.embedding_config, build_layers(config.embedding_config))
        self.language_model = LanguageModel(config.llm_config)
        # RoPE per stack, by the family's rule (HoVLE applies rope_scaling, mmMamba uses rope_theta alone)
        scaling = config.applies_rope_scaling
        self._rotary = (Rotary(config.embedding_config, scaling), Rotary(config.llm_config, scaling))
        self._backend: SSDBackend | None = None
        self._backend_name = ssd_backend
        self.gradient_checkpointing = False  # training: recompute each decoder layer in the backward pass
        labels = [r.label for r in self._rotary]
        self.code_path = CodePath(rope=labels[0] if labels[0] == labels[1] else
                                  f"embedding {labels[0]}; llm {labels[1]}")

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[DecoderLayer]:
        """All decoder layers over the global index (embedding module first)."""
        return list(self.embedding_model.encoder) + list(self.language_model.model.layers)

    @property
    def num_embedding_layers(self) -> int:
        return self.config.embedding_config.num_hidden_layers

    def set_ssd_backend(self, name: str = "auto") -> SSDBackend:
        """Choose the SSD scan / state-update implementation (see ops.backends); recorded in ``code_path``."""
        self._backend = resolve_backend(name, self.device)
        self._backend_name = name
        self.code_path.ssd_scan, self.code_path.ssd_step = self._backend.name, self._backend.step_name
        return self._backend

    @property
    def ssd_backend(self) -> SSDBackend:
        if self._backend is None:
            self.set_ssd_backend(self._backend_name)
        assert self._backend is not None
        return self._backend

    @property
    def device(self) -> torch.device:
        return self.language_model.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.output.weight.dtype

    def allocate_cache(self, batch_size: int, max_len: int) -> InferenceCache:
        return InferenceCache.allocate(self.config, batch_size, max_len, self.device, self.dtype)

    # ---- forward ---------------------------------------------------------------------------------------------
    def context(self, stack: int, batch: int, length: int, start: int, key_mask: torch.Tensor | None,
                has_padding: bool) -> ForwardContext:
        """The per-call context for stack 0 (embedding module) or 1 (LM) covering positions [start, start+L).

        key_mask: [B, start + L] bool (True = real token) or None for no padding.
        """
        device = self.device
        end = start + length
        if has_padding and key_mask is not None:
            position_ids = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:end]  # [B, L]
            causal = torch.ones(length, end, dtype=torch.bool, device=device).tril(diagonal=start)
            attn_mask = causal[None] & key_mask[:, None, :]  # [B, L, end]
            own = torch.arange(start, end, device=device)  # a padding query still attends to itself
            attn_mask[:, torch.arange(length, device=device), own] = True
            attn_mask = attn_mask[:, None]
            token_mask = key_mask[:, start:end]
        else:
            position_ids = torch.arange(start, end, device=device)[None].expand(batch, length)
            attn_mask = None  # plain causal; a chunk continuing a cache is aligned bottom-right by Attention
            token_mask = None
        cos, sin = self._rotary[stack].cos_sin(position_ids, end, self.dtype)
        return ForwardContext(cos=cos, sin=sin, start=start, attn_mask=attn_mask, token_mask=token_mask,
                              backend=self.ssd_backend)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        return self.embedding_model(input_ids, pixel_values)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: InferenceCache | None = None,
                last_logits_only: bool = False, output_hidden_states: bool = False,
                inputs_embeds: torch.Tensor | None = None) -> ModelOutput:
        """Logits for ``input_ids`` [B, L] (image tiles replace the image-context tokens, in order).

        inputs_embeds: [B, L, H], the output of :meth:`embed` for these ids (and pixels), computed beforehand;
        ``pixel_values`` is then ignored (used by the CUDA-graph prefill, which embeds outside the graph).

        attention_mask: [B, L] with 1 for real tokens and 0 for LEFT padding (None: no padding).
        cache: continue from / write into this decoding state (see :meth:`allocate_cache`).
        """
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        start = cache.length if cache is not None else 0
        if cache is not None:
            if B != cache.batch_size:
                raise InputError(f"batch {B} differs from the cache's {cache.batch_size}")
            if start + L > cache.max_len:
                raise InputError(f"{start + L} tokens exceed the cache's max_len {cache.max_len}")
        key_mask, has_padding = self._key_mask(attention_mask, cache, B, L, start)

        if inputs_embeds is not None:
            if inputs_embeds.shape[:2] != (B, L):
                raise InputError(f"inputs_embeds must be [B, L, H] with (B, L) = {(B, L)}, "
                                 f"got {tuple(inputs_embeds.shape)}")
            x = inputs_embeds.to(self.dtype)
        else:
            x = self.embed(input_ids, pixel_values).to(self.dtype)
        hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        layer_caches = cache.layers if cache is not None else [None] * len(self.layers)
        n_emb = self.num_embedding_layers
        for stack, layers, offset in ((0, self.embedding_model.encoder, 0), (1, self.language_model.model.layers, n_emb)):
            ctx = self.context(stack, B, L, start, key_mask, has_padding)
            if stack == 1 and self.config.normalize_encoder_output:
                x = F.normalize(x, dim=-1)  # per-token L2 normalisation between the two stacks
            for i, layer in enumerate(layers):
                if hidden is not None:
                    hidden.append(x)
                if self.gradient_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                    # activation checkpointing: keep the layer's input, recompute its inside in the backward pass
                    x = torch.utils.checkpoint.checkpoint(layer, x, ctx, None, use_reentrant=False)
                else:
                    x = layer(x, ctx, layer_caches[offset + i])
        if hidden is not None:
            hidden.append(x)
        if cache is not None:
            cache.length = start + L
        if last_logits_only:
            x = x[:, -1:]
        x = self.language_model.model.norm(x)
        return ModelOutput(logits=self.language_model.output(x), hidden_states=hidden)

    @staticmethod
    def _key_mask(attention_mask: torch.Tensor | None, cache: InferenceCache | None, B: int, L: int,
                  start: int) -> tuple[torch.Tensor | None, bool]:
        if attention_mask is not None:
            if attention_mask.shape != (B, L):
                raise InputError(f"attention_mask must be [B, L] = {(B, L)}, got {tuple(attention_mask.shape)}")
            am = attention_mask.bool()
            if not bool(am[:, -1].all()):
                raise InputError("attention_mask: only LEFT padding is supported (the last position must be real)")
        else:
            am = None
        if cache is None:
            return am, am is not None and not bool(am.all())
        if am is not None:
            cache.key_mask[:, start:start + L] = am
            cache.has_padding = cache.has_padding or not bool(am.all())
        else:
            cache.key_mask[:, start:start + L] = True
        return cache.key_mask[:, :start + L], cache.has_padding

    # ---- generation ------------------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Prompt + new tokens, like transformers' ``generate`` (greedy unless ``do_sample=True``)."""
        from mmmamba_bench.generation import generate

        return generate(self, input_ids, pixel_values=pixel_values, **kwargs)
