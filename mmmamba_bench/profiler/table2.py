"""What ``mmmamba-bench speed`` runs for each model of its ``--models`` list: the variants and their order.

A model is one of ours (a preset: mmmamba-linear, mmmamba-hybrid, hovle-2.6b, tiny, demo; or a checkpoint) or a
Table-2 baseline (a model card with ``architecture``: llava-phi, mobilevlm-3b, cobra-3.5b, visualrwkv-3b, and their
``tiny-`` forms). Variants:

- ``release``: how the model's release generates. Baselines: transformers ``generate`` with its default cache
  (:func:`mmmamba_bench.baselines.speed.release_run`). Ours: the paper-faithful decode of
  :class:`~mmmamba_bench.profiler.hf_style.ConcatCacheDecoder` (one eager model call per token, the KV cache
  grown by ``torch.cat``, a device sync per token as ``generate`` makes), on the same image prompt.
- ``best``: the best our tooling makes of it. Baselines: :func:`~mmmamba_bench.baselines.speed.best_run`. Ours:
  :func:`~mmmamba_bench.profiler.run.speed_run` (the fast decode path).

Default (``variants=None``): baselines ``release`` then ``best``; ours ``best`` only. Every row's ``extra`` holds
``variant`` and ``paper_row`` (the Table-2 row it stands beside in the report).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from mmmamba_bench.profiler.memory import synchronize
from mmmamba_bench.provenance import device_name
from mmmamba_bench.results import SpeedRow

VARIANTS = ("release", "best")


@dataclass(frozen=True)
class SpeedJob:
    spec: str  # the --models entry
    variant: str  # "release" | "best"
    baseline: bool  # a Table-2 baseline card (else one of ours)


def parse_variants(text: str | None) -> tuple[str, ...] | None:
    """``--variants``: None / "default" (per model, see the module docstring) or a comma list of VARIANTS."""
    if text is None or text.strip() == "default":
        return None
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ValueError(f"--variants {text!r}: choose 'default' or a comma list of {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(names))


def plan(models: list[str], variants: tuple[str, ...] | None) -> list[SpeedJob]:
    """The jobs in run order: model by model (as listed), each model's variants in VARIANTS order."""
    from mmmamba_bench.baselines.spec import baseline_spec

    jobs = []
    for spec in models:
        is_baseline = baseline_spec(spec) is not None
        chosen = variants if variants is not None else (VARIANTS if is_baseline else ("best",))
        jobs.extend(SpeedJob(spec, v, is_baseline) for v in VARIANTS if v in chosen)
    return jobs


def paper_row_of(spec: str) -> str | None:
    """The Table-2 row of one of our presets (from its model card, e.g. hovle-2.6b -> HoVLE)."""
    from mmmamba_bench.cards import find_card

    card = find_card(spec)
    return card.speed_row if card is not None else None


def ours_release_run(model, label: str, output_tokens: int, repeats: int, n_tiles: int = 3,
                     warmup_tokens: int = 16) -> SpeedRow:
    """Our model decoded the paper-faithful way (see the module docstring) on the Table-2 image prompt."""
    from mmmamba_bench.profiler.hf_style import ConcatCacheDecoder
    from mmmamba_bench.profiler.run import table2_prompt

    device = model.device
    ids, pixels = table2_prompt(model, n_tiles)

    def run(n: int) -> tuple[float, float]:
        dec = ConcatCacheDecoder(model)
        synchronize(device)
        t0 = time.perf_counter()
        tok = dec.forward(ids, pixel_values=pixels).argmax(-1).view(1, 1)
        synchronize(device)
        t1 = time.perf_counter()
        for _ in range(n - 1):
            tok = dec.forward(tok).argmax(-1).view(1, 1)
            synchronize(device)  # generate reads each token on the host (its stopping criteria)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    run(min(warmup_tokens, output_tokens))  # untimed warm-up
    runs = [run(output_tokens) for _ in range(repeats)]
    prefill_s, decode_s = sorted(runs, key=sum)[len(runs) // 2]
    total = prefill_s + decode_s
    cp = model.code_path
    path = {"ssd_scan": cp.ssd_scan, "ssd_step": cp.ssd_step if model.config.kind != "transformer" else "-",
            "attention": "sdpa" if model.config.kind != "linear" else "-", "gemv": "torch (nn.Linear)",
            "decode": "hf-style-eager (one model call per token)", "cache": "concat (DynamicCache-like)",
            "graph": "none", "prefill": "one-shot eager", "timing": "host, synchronised per token"}
    emb = model.config.embedding_config
    totals = [a + b for a, b in runs]
    return SpeedRow(model=label, kind=model.config.kind, device=device_name(device),
                    dtype=str(model.dtype).replace("torch.", ""), path=path,
                    visual_tokens=n_tiles * emb.tokens_per_tile, prompt_tokens=int(ids.shape[1]),
                    output_tokens=output_tokens, prefill_s=prefill_s, decode_s=decode_s, total_s=total,
                    tokens_per_s=output_tokens / total,
                    extra={"totals_s": totals, "total_median_s": statistics.median(totals), "repeats": repeats,
                           "eos_stop": False})


def free(device: torch.device) -> None:
    from mmmamba_bench.profiler.memory import free_memory

    free_memory(device)
