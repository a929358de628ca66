"""Where the batch-1 decode step loses bandwidth (device tool: ``python3 scripts/bw_probe.py``; JSON to $OUT).

Measures, on the current GPU: the device-to-device copy (the profiler's floor), a plain read, and each fused GEMV
kernel of the linear model launched for 32 layers back to back (distinct weights, one CUDA graph, programmatic
dependent launch on) against the same bytes read by ONE launch of the same kernel — the difference is what the
kernel boundaries (ramp-up and drain of ~160 short kernels a step) cost.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import torch

from mmmamba_bench.fast import tuning
from mmmamba_bench.fast.triton_ops import TritonOps

OUT = Path(os.environ.get("OUT", "/tmp/out"))
DEV = torch.device("cuda")
BF = torch.bfloat16
LAYERS = 32


def graph_ms(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        g.replay()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def main() -> None:
    res: dict = {"device": torch.cuda.get_device_name(DEV)}
    n = 2 * 2**30
    src, dst = torch.empty(n, dtype=torch.uint8, device=DEV), torch.empty(n, dtype=torch.uint8, device=DEV)
    ms = graph_ms(lambda: dst.copy_(src))
    res["copy_tb_s"] = 2 * n / ms / 1e9
    v = src.view(torch.int64)
    out = torch.empty((), dtype=torch.int64, device=DEV)
    ms = graph_ms(lambda: torch.amax(v, out=out))
    res["read_amax_tb_s"] = n / ms / 1e9
    del src, dst
    cache = Path(os.environ.get("MMMAMBA_BENCH_TUNE_CACHE", "reports/h200/decode-tuning.json"))
    tc = tuning.TuneCache.for_device(DEV, cache) if cache.exists() else None
    tuner = tuning.GemvTuner(tune=True, cache=tc)  # cached shapes reused, the one-launch shapes timed here
    ops = TritonOps(tuner, pdl=True)
    H, I = 2048, 8192
    x = torch.randn(H, device=DEV, dtype=BF)
    nw = torch.ones(H, device=DEV, dtype=BF)
    kinds = {}
    # swiglu: two [I, H] weights per layer
    W1 = [torch.randn(I, H, device=DEV, dtype=BF) * H ** -0.5 for _ in range(LAYERS)]
    W3 = [torch.randn(I, H, device=DEV, dtype=BF) * H ** -0.5 for _ in range(LAYERS)]
    h = torch.empty(I, device=DEV, dtype=BF)
    ms = graph_ms(lambda: [ops.norm_gemv_swiglu(x, nw, 1e-5, a, b, h) for a, b in zip(W1, W3)])
    kinds["swiglu x32"] = (ms, 2 * LAYERS * I * H * 2)
    big1, big3 = torch.cat(W1), torch.cat(W3)
    hb = torch.empty(LAYERS * I, device=DEV, dtype=BF)
    ms = graph_ms(lambda: ops.norm_gemv_swiglu(x, nw, 1e-5, big1, big3, hb))
    kinds["swiglu one launch (32x rows)"] = (ms, 2 * LAYERS * I * H * 2)
    del W1, W3, big1, big3
    # w2 + residual: [H, I] per layer
    W2 = [torch.randn(H, I, device=DEV, dtype=BF) * I ** -0.5 for _ in range(LAYERS)]
    hv = torch.randn(I, device=DEV, dtype=BF)
    xr = torch.zeros(H, device=DEV, dtype=BF)
    ms = graph_ms(lambda: [ops.gemv_residual(hv, w, xr) for w in W2])
    kinds["gemv_residual x32"] = (ms, LAYERS * H * I * 2)
    big2 = torch.cat(W2)
    xb = torch.zeros(LAYERS * H, device=DEV, dtype=BF)
    ms = graph_ms(lambda: ops.gemv_residual(hv, big2, xb))
    kinds["gemv_residual one launch (32x rows)"] = (ms, LAYERS * H * I * 2)
    del W2, big2
    # plain norm + GEMV of the mamba in-projection's shape
    Win = [torch.randn(6160, H, device=DEV, dtype=BF) * H ** -0.5 for _ in range(LAYERS)]
    o = torch.empty(6160, device=DEV, dtype=BF)
    ms = graph_ms(lambda: [ops.norm_gemv(x, nw, 1e-5, w, o) for w in Win])
    kinds["norm_gemv 6160x2048 x32"] = (ms, LAYERS * 6160 * H * 2)
    bigin = torch.cat(Win)
    ob = torch.empty(LAYERS * 6160, device=DEV, dtype=BF)
    ms = graph_ms(lambda: ops.norm_gemv(x, nw, 1e-5, bigin, ob))
    kinds["norm_gemv one launch (32x rows)"] = (ms, LAYERS * 6160 * H * 2)
    res["kernels"] = {k: {"ms": ms, "gb": b / 1e9, "tb_s": b / ms / 1e9, "of_copy": b / ms / 1e9 / res["copy_tb_s"]}
                      for k, (ms, b) in kinds.items()}
    res["configs"] = tuner.describe()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bw_probe.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
