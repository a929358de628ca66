"""What ``mmmamba-bench profile`` and ``mmmamba-bench speed`` do (the argument parsing lives in ``cli.py``)."""

from __future__ import annotations

import itertools
import logging
import platform
import time
from pathlib import Path

import torch

from mmmamba_bench.profiler.memory import (apply_memory_cap, free_memory, is_oom, measure_copy_bandwidth,
                                           nvml_used_bytes)
from mmmamba_bench.profiler.models import build_model, model_label
from mmmamba_bench.provenance import device_name
from mmmamba_bench.profiler.run import BASELINES, ProfileSettings, profile_context, profile_peer, speed_run
from mmmamba_bench.results import PROFILE_SCHEMA, SPEED_SCHEMA, ProfileRow, SpeedRow, write_rows

log = logging.getLogger(__name__)
DEFAULT_CONTEXTS = "1k,2k,4k,8k,16k,32k,64k,103k,128k"
CPU_CONTEXTS = "64,256"


def resolve_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tuner(device: torch.device, dtype: torch.dtype, impl: str, tune: bool):
    from mmmamba_bench.fast.decoder import triton_usable

    if impl == "torch" or not triton_usable(device, dtype)[0]:
        return None
    from mmmamba_bench.fast.tuning import GemvTuner, TuneCache

    # launch configurations measured on this GPU before are reused; new ones are measured here and cached
    return GemvTuner(tune=tune, cache=TuneCache.for_device(device) if tune else None)


def _meta(device, dtype, cap, bandwidth, extra) -> dict:
    meta = {"device": device_name(device), "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
            "python": platform.python_version(), "bandwidth_bytes_per_s": bandwidth,
            "memory_cap": None if cap is None else vars(cap), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
        meta["total_memory"] = torch.cuda.get_device_properties(device).total_memory
        try:
            import triton

            meta["triton"] = triton.__version__
        except ImportError:
            pass
    meta.update(extra)
    return meta


def run_profile(models: list[str], contexts: list[int], baselines: list[str], out: Path, device: torch.device,
                dtype: torch.dtype, memory_cap: int | None = None, steps: int = 50, warmup: int = 10,
                chunk_size: int = 16384, impl: str = "auto", graph: bool = True, tune: bool = True,
                ssd_backend: str = "auto", peer_contexts: list[int] | None = None) -> list[ProfileRow]:
    """Profile every model x baseline x context; rows are written after each context (atomic rewrites), so an
    interrupted run keeps what it measured."""
    from mmmamba_bench.outputs import check_output_file

    check_output_file(out, "--out")
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r}; choose from {BASELINES}")
    if steps < 1:
        raise ValueError("--steps must be at least 1")
    cap = apply_memory_cap(memory_cap, device) if memory_cap else None
    bandwidth = measure_copy_bandwidth(device)
    log.info("copy bandwidth %.2f TB/s on %s", bandwidth / 1e12, device_name(device))
    settings = ProfileSettings(steps=steps, warmup=warmup, chunk_size=chunk_size, impl=impl, graph=graph,
                               bandwidth=bandwidth, cap=cap, tuner=_tuner(device, dtype, impl, tune))
    rows: list[ProfileRow] = []
    meta = _meta(device, dtype, cap, bandwidth, {"steps": steps, "warmup": warmup, "chunk_size": chunk_size,
                                                 "command": "profile"})

    def save():
        write_rows(out, PROFILE_SCHEMA, rows, meta)

    for spec in models:
        label = model_label(spec)
        try:
            model = build_model(spec, device, dtype, ssd_backend=ssd_backend)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            from mmmamba_bench.config import preset

            kind = preset(spec).kind if spec in dict.fromkeys(("hovle-2.6b", "mmmamba-linear", "mmmamba-hybrid",
                                                                "tiny", "demo")) else "unknown"
            for b in baselines:
                for c in contexts:
                    rows.append(ProfileRow(model=label, kind=kind, context=c, device=device_name(device),
                                           dtype=str(dtype).replace("torch.", ""), path={}, baseline=b, status="oom",
                                           error=f"building the model: {str(exc).splitlines()[0][:300]}",
                                           memory_cap_bytes=memory_cap, bandwidth_bytes_per_s=bandwidth))
            save()
            free_memory(device)
            continue
        for b in baselines:
            for c in contexts:
                rows.append(profile_context(model, label, c, b, settings))
                save()
        del model
        free_memory(device)
    if peer_contexts:
        rows.extend(profile_peer(device, dtype, peer_contexts, settings))
        save()
    meta["gemv_configs"] = settings.tuner.describe() if settings.tuner is not None else None
    meta["gemv_tuning_us"] = settings.tuner.timings if settings.tuner is not None else None
    meta["nvml_used_end"] = nvml_used_bytes(device)
    save()
    return rows


def run_speed(models: list[str], out: Path, device: torch.device, dtype: torch.dtype, output_tokens: int = 256,
              repeats: int = 3, impl: str = "auto", graph: bool = True, tune: bool = True,
              ssd_backend: str = "auto", prefill_graph: bool = True, variants: tuple[str, ...] | None = None,
              budget_s: float | None = None) -> list[SpeedRow]:
    """The Table-2 recipe for every model x variant (:mod:`mmmamba_bench.profiler.table2`); rows are written after
    each one. A job not run is listed in ``meta["not_measured"]`` with the reason (a library that cannot be
    imported, no such variant, ``budget_s`` spent before it started), never dropped silently."""
    from mmmamba_bench.outputs import check_output_file
    from mmmamba_bench.profiler import table2

    check_output_file(out, "--out")
    check_model_specs(models)
    jobs = table2.plan(models, variants)
    tuner = _tuner(device, dtype, impl, tune) if any(not j.baseline for j in jobs) else None
    rows: list[SpeedRow] = []
    skipped: list[dict[str, str]] = []
    meta = _meta(device, dtype, None, None, {"command": "speed", "output_tokens": output_tokens,
                                             "repeats": repeats, "variants": "default" if variants is None
                                             else ",".join(variants), "budget_s": budget_s,
                                             "prompt": "one image (3 tiles) + 'Describe the image specifically', "
                                             "chat template; baselines: one image at the release's resolution + "
                                             "random ids of its chat template's length",
                                             "not_measured": skipped})
    start = time.perf_counter()

    def skip(job, reason: str) -> None:
        skipped.append({"model": job.spec, "variant": job.variant, "reason": reason})
        log.warning("%s (%s): not measured: %s", job.spec, job.variant, reason)

    for spec, group in itertools.groupby(jobs, key=lambda j: j.spec):
        group = list(group)
        model = None
        for job in group:
            if budget_s is not None and time.perf_counter() - start > budget_s:
                skip(job, f"--budget-s {budget_s:g} spent before it started")
                continue
            if model is None:
                try:
                    model = _speed_model(job, device, dtype, ssd_backend)
                except Exception as exc:  # noqa: BLE001 - only a missing library becomes a record
                    from mmmamba_bench.baselines.build import BaselineUnavailable

                    if not isinstance(exc, BaselineUnavailable):
                        raise
                    for j in group:
                        skip(j, str(exc))
                    break
            row = _speed_job(job, model, output_tokens, repeats, impl, graph, tuner, prefill_graph, skip)
            if row is not None:
                rows.append(row)
                log.info("%s (%s): %.1f tokens/s (total %.3f s, prefill %.3f s)", row.model, job.variant,
                         row.tokens_per_s, row.total_s, row.prefill_s)
            write_rows(out, SPEED_SCHEMA, rows, meta)
        del model
        free_memory(device)
    meta["wall_s"] = time.perf_counter() - start
    write_rows(out, SPEED_SCHEMA, rows, meta)
    return rows


def check_model_specs(models: list[str]) -> None:
    """Every ``--models`` entry is a preset, a Table-2 baseline card (or its ``tiny-`` form) or a checkpoint
    directory: said before any model is built."""
    from mmmamba_bench.baselines.spec import baseline_spec
    from mmmamba_bench.config import PRESETS

    if not models:
        raise ValueError("--models: give at least one model")
    bad = [m for m in models if m not in PRESETS and baseline_spec(m) is None and not Path(m).is_dir()]
    if bad:
        raise ValueError(f"--models: {bad} are neither presets ({', '.join(PRESETS)}), Table-2 baseline cards "
                         f"(models/*.yaml with 'architecture', or their tiny- form) nor checkpoint directories")


def _speed_model(job, device: torch.device, dtype: torch.dtype, ssd_backend: str):
    if job.baseline:
        from mmmamba_bench.baselines.build import build_baseline
        from mmmamba_bench.baselines.spec import baseline_spec

        return build_baseline(baseline_spec(job.spec), device, dtype)
    return build_model(job.spec, device, dtype, ssd_backend=ssd_backend)


def _speed_job(job, model, output_tokens: int, repeats: int, impl: str, graph: bool, tuner, prefill_graph: bool,
               skip) -> SpeedRow | None:
    from mmmamba_bench.profiler import table2

    if job.baseline:
        from mmmamba_bench.baselines import speed as bs

        settings = bs.SpeedSettings(output_tokens=output_tokens, repeats=repeats)
        if job.variant == "release":
            return bs.release_run(model, job.spec, settings)
        why = bs.best_unavailable(model)
        if why:
            skip(job, why)
            return None
        return bs.best_run(model, job.spec, settings)
    label = model_label(job.spec)
    if job.variant == "best":
        row = speed_run(model, label, output_tokens, repeats, impl, graph, tuner, prefill_graph=prefill_graph)
    else:
        row = table2.ours_release_run(model, label, output_tokens, repeats)
    row.extra.update({"variant": job.variant, "paper_row": table2.paper_row_of(job.spec)})
    return row


def summary(rows: list[ProfileRow]) -> str:
    lines = [f"{'model':34s} {'base':9s} {'ctx':>7s} {'status':6s} {'prefill s':>9s} {'ms/tok':>8s} {'floor':>6s} "
             f"{'x floor':>7s} {'peak GiB':>8s}"]
    for r in rows:
        peak = max([b for b in (r.peak_prefill_bytes, r.peak_decode_bytes) if b is not None], default=None)
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        lines.append(f"{r.model[:34]:34s} {r.baseline:9s} {r.context:7d} {r.status:6s} {f(r.prefill_s, '9.3f')} "
                     f"{f(r.decode_ms_per_token, '8.3f')} {f(r.floor_ms, '6.3f')} {f(r.ratio_to_floor, '7.2f')} "
                     f"{f(None if peak is None else peak / 2**30, '8.2f')}")
    return "\n".join(lines)


def not_measured_summary(path: Path) -> str:
    """One line per job a speed file lists as not measured (or a line saying there is none)."""
    from mmmamba_bench.results import read_rows

    meta, _ = read_rows(path, SPEED_SCHEMA, SpeedRow)
    gaps = meta.get("not_measured") or []
    if not gaps:
        return "not measured: none"
    return "\n".join(f"not measured: {g['model']} ({g['variant']}): {g['reason']}" for g in gaps)
