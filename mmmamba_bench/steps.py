"""The two building blocks of generation, shared by the eager loop (:mod:`mmmamba_bench.generation`) and the
batched fast path (:mod:`mmmamba_bench.fast.batched`): the prefill into a fixed-shape cache and the choice of the
next token."""

from __future__ import annotations

import torch

from mmmamba_bench.model.cache import InferenceCache


class WatchLogits:
    """``with WatchLogits() as watch:`` records whether any logits :func:`select_next` chose tokens from held NaN or
    +-inf (every path of :func:`generate` selects through it). The record is a flag on the logits' device, updated
    without a host sync per step; :meth:`found` reads it once, after the block."""

    _active: list["WatchLogits"] = []

    def __init__(self) -> None:
        self._bad: torch.Tensor | None = None

    def __enter__(self) -> "WatchLogits":
        WatchLogits._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        WatchLogits._active.remove(self)

    def observe(self, logits: torch.Tensor) -> None:
        bad = ~torch.isfinite(logits).all()
        self._bad = bad if self._bad is None else self._bad | bad

    def found(self) -> bool:
        """True when some observed logits were not finite (one host sync)."""
        return self._bad is not None and bool(self._bad)


def select_next(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B] (observed by every active :class:`WatchLogits`)."""
    for watch in WatchLogits._active:
        watch.observe(logits)
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive when sampling, got {temperature}")
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def prefill(model, cache: InferenceCache, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Run the prompt through the model into ``cache``; returns the last position's logits [B, V].

    With ``chunk_size``, the prompt goes through in chunks (Mamba-2 layers carry conv and SSM state across
    chunks, attention layers append to the static cache). Image tokens must all sit in the first chunk.
    """
    L = input_ids.shape[1]
    if chunk_size is None or chunk_size >= L:
        return model(input_ids, pixel_values=pixel_values, attention_mask=attention_mask, cache=cache,
                     last_logits_only=True).logits[:, -1]
    img_id = model.config.embedding_config.img_context_token_id
    if pixel_values is not None and bool((input_ids[:, chunk_size:] == img_id).any()):
        raise ValueError(f"chunked prefill: image tokens extend past the first chunk of {chunk_size} tokens")
    logits = None
    for s in range(0, L, chunk_size):
        e = min(s + chunk_size, L)
        am = attention_mask[:, s:e] if attention_mask is not None else None
        if am is not None and s == 0 and not bool(am[:, -1].all()):
            raise ValueError("chunked prefill with padding: the first chunk must end on real tokens")
        logits = model(input_ids[:, s:e], pixel_values=pixel_values if s == 0 else None, attention_mask=am,
                       cache=cache, last_logits_only=True).logits[:, -1]
    assert logits is not None
    return logits
