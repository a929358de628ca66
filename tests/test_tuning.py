"""Decode launch configurations: the per-device on-disk cache and the tuner's bookkeeping (CPU; the timing itself
runs on the GPU in tests/test_fast_decode_gpu.py)."""

from __future__ import annotations

import json

import pytest

from mmmamba_bench.fast.tuning import (ATTN_CANDIDATES, ATTN_DEFAULT, GEMV_CANDIDATES, Choice, GemvTuner, TuneCache,
                                       default_cache_path, default_config)


def test_default_config_divides_k_and_candidates_are_well_formed():
    # BLOCK_K: a power of two (Triton's ranges; the demo teacher's MLP width 384 once gave 384 and failed to compile),
    # dividing K, the largest such up to 512
    for K, want in ((2048, 512), (8192, 512), (384, 128), (96, 32), (5632, 512), (1000, 8), (7, 1)):
        bn, bk, nw, ns = default_config(6160, K)
        assert bk == want and K % bk == 0 and bk & (bk - 1) == 0, (K, bk)
    assert len(set(GEMV_CANDIDATES)) == len(GEMV_CANDIDATES)
    for bn, bk, nw, ns in GEMV_CANDIDATES:
        assert bn & (bn - 1) == 0 and bk & (bk - 1) == 0 and nw in (1, 2, 4, 8) and ns >= 1
    assert ATTN_DEFAULT in ATTN_CANDIDATES


def test_cache_round_trip_per_device(tmp_path):
    path = tmp_path / "sub" / "tuning.json"
    h200 = TuneCache(path, "NVIDIA H200", "3.6.0")
    choices = {("swiglu", 8192, 2048): Choice((4, 1024, 4, 4), "step", 1400.0),
               ("attn", 1024, 132000): Choice((128, 64, 4, 3), "step", 2200.0),
               ("gated_oproj", 2048, 2048): Choice((8, 512, 4, 3), "isolated", 3.0)}  # not step-refined: not saved
    h200.save(choices)
    assert [p.name for p in path.parent.iterdir()] == ["tuning.json"]  # no temporary file left behind
    loaded = h200.load()
    assert set(loaded) == {("swiglu", 8192, 2048), ("attn", 1024, 132000)}
    assert loaded[("swiglu", 8192, 2048)] == Choice((4, 1024, 4, 4), "cache", 1400.0)
    # another GPU (or Triton version) in the same file sees nothing of this one's, and saving merges
    h100 = TuneCache(path, "NVIDIA H100 80GB HBM3", "3.6.0")
    assert h100.load() == {} and TuneCache(path, "NVIDIA H200", "3.7.0").load() == {}
    h100.save({("swiglu", 8192, 2048): Choice((8, 512, 4, 3), "step", 1800.0)})
    assert h200.load()[("swiglu", 8192, 2048)].config == (4, 1024, 4, 4)
    assert h100.load()[("swiglu", 8192, 2048)].config == (8, 512, 4, 3)
    # a tuner built on the cache uses its choices without timing anything, and says where they came from
    tuner = GemvTuner(tune=True, cache=h200)
    assert tuner.get("swiglu", 8192, 2048, bench=lambda c: pytest.fail("a cached choice must not be re-timed")) \
        == (4, 1024, 4, 4)
    assert tuner.describe()["swiglu[8192x2048]"] == "BN4/BK1024/w4/s4 (cache)"
    assert tuner.describe()["attn[1024x132000]"] == "splits128/BT64/w4/s3 (cache)"
    assert tuner.pending() == []


def test_cache_errors_name_the_file_and_entry(tmp_path):
    path = tmp_path / "t.json"
    cache = TuneCache(path, "GPU", "3.6.0")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"t\.json.*not readable JSON"):
        cache.load()
    path.write_text(json.dumps({"version": 99, "entries": {}}))
    with pytest.raises(ValueError, match=r"t\.json.*version"):
        cache.load()
    bad = {"GPU|triton 3.6.0|swiglu|8192x2048": {"config": [4, 1000, 4, 3]}}  # BLOCK_K does not divide K
    path.write_text(json.dumps({"version": 1, "entries": bad}))
    with pytest.raises(ValueError, match=r"swiglu\|8192x2048.*invalid configuration"):
        cache.load()
    path.write_text(json.dumps({"version": 1, "entries": {"GPU|triton 3.6.0|swiglu": {"config": [4, 512, 4, 3]}}}))
    with pytest.raises(ValueError, match="malformed entry"):
        cache.load()
    path.write_text(json.dumps({"version": 1, "entries": {"GPU|triton 3.6.0|x|1x2": {"config": "import os"}}}))
    with pytest.raises(ValueError, match="invalid configuration"):
        cache.load()


def test_tuner_without_timing_and_the_step_shortlist():
    t = GemvTuner(tune=False)
    assert t.get("swiglu", 8192, 2048) == default_config(8192, 2048)
    assert t.describe() == {"swiglu[8192x2048]": "BN8/BK512/w4/s3 (default)"} and t.pending() == []
    # tuning on, nothing to time alone (the attention plan): every candidate goes to the in-step refinement
    t = GemvTuner(tune=True)
    cfg = t.get("attn", 1024, 4096, candidates=ATTN_CANDIDATES, default=ATTN_DEFAULT)
    assert cfg == ATTN_DEFAULT and t.pending() == [("attn", 1024, 4096)]
    assert t.shortlist[("attn", 1024, 4096)] == list(ATTN_CANDIDATES)
    t.set(("attn", 1024, 4096), (128, 64, 4, 3), "step", 900.0)
    assert t.pending() == [] and t.timings == {"attn[1024x4096]": 900.0}
    with pytest.raises(ValueError, match="unknown source"):
        t.set(("attn", 1024, 4096), (128, 64, 4, 3), "guess")
    # a constraint filters the candidates (the gated o_proj needs whole heads per K tile)
    t = GemvTuner(tune=True)
    t.get("gated_oproj", 2048, 2048, constraint=lambda c: c[1] % 1024 == 0)
    assert all(c[1] % 1024 == 0 for c in t.shortlist[("gated_oproj", 2048, 2048)])


def test_default_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MMMAMBA_BENCH_TUNE_CACHE", str(tmp_path / "x.json"))
    assert default_cache_path() == tmp_path / "x.json"
    monkeypatch.delenv("MMMAMBA_BENCH_TUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "mmmamba-bench" / "decode-tuning.json"


def test_a_decoder_describes_only_the_configurations_it_requested():
    t = GemvTuner(tune=False)
    t.get("swiglu", 8192, 2048)
    t.get("attn", 1024, 4096, candidates=ATTN_CANDIDATES, default=ATTN_DEFAULT)
    mark = t.requests  # a second decoder (another context) starts here
    t.get("attn", 1024, 8192, candidates=ATTN_CANDIDATES, default=ATTN_DEFAULT)
    t.get("swiglu", 8192, 2048)
    t.get("swiglu", 8192, 2048)
    assert t.used_since(mark) == [("attn", 1024, 8192), ("swiglu", 8192, 2048)]
    assert list(t.describe(t.used_since(mark))) == ["attn[1024x8192]", "swiglu[8192x2048]"]
    assert len(t.describe()) == 3
