"""The Table-2 recipe on a baseline: one image + "Describe the image specifically", ``output_tokens`` forced new
tokens (greedy, EOS suppressed), batch 1; total = vision encoding + prefill + decode, timed on the host with the
device synchronised.

Two variants, each a :class:`~mmmamba_bench.results.SpeedRow` whose ``path`` says what ran:

- ``release``: the way the model's release generates: transformers' ``generate`` over ``inputs_embeds`` (visual
  + text tokens) with the cache the library picks by default (a ``DynamicCache``; fla's own cache for RWKV6), eager,
  with whatever kernels the library resolved (:mod:`mmmamba_bench.baselines.paths`).
- ``best``: the best our tooling makes of the same library model: a fixed-address cache (transformers'
  ``StaticCache`` for Phi / Llama; Mamba's own cache, whose conv / SSM states are already updated in place) and one
  greedy decode step -- the library's own one-token ``forward`` plus the argmax -- captured once as a CUDA graph and
  replayed per token (no ``torch.compile``: nothing to compile or autotune). Off CUDA the same step runs eagerly and
  the row says so. fla's RWKV6 cache replaces its state tensors every step, so it has no ``best`` variant
  (:func:`best_unavailable` says why).

A first, untimed run of each variant warms up (cuBLAS / Triton compilation, graph capture); the median total of
``repeats`` timed runs is reported, every total in ``extra``.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from mmmamba_bench.baselines.build import BaselineVLM
from mmmamba_bench.baselines.paths import library_path
from mmmamba_bench.profiler.memory import synchronize
from mmmamba_bench.provenance import device_name
from mmmamba_bench.results import SpeedRow

VARIANTS = ("release", "best")
RELEASE_WARMUP_TOKENS = 16  # the untimed release run: enough steps to warm every kernel, not a full run
PROMPT = "one image + 'Describe the image specifically' (random ids of the release's chat-template length)"


@dataclass(frozen=True)
class SpeedSettings:
    output_tokens: int = 256
    repeats: int = 3
    seed: int = 0


def table2_inputs(model: BaselineVLM, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random text ids around one random image: ``(ids_before [1, a], pixels [1, 3, S, S], ids_after [1, b])``
    (random weights have no tokenizer; ``a`` / ``b`` are the card's chat-template lengths)."""
    spec = model.spec
    gen = torch.Generator().manual_seed(seed)
    vocab = int(model.llm.config.vocab_size)
    before, after = (torch.randint(0, vocab, (1, n), generator=gen) for n in spec.text_tokens)
    pixels = torch.randn(1, 3, spec.image_size, spec.image_size, generator=gen)
    return before.to(model.device), pixels.to(model.device, model.dtype), after.to(model.device)


def cache_keyword(llm: Any) -> str:
    """The name under which this library's ``forward`` takes its cache (transformers 5.17 Mamba:
    ``cache_params``; later: ``cache``; attention models and fla: ``past_key_values``)."""
    params = inspect.signature(llm.forward).parameters
    for name in ("past_key_values", "cache", "cache_params"):
        if name in params:
            return name
    raise RuntimeError(f"{type(llm).__name__}.forward takes no cache argument")


def best_unavailable(model: BaselineVLM) -> str | None:
    """Why the ``best`` variant cannot run for this model, or None."""
    if model.spec.llm.package == "fla":
        return ("none: fla's RWKV6 cache replaces its recurrent / shift-state tensors every step (no fixed address "
                "a CUDA graph could replay), and its release decode already runs fla's fused_recurrent Triton kernel")
    return None


class _FirstTokenClock:
    """A logits processor that notes when ``generate`` first has logits (the prefill is done)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.t: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.t is None:
            synchronize(self.device)
            self.t = time.perf_counter()
        return scores


def _generate(model: BaselineVLM, inputs: tuple, n: int) -> tuple[float, float, Any]:
    """One release-style run: (prefill_s incl. vision, decode_s, generate's output)."""
    from transformers import LogitsProcessorList

    device = model.device
    clock = _FirstTokenClock(device)
    eos = model.llm.config.eos_token_id
    kwargs: dict[str, Any] = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                                  eos_token_id=eos, pad_token_id=eos, logits_processor=LogitsProcessorList([clock]),
                                  return_dict_in_generate=True, disable_compile=True)
    synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        embeds = model.prompt_embeds(*inputs)  # [1, L, D]
        if model.spec.llm.package == "transformers":
            kwargs["attention_mask"] = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
        out = model.llm.generate(inputs_embeds=embeds, **kwargs)
    synchronize(device)
    t2 = time.perf_counter()
    got = out.sequences.shape[-1]
    if got != n:
        raise RuntimeError(f"{model.spec.name}: generate returned {got} new tokens, not the forced {n}")
    return clock.t - t0, t2 - clock.t, out


def release_run(model: BaselineVLM, label: str, s: SpeedSettings) -> SpeedRow:
    """transformers ``generate`` with its default cache, eager (see the module docstring)."""
    inputs = table2_inputs(model, s.seed)
    _generate(model, inputs, min(RELEASE_WARMUP_TOKENS, s.output_tokens))  # untimed warm-up
    runs, out = [], None
    for _ in range(s.repeats):
        prefill_s, decode_s, out = _generate(model, inputs, s.output_tokens)
        runs.append((prefill_s, decode_s))
    cache = type(getattr(out, "past_key_values", None)).__name__
    path = {**library_path(model), "decode": "generate (greedy, min_new_tokens = max_new_tokens)", "cache": cache,
            "compile": "none (disable_compile)", "graph": "none", "timing": "host, device-synchronised"}
    return _row(model, label, "release", runs, s, path, {"best_path": best_unavailable(model)})


class GreedyStep:
    """One greedy token over a fixed-address cache: ``tok [1, 1]`` -> the next token, in place (graph-safe)."""

    def __init__(self, model: BaselineVLM, cache: Any):
        self.llm, self.cache = model.llm, cache
        self.cache_kw = cache_keyword(model.llm)
        self.tok = torch.zeros((1, 1), dtype=torch.long, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def prefill(self, embeds: torch.Tensor) -> None:
        logits = self.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache}).logits
        self.tok.copy_(logits[:, -1:].argmax(-1))  # [1, 1]

    def eager(self) -> None:
        logits = self.llm(input_ids=self.tok, use_cache=True, **{self.cache_kw: self.cache}).logits  # [1, 1, V]
        self.tok.copy_(logits[:, -1:].argmax(-1))

    def capture(self) -> None:
        """Warm up on a side stream (as CUDA graphs require), then capture one step."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.eager()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.eager()
        self.graph = graph

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.eager()


def _fixed_cache(model: BaselineVLM, max_len: int) -> tuple[Any, str]:
    from transformers import DynamicCache, StaticCache

    if model.spec.kind == "transformer":
        return StaticCache(config=model.llm.config, max_cache_len=max_len), "StaticCache"
    # Mamba: its linear-attention cache layers keep conv / SSM states at fixed addresses, updated in place
    return DynamicCache(config=model.llm.config), "DynamicCache (linear-attention layers: fixed-address states)"


def best_run(model: BaselineVLM, label: str, s: SpeedSettings) -> SpeedRow:
    """Fixed-address cache + the greedy step captured as a CUDA graph (see the module docstring)."""
    why = best_unavailable(model)
    if why:
        raise ValueError(f"{model.spec.name}: no best variant: {why}")
    device = model.device
    inputs = table2_inputs(model, s.seed)
    n = s.output_tokens
    cache, cache_name = _fixed_cache(model, model.spec.prompt_tokens + n + 8)  # + the capture's warm-up steps
    step = GreedyStep(model, cache)
    tokens = torch.zeros(n, dtype=torch.long, device=device)
    graph_note, capture_s, runs = "none (not CUDA: eager steps)", None, []
    for r in range(s.repeats + 1):  # run 0: untimed warm-up and capture
        cache.reset()
        synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            step.prefill(model.prompt_embeds(*inputs))
            tokens[0] = step.tok[0, 0]
            synchronize(device)
            t1 = time.perf_counter()
            if r == 0 and device.type == "cuda":
                c0 = time.perf_counter()
                try:
                    step.capture()
                    graph_note = "cuda_graph (the library's one-token forward + argmax, captured once)"
                except RuntimeError as exc:  # recorded, never silent: the row then times eager steps
                    graph_note = f"capture failed, eager steps ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
                capture_s = time.perf_counter() - c0
            for i in range(1, n):
                step()
                tokens[i] = step.tok[0, 0]
        synchronize(device)
        t2 = time.perf_counter()
        if r > 0:
            runs.append((t1 - t0, t2 - t1))
    path = {**library_path(model), "decode": "greedy step loop (prefill: one forward)", "cache": cache_name,
            "graph": graph_note, "compile": "none", "timing": "host, device-synchronised"}
    extra = {"capture_s": capture_s, "tokens_head": tokens[:8].tolist()}
    return _row(model, label, "best", runs, s, path, extra)


def _row(model: BaselineVLM, label: str, variant: str, runs: list[tuple[float, float]], s: SpeedSettings,
         path: dict[str, str], extra: dict[str, Any]) -> SpeedRow:
    totals = [a + b for a, b in runs]
    prefill_s, decode_s = sorted(runs, key=sum)[len(runs) // 2]
    total = prefill_s + decode_s
    spec = model.spec
    params = sum(p.numel() for p in model.parameters())
    return SpeedRow(model=label, kind=spec.kind, device=device_name(model.device),
                    dtype=str(model.dtype).replace("torch.", ""), path=path, visual_tokens=spec.visual_tokens,
                    prompt_tokens=spec.prompt_tokens, output_tokens=s.output_tokens, prefill_s=prefill_s,
                    decode_s=decode_s, total_s=total, tokens_per_s=s.output_tokens / total,
                    extra={"variant": variant, "paper_row": spec.paper_row, "scale": spec.scale, "repeats": s.repeats,
                           "totals_s": totals, "total_median_s": statistics.median(totals), "eos_stop": False,
                           "params": params, "prompt": PROMPT, **extra})
