"""The profile loop (one :class:`ProfileRow` per model, baseline and context) and the Table-2 speed run.

Per context: a random text prompt of that many tokens is prefilled once untimed (Triton compilation and the SSD
kernels' autotuning for every chunk shape happen there; its time is kept as ``extra.prefill_warmup_s``), then
prefilled again from an empty cache (timed, allocator peak recorded), then the decode step is warmed up (Triton compilation, GEMV tuning and CUDA-graph capture all happen here, outside the
timed region) and ``steps`` steps are timed one by one with device events; the row holds their median. An
out-of-memory anywhere in a context becomes a row with ``status="oom"``; the next context starts clean.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from mmmamba_bench.fast.decoder import FastDecoder
from mmmamba_bench.generation import prefill
from mmmamba_bench.profiler import floor as fl
from mmmamba_bench.profiler.memory import (MemoryCap, MemoryMeter, free_memory, is_oom, nvml_used_bytes,
                                           synchronize)
from mmmamba_bench.provenance import device_name
from mmmamba_bench.results import ProfileRow, SpeedRow

log = logging.getLogger(__name__)
BASELINES = ("optimized", "paper")


@dataclass
class ProfileSettings:
    steps: int = 50
    warmup: int = 10
    chunk_size: int = 16384
    impl: str = "auto"  # FastDecoder implementation for the optimized baseline
    graph: bool = True  # capture the step in a CUDA graph (CUDA only)
    bandwidth: float | None = None  # measured copy bandwidth, bytes/s
    cap: MemoryCap | None = None
    seed: int = 0
    tuner: object | None = None  # a triton_ops.GemvTuner shared across contexts


@dataclass
class _Timing:
    prefill_s: float
    step_ms: list[float]
    peak_prefill: int | None
    peak_decode: int | None
    nvml: int | None
    path: dict[str, str]
    extra: dict = field(default_factory=dict)


def _time_steps(device: torch.device, step: Callable[[], object], n: int, host_sync: bool = False) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``step``.

    Graph-replayed steps (GPU-bound) are timed with device events around each call. Eager, launch-bound steps
    (``host_sync=True``: the paper-style baseline and the transformers peer) are timed on the host with a device
    sync after each step: the next token is only usable once it is on the host (``generate`` checks its stopping
    criteria there every step), and event pairs without a sync can leave host work between steps uncounted.
    """
    out = []
    if host_sync:
        for _ in range(n):
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            out.append(1e3 * (time.perf_counter() - t0))
        return out
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for a, b in events:
            a.record()
            step()
            b.record()
        torch.cuda.synchronize(device)
        return [a.elapsed_time(b) for a, b in events]
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def _prompt(model, context: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + context)
    V = model.config.llm_config.vocab_size
    return torch.randint(0, V, (1, context), generator=gen).to(model.device)


def _optimized(model, context: int, s: ProfileSettings, meter: MemoryMeter) -> _Timing:
    device = model.device
    ids = _prompt(model, context, s.seed)
    meter.reset()
    cache = model.allocate_cache(1, context + s.warmup + s.steps + 2)
    # Warm-up: an untimed prefill of the same prompt compiles and autotunes every kernel shape this context's
    # chunks use (the SSD scan's autotuning alone took seconds); its time is kept apart as ``prefill_warmup_s``.
    synchronize(device)
    t0 = time.perf_counter()
    prefill(model, cache, ids, chunk_size=s.chunk_size)
    synchronize(device)
    prefill_warmup_s = time.perf_counter() - t0
    cache.reset()
    meter.reset()
    synchronize(device)
    t0 = time.perf_counter()
    logits = prefill(model, cache, ids, chunk_size=s.chunk_size)
    synchronize(device)
    prefill_s = time.perf_counter() - t0
    peak_prefill = meter.peak()
    del ids
    meter.reset()
    dec = FastDecoder(model, cache, impl=s.impl, tuner=s.tuner)
    dec.start(logits.argmax(-1))
    t0 = time.perf_counter()
    dec.step()  # eager: compiles and tunes
    synchronize(device)
    first_step_s = time.perf_counter() - t0
    if s.graph and device.type == "cuda" and not (dec.impl == "torch" and dec.has_attention):
        dec.capture()
    for _ in range(s.warmup):
        dec.step()
    step_ms = _time_steps(device, dec.step, s.steps)
    peak_decode = meter.peak()
    nvml = nvml_used_bytes(device)
    dec.record_path()
    path = {**model.code_path.as_dict(), **dec.path(), "prefill_chunk": str(s.chunk_size)}
    extra = {"first_step_s": first_step_s, "refine_s": dec.refine_s, "cache_bytes": cache.nbytes(),
             "prefill_warmup_s": prefill_warmup_s,
             "prefill_compile_s": max(0.0, prefill_warmup_s - prefill_s), "prefill_warm": True}
    del dec, cache
    return _Timing(prefill_s, step_ms, peak_prefill, peak_decode, nvml, path, extra)


def _paper(model, context: int, s: ProfileSettings, meter: MemoryMeter) -> _Timing:
    from mmmamba_bench.profiler.hf_style import ConcatCacheDecoder

    device = model.device
    ids = _prompt(model, context, s.seed)
    synchronize(device)
    t0 = time.perf_counter()
    ConcatCacheDecoder(model).forward(ids)  # untimed warm-up: compilation / autotuning for this shape
    synchronize(device)
    prefill_warmup_s = time.perf_counter() - t0
    free_memory(device)
    meter.reset()
    dec = ConcatCacheDecoder(model)
    synchronize(device)
    t0 = time.perf_counter()
    logits = dec.forward(ids)
    synchronize(device)
    prefill_s = time.perf_counter() - t0
    peak_prefill = meter.peak()
    del ids
    meter.reset()
    tok = logits.argmax(-1).view(1, 1)

    def step():
        nonlocal tok
        tok = dec.forward(tok).argmax(-1).view(1, 1)

    for _ in range(s.warmup + 1):
        step()
    step_ms = _time_steps(device, step, s.steps, host_sync=True)
    event_ms = _time_steps(device, step, min(20, s.steps))  # cross-check only
    peak_decode = meter.peak()
    nvml = nvml_used_bytes(device)
    path = {"ssd_scan": model.code_path.ssd_scan, "ssd_step": model.code_path.ssd_step if model.config.kind != "transformer"
            else "-", "attention": "sdpa", "gemv": "torch (nn.Linear)", "decode": "hf-style-eager",
            "cache": "concat (DynamicCache-like)", "graph": "none", "prefill": "one-shot", "timing": "host-synced",
            "rope": model.code_path.rope}
    del dec
    return _Timing(prefill_s, step_ms, peak_prefill, peak_decode, nvml, path,
                   {"event_ms_median": statistics.median(event_ms), "prefill_warmup_s": prefill_warmup_s,
                    "prefill_compile_s": max(0.0, prefill_warmup_s - prefill_s), "prefill_warm": True})


def _peer(llama, context: int, s: ProfileSettings, meter: MemoryMeter) -> _Timing:
    from mmmamba_bench.profiler.peer import LlamaDecoder, version

    device = llama.device
    V = llama.config.vocab_size
    ids = torch.randint(0, V, (1, context), generator=torch.Generator().manual_seed(s.seed + context)).to(device)
    meter.reset()
    dec = LlamaDecoder(llama)
    synchronize(device)
    t0 = time.perf_counter()
    dec.prefill(ids)
    synchronize(device)
    prefill_s = time.perf_counter() - t0
    peak_prefill = meter.peak()
    meter.reset()
    len0 = dec.cache.get_seq_length()
    for _ in range(s.warmup + 1):
        dec.step()
    step_ms = _time_steps(device, dec.step, s.steps, host_sync=True)
    event_ms = _time_steps(device, dec.step, min(20, s.steps))  # cross-check only
    path = {"framework": f"transformers {version()}", "model": "LlamaForCausalLM", "attention": "sdpa",
            "cache": type(dec.cache).__name__, "cache_layer": type(dec.cache.layers[0]).__name__, "graph": "none",
            "decode": "one model() call per token", "compile": "none", "timing": "host-synced"}
    extra = {"event_ms_median": statistics.median(event_ms), "cache_len_after_prefill": len0,
             "cache_len_end": dec.cache.get_seq_length(), "k_shape_end": list(dec.cache.layers[0].keys.shape)}
    out = _Timing(prefill_s, step_ms, peak_prefill, meter.peak(), nvml_used_bytes(device), path, extra)
    del dec
    return out


def profile_context(model, label: str, context: int, baseline: str, s: ProfileSettings,
                    runner: Callable | None = None, kind: str | None = None, config=None) -> ProfileRow:
    """One row; an out-of-memory is recorded (status "oom"), other errors propagate."""
    device = model.device
    cfg = config if config is not None else model.config
    meter = MemoryMeter(device)
    kv_len = context + 1 + s.warmup + s.steps // 2  # mean filled length over the timed steps
    sb = fl.step_bytes(cfg, kv_len)
    row = ProfileRow(model=label, kind=kind or cfg.kind, context=context, device=device_name(device),
                     dtype=str(model.dtype).replace("torch.", ""), path={}, baseline=baseline,
                     memory_cap_bytes=s.cap.cap_bytes if s.cap else None, bandwidth_bytes_per_s=s.bandwidth,
                     bytes_per_step=float(sb.total),
                     extra={"bytes": {"weights": sb.weights, "state": sb.state, "kv": sb.kv}, "kv_len": kv_len,
                            "memory_source": meter.source})
    if s.bandwidth:
        row.floor_ms = fl.floor_ms(sb.total, s.bandwidth)
    runner = runner or {"optimized": _optimized, "paper": _paper}[baseline]
    try:
        t = runner(model, context, s, meter)
    except Exception as exc:  # noqa: BLE001 - only OOMs become rows
        if not is_oom(exc):
            raise
        row.status, row.error = "oom", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        row.path = {**model.code_path.as_dict(), "baseline": baseline} if hasattr(model, "code_path") else {}
        log.warning("%s %s at %d tokens: out of memory", label, baseline, context)
        free_memory(device)
        return row
    free_memory(device)
    row.path = t.path
    row.prefill_s = t.prefill_s
    row.decode_ms_per_token = statistics.median(t.step_ms)
    row.tokens_per_s = 1e3 / row.decode_ms_per_token
    row.decode_steps = len(t.step_ms)
    row.peak_prefill_bytes, row.peak_decode_bytes, row.nvml_used_bytes = t.peak_prefill, t.peak_decode, t.nvml
    row.extra.update(t.extra)
    row.extra["step_ms_min_max"] = [min(t.step_ms), max(t.step_ms)]
    if row.floor_ms:
        row.ratio_to_floor = row.decode_ms_per_token / row.floor_ms
    if s.cap is not None and s.cap.exceeded(max(x for x in (t.peak_prefill, t.peak_decode, 0) if x is not None)):
        row.status = "oom"
        row.error = f"peak memory exceeded the {s.cap.cap_bytes} byte cap (checked after the run: {meter.source})"
    log.info("%s %s %d tokens: prefill %.3f s, decode %.3f ms/token%s", label, baseline, context, row.prefill_s,
             row.decode_ms_per_token, f" ({row.ratio_to_floor:.2f} x floor)" if row.ratio_to_floor else "")
    return row


def profile_peer(device: torch.device, dtype: torch.dtype, contexts: list[int], s: ProfileSettings) -> list[ProfileRow]:
    """transformers' Llama of HoVLE's shape at ``contexts`` (baseline "paper": HF eager with DynamicCache)."""
    from mmmamba_bench.config import preset
    from mmmamba_bench.profiler.peer import LABEL, build_llama

    llama = build_llama(device, dtype, max(contexts) + s.steps + s.warmup + 8)
    llama.dtype  # noqa: B018 - transformers models expose .dtype / .device
    rows = [profile_context(llama, LABEL, c, "paper", s, runner=_peer, kind="transformer",
                            config=preset("hovle-2.6b")) for c in contexts]
    del llama
    free_memory(device)
    return rows


# ---- Table 2 --------------------------------------------------------------------------------------------------

def table2_prompt(model, n_tiles: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image of ``n_tiles`` tiles (3 x 256 = 768 visual tokens for HoVLE: a 2-tile grid + thumbnail) and the
    chat turn "Describe the image specifically": ``(input_ids [1, L], pixel_values [n_tiles, 3, S, S])``.

    Random weights have no tokenizer, so the text around the image block gets random ids of the tokenized
    template's length (5 before the image: "<|im_start|>user\\n"; 15 after it: "\\nDescribe the image
    specifically<|im_end|>\\n<|im_start|>assistant\\n").
    """
    emb = model.config.embedding_config
    gen = torch.Generator().manual_seed(seed)
    V = emb.llm_vocab_size
    sp = emb.special_token_maps
    visual = n_tiles * emb.tokens_per_tile
    ids = (torch.randint(0, V, (5,), generator=gen).tolist() + [sp["<img>"]] + [emb.img_context_token_id] * visual
           + [sp["</img>"]] + torch.randint(0, V, (15,), generator=gen).tolist())
    S = model.config.image_size
    pixels = torch.randn(n_tiles, 3, S, S, generator=gen).to(model.device, model.dtype)
    return torch.tensor([ids], device=model.device), pixels


def speed_run(model, label: str, output_tokens: int = 256, repeats: int = 3, impl: str = "auto", graph: bool = True,
              tuner=None, n_tiles: int = 3, prefill_graph: bool = True) -> SpeedRow:
    """Table-2 recipe: prefill the image prompt, then force ``output_tokens`` greedy tokens (no EOS stop);
    total = prefill + decode. A first untimed run compiles, tunes and captures; the median of ``repeats`` runs
    is reported (all totals in ``extra``).

    With ``prefill_graph`` (CUDA), the prompt's decoder layers run as one CUDA graph captured for the prompt's
    shape (:class:`~mmmamba_bench.fast.prefill.PrefillGraph`; captured in the untimed run, the embedding stays
    eager); the eager prefill of the same prompt is timed too (``extra["prefill_eager_s"]``)."""
    device = model.device
    ids, pixels = table2_prompt(model, n_tiles)
    cache = model.allocate_cache(1, ids.shape[1] + output_tokens + 1)
    use_pg = prefill_graph and graph and device.type == "cuda"
    pg = None
    if use_pg:
        from mmmamba_bench.fast.prefill import PrefillGraph

        pg = PrefillGraph(model, cache)
    dec = None
    runs = []
    capture_s = prefill_capture_s = None
    for r in range(repeats + 1):
        cache.reset()
        if r == 0 and pg is not None:  # capture (untimed), then start again from an empty cache
            c0 = time.perf_counter()
            pg(ids, pixels)
            synchronize(device)
            prefill_capture_s = time.perf_counter() - c0
            cache.reset()
        synchronize(device)
        t0 = time.perf_counter()
        logits = pg(ids, pixels) if pg is not None else prefill(model, cache, ids, pixel_values=pixels)
        if dec is None:
            dec = FastDecoder(model, cache, impl=impl, tuner=tuner)
        dec.start(logits.argmax(-1))
        synchronize(device)
        t1 = time.perf_counter()
        for i in range(output_tokens - 1):  # the prefill gave token 1; each step gives the next
            dec.step()
            if r == 0 and i == 0 and graph and device.type == "cuda" and dec.graph is None and \
                    not (dec.impl == "torch" and dec.has_attention):
                c0 = time.perf_counter()
                dec.capture()
                capture_s = time.perf_counter() - c0
        synchronize(device)
        t2 = time.perf_counter()
        if r > 0 or repeats == 0:
            runs.append((t1 - t0, t2 - t1))
    prefill_s, decode_s = sorted(runs, key=lambda x: x[0] + x[1])[len(runs) // 2]
    total = prefill_s + decode_s
    eager = []
    if pg is not None:  # the eager prefill of the same prompt, for comparison (already compiled)
        for _ in range(max(repeats, 1)):
            cache.reset()
            synchronize(device)
            t0 = time.perf_counter()
            prefill(model, cache, ids, pixel_values=pixels)
            synchronize(device)
            eager.append(time.perf_counter() - t0)
    dec.record_path()
    path = {**model.code_path.as_dict(), **dec.path(),
            "prefill": "cuda-graph (embedding eager)" if pg is not None else "eager"}
    emb = model.config.embedding_config
    extra = {"totals_s": [a + b for a, b in runs], "capture_s": capture_s, "repeats": repeats, "eos_stop": False}
    if pg is not None:
        extra.update({"prefill_capture_s": prefill_capture_s, "prefill_eager_s": sorted(eager)[len(eager) // 2],
                      "prefill_eager_all_s": eager,
                      "tokens_per_s_eager_prefill": output_tokens / (sorted(eager)[len(eager) // 2] + decode_s)})
    return SpeedRow(model=label, kind=model.config.kind, device=device_name(device),
                    dtype=str(model.dtype).replace("torch.", ""), path=path, visual_tokens=n_tiles * emb.tokens_per_tile,
                    prompt_tokens=int(ids.shape[1]), output_tokens=output_tokens, prefill_s=prefill_s,
                    decode_s=decode_s, total_s=total, tokens_per_s=output_tokens / total, extra=extra)
