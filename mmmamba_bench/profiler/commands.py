"""What ``mmmamba-bench profile`` and ``mmmamba-bench speed`` do (the argument parsing lives in ``cli.py``)."""

from __future__ import annotations

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
              ssd_backend: str = "auto", prefill_graph: bool = True) -> list[SpeedRow]:
    from mmmamba_bench.outputs import check_output_file

    check_output_file(out, "--out")
    tuner = _tuner(device, dtype, impl, tune)
    rows: list[SpeedRow] = []
    meta = _meta(device, dtype, None, None, {"command": "speed", "output_tokens": output_tokens,
                                             "repeats": repeats, "prompt": "one image (3 tiles) + "
                                             "'Describe the image specifically', chat template"})
    for spec in models:
        model = build_model(spec, device, dtype, ssd_backend=ssd_backend)
        rows.append(speed_run(model, model_label(spec), output_tokens, repeats, impl, graph, tuner,
                              prefill_graph=prefill_graph))
        log.info("%s: %.1f tokens/s (total %.3f s, prefill %.3f s)", rows[-1].model, rows[-1].tokens_per_s,
                 rows[-1].total_s, rows[-1].prefill_s)
        write_rows(out, SPEED_SCHEMA, rows, meta)
        del model
        free_memory(device)
    return rows


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
