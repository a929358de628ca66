"""Prefill, then one-token steps over a cache allocated up front (fixed shapes); greedy or sampling.

:func:`generate` runs one of two paths, recorded in ``model.code_path.extra["generate"]``:

- the eager per-token loop below (the reference; the CPU path), one model call per token;
- on CUDA, the batched fast path (:mod:`mmmamba_bench.fast.batched`): the same prefill, then a batched decode step
  captured in a CUDA graph per batch-size bucket. ``fast="auto"`` takes it when it can run and says why not
  otherwise (logged once and recorded); ``fast="on"`` raises instead of falling back (on CPU it runs the batched
  step with plain-PyTorch ops, no graph, which the CPU tests use); ``fast="off"`` forces the eager loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from mmmamba_bench.steps import (  # re-exported: the eager loop's building blocks
    WatchLogits,
    prefill,
    select_next,
)

log = logging.getLogger(__name__)
FAST_MODES = ("auto", "on", "off")
_announced: set[str] = set()


def choose_path(model, fast: str = "auto") -> tuple[bool, str]:
    """(use the batched fast path, why) for ``model`` under ``fast`` ("auto" / "on" / "off"); "on" raises when the
    fast path cannot run on this model's CUDA device."""
    from mmmamba_bench.fast.batched import fast_usable

    if fast not in FAST_MODES:
        raise ValueError(f"fast must be one of {FAST_MODES}, got {fast!r}")
    if fast == "off":
        return False, "fast=off requested"
    if model.device.type != "cuda":
        if fast == "on":
            return True, "fast=on on CPU: batched step with plain-PyTorch ops, no CUDA graph"
        return False, f"no CUDA device (model on {model.device})"
    ok, _, why = fast_usable(model)
    if not ok and fast == "on":
        raise RuntimeError(f"fast=on requested but the batched CUDA-graph decode cannot run: {why}")
    return ok, why


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, generator: torch.Generator | None = None,
             prefill_chunk_size: int | None = None,
             stop: Callable[[torch.Tensor], torch.Tensor] | None = None, fast: str = "auto",
             stop_interval: int = 4) -> torch.Tensor:
    """Return ``[B, L + n]``: the prompt followed by up to ``max_new_tokens`` new tokens.

    Decoding stops early only when every sequence has produced an EOS id (or ``stop`` returns True for every
    row, given the tokens so far); finished rows are filled with ``pad_token_id`` (default: the first EOS id).

    ``fast``: which path (module docstring). The fast path calls ``stop`` every ``stop_interval`` steps (and at
    the last one) instead of every step, so a row that ``stop`` ends may carry a few more real tokens (not pad ids)
    after the point where the eager loop ends it, and the output may be up to ``stop_interval - 1`` columns longer;
    EOS handling and every token up to that point are the eager loop's.
    """
    use_fast, why = choose_path(model, fast)
    if use_fast:
        from mmmamba_bench.fast.batched import fast_generator

        return fast_generator(model).generate(
            input_ids, pixel_values=pixel_values, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id, generator=generator, prefill_chunk_size=prefill_chunk_size, stop=stop,
            stop_interval=stop_interval)
    model.code_path.extra["generate"] = f"eager per-token loop ({why})"
    if why not in _announced and model.device.type == "cuda":
        _announced.add(why)
        log.warning("generate: eager per-token loop on %s: %s", model.device, why)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B, L = input_ids.shape
    device = model.device
    input_ids = input_ids.to(device)
    if max_new_tokens == 0:
        return input_ids
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    eos_t = torch.tensor(eos, device=device, dtype=torch.long)
    cache = model.allocate_cache(B, L + max_new_tokens)
    logits = prefill(model, cache, input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                     chunk_size=prefill_chunk_size)
    out = [input_ids]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        tok = select_next(logits, do_sample, temperature, top_k, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        out.append(tok[:, None])
        if eos:
            done |= torch.isin(tok, eos_t)
        if stop is not None:
            done |= stop(torch.cat(out, dim=1)[:, L:])
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = model(tok[:, None], cache=cache).logits[:, -1]
    return torch.cat(out, dim=1)
