"""Profiler bookkeeping on the CPU: floor arithmetic, size/context parsing, OOM rows, the memory cap, the result
schema, and the CPU form of ``profile`` / ``speed`` end to end on the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from mmmamba_bench.config import preset
from mmmamba_bench.profiler import floor as fl
from mmmamba_bench.profiler.memory import MemoryCap, apply_memory_cap, is_oom
from mmmamba_bench.profiler.run import ProfileSettings, profile_context
from mmmamba_bench.results import PROFILE_SCHEMA, SPEED_SCHEMA, ProfileRow, SpeedRow, read_rows
from tests.helpers import random_model


def test_step_bytes_match_the_worked_floor_table():
    # performance_notes.md: weights 4.41 GB (HoVLE) / 4.68 GB (linear); KV 128 KiB per token for HoVLE, 32 KiB hybrid
    hovle, hybrid, linear = (preset(n) for n in ("hovle-2.6b", "mmmamba-hybrid", "mmmamba-linear"))
    assert fl.step_bytes(hovle, 0).weights == pytest.approx(4.41e9, rel=2e-3)
    assert fl.step_bytes(linear, 0).weights == pytest.approx(4.677e9, rel=2e-3)
    assert fl.step_bytes(hovle, 1001).kv - fl.step_bytes(hovle, 1000).kv == 128 * 1024
    assert fl.step_bytes(hybrid, 1001).kv - fl.step_bytes(hybrid, 1000).kv == 32 * 1024
    assert fl.step_bytes(linear, 10**5).kv == 0 and fl.step_bytes(hovle, 0).state == 0
    # 32 Mamba-2 layers x (16 x 128 x 128 float32 state + 4096 bf16 conv channels), read and written
    assert fl.step_bytes(linear, 0).state == 32 * 2 * (16 * 128 * 128 * 4 + 4096 * 2)
    # 103K at 3.0 TB/s: 5.97-6.1 ms (HoVLE), 2.7 (hybrid), 1.58 (linear)
    assert fl.floor_ms(fl.step_bytes(hovle, 105472).total, 3.0e12) == pytest.approx(6.08, abs=0.05)
    assert fl.floor_ms(fl.step_bytes(hybrid, 105472).total, 3.0e12) == pytest.approx(2.71, abs=0.05)
    assert fl.floor_ms(fl.step_bytes(linear, 105472).total, 3.0e12) == pytest.approx(1.58, abs=0.02)
    with pytest.raises(ValueError):
        fl.floor_ms(1.0, 0)


def test_parsing():
    assert fl.parse_size("24GiB") == 24 * 2**30 and fl.parse_size("24GB") == 24 * 10**9
    assert fl.parse_size("512 MiB") == 512 * 2**20 and fl.parse_size("1000") == 1000
    assert fl.parse_contexts("1k, 103k,128k,500") == [1024, 105472, 131072, 500]
    for bad in ("24XB", "", "lots"):
        with pytest.raises(ValueError):
            fl.parse_size(bad)
    for bad in ("0", "1.5", "k", "-3k"):
        with pytest.raises(ValueError):
            fl.parse_context(bad)


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def test_cpu_memory_cap_is_checked_after_the_run():
    cap = apply_memory_cap(10**6, torch.device("cpu"))
    assert not cap.enforced and cap.exceeded(2 * 10**6) and not cap.exceeded(10**5) and not cap.exceeded(None)
    assert not MemoryCap(10, 5, 5, enforced=True).exceeded(10**9)  # enforced caps raise instead


def _settings(**kw) -> ProfileSettings:
    return ProfileSettings(steps=4, warmup=1, chunk_size=16, impl="torch", bandwidth=1e10, **kw)


def test_profile_row_floor_and_timings():
    model = random_model("hybrid", dtype=torch.float32)
    row = profile_context(model, "tiny-hybrid", 40, "optimized", _settings())
    assert row.status == "ok" and row.kind == "hybrid" and row.decode_steps == 4
    sb = fl.step_bytes(model.config, 40 + 1 + 1 + 2, dtype_bytes=2)
    assert row.bytes_per_step == sb.total and row.extra["kv_len"] == 44
    assert row.floor_ms == pytest.approx(1e3 * sb.total / 1e10)
    assert row.ratio_to_floor == pytest.approx(row.decode_ms_per_token / row.floor_ms)
    assert row.tokens_per_s == pytest.approx(1e3 / row.decode_ms_per_token)
    assert row.path["decode"] == "fast-torch" and row.path["graph"] == "none"
    assert row.peak_prefill_bytes and row.extra["memory_source"] == "rss"
    paper = profile_context(model, "tiny-hybrid", 40, "paper", _settings())
    assert paper.status == "ok" and paper.baseline == "paper" and paper.path["cache"].startswith("concat")


def test_oom_becomes_a_row_and_other_errors_propagate():
    model = random_model("linear", dtype=torch.float32)

    def oom(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    row = profile_context(model, "m", 128, "optimized", _settings(), runner=oom)
    assert row.status == "oom" and "out of memory" in row.error and row.decode_ms_per_token is None
    assert row.floor_ms is not None  # the floor is known even when the run does not fit

    def broken(*_):
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        profile_context(model, "m", 128, "optimized", _settings(), runner=broken)
    capped = profile_context(model, "m", 16, "optimized", _settings(cap=apply_memory_cap(1, torch.device("cpu"))))
    assert capped.status == "oom" and "cap" in capped.error and capped.memory_cap_bytes == 1


def test_cli_profile_and_speed_write_schema_files(tmp_path):
    from mmmamba_bench.cli import main

    out = tmp_path / "p.json"
    assert main(["profile", "--models", "tiny", "--contexts", "32,48", "--baseline", "optimized,paper", "--steps",
                 "3", "--warmup", "1", "--device", "cpu", "--dtype", "fp32", "--memory-cap", "64GiB",
                 "--out", str(out)]) == 0
    meta, rows = read_rows(out, PROFILE_SCHEMA, ProfileRow)
    assert [(r.baseline, r.context) for r in rows] == [("optimized", 32), ("optimized", 48), ("paper", 32),
                                                        ("paper", 48)]
    assert all(r.status == "ok" and r.floor_ms and r.memory_cap_bytes == 64 * 2**30 for r in rows)
    assert meta["bandwidth_bytes_per_s"] > 0 and meta["memory_cap"]["enforced"] is False
    sp = tmp_path / "s.json"
    assert main(["speed", "--models", "tiny", "--output-tokens", "8", "--repeats", "1", "--device", "cpu",
                 "--dtype", "fp32", "--out", str(sp)]) == 0
    _, srows = read_rows(sp, SPEED_SCHEMA, SpeedRow)
    (r,) = srows
    assert r.output_tokens == 8 and r.visual_tokens == 3 * preset("tiny").embedding_config.tokens_per_tile
    assert r.total_s == pytest.approx(r.prefill_s + r.decode_s) and r.tokens_per_s == pytest.approx(8 / r.total_s)
    assert json.loads(sp.read_text())["schema"] == SPEED_SCHEMA


def test_report_reads_profile_rows(tmp_path):
    from mmmamba_bench.report.profile import load_profile_rows
    from mmmamba_bench.results import write_rows

    rows = [ProfileRow(model="m", kind="linear", context=1024, device="d", dtype="bfloat16", path={"graph": "x"},
                       decode_ms_per_token=2.0, floor_ms=1.6, ratio_to_floor=1.25),
            ProfileRow(model="h", kind="transformer", context=131072, device="d", dtype="bfloat16", path={},
                       baseline="paper", status="oom", error="CUDA out of memory")]
    f = write_rows(tmp_path / "r.json", PROFILE_SCHEMA, rows, {})
    assert [r.status for r in load_profile_rows([f])] == ["ok", "oom"]


@pytest.mark.parametrize("baseline", ["optimized", "paper"])
def test_timed_prefill_is_not_the_first_one(monkeypatch, baseline):
    """Compilation and autotuning happen in the first prefill of a shape: the profiler times a second one and
    keeps the warm-up's time apart (``prefill_warmup_s``)."""
    import mmmamba_bench.profiler.hf_style as hs
    import mmmamba_bench.profiler.run as run

    model = random_model("hybrid", dtype=torch.float32, seed=0)
    calls: list[float] = []
    first_call_s = 0.3  # a stand-in for autotuning: only the first prefill pays it

    def slow_first(fn):
        def wrapped(*a, **k):
            import time

            if not calls:
                time.sleep(first_call_s)
            calls.append(1.0)
            return fn(*a, **k)
        return wrapped

    if baseline == "optimized":
        monkeypatch.setattr(run, "prefill", slow_first(run.prefill))
    else:
        monkeypatch.setattr(hs.ConcatCacheDecoder, "forward",
                            slow_first(hs.ConcatCacheDecoder.forward))
    s = ProfileSettings(steps=2, warmup=1, impl="torch", graph=False)
    row = profile_context(model, "tiny", 16, baseline, s)
    assert row.status == "ok" and row.extra["prefill_warm"] is True
    assert row.extra["prefill_warmup_s"] >= first_call_s > row.prefill_s
    assert row.extra["prefill_compile_s"] == pytest.approx(row.extra["prefill_warmup_s"] - row.prefill_s)
