"""Three timings of the transformers peer's decode step (profiler/peer.py) at 1K and 103K: per-step device events
(what the profile rows hold), per-step host clock with a sync around each step, and the host wall clock over N
back-to-back steps with one sync at the end (the steady-state rate a user sees). Writes $OUT/peer_timing.json."""

import json
import os
import statistics
import time
from pathlib import Path

import torch

from mmmamba_bench.profiler.peer import LlamaDecoder, build_llama

dev = torch.device("cuda")
llama = build_llama(dev, torch.bfloat16, 105472 + 400)
res = {}
for ctx in (1024, 105472):
    dec = LlamaDecoder(llama)
    dec.prefill(torch.randint(0, 92553, (1, ctx), device=dev))
    for _ in range(5):
        dec.step()
    torch.cuda.synchronize()
    r = {}
    for rep in range(2):
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(30)]
        for a, b in ev:
            a.record()
            dec.step()
            b.record()
        torch.cuda.synchronize()
        r.setdefault("events_median_ms", []).append(statistics.median(a.elapsed_time(b) for a, b in ev))
        t0 = time.perf_counter()
        for _ in range(30):
            dec.step()
        torch.cuda.synchronize()
        r.setdefault("wall_per_step_ms", []).append(1e3 * (time.perf_counter() - t0) / 30)
        hs = []
        for _ in range(15):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dec.step()
            torch.cuda.synchronize()
            hs.append(1e3 * (time.perf_counter() - t0))
        r.setdefault("host_sync_median_ms", []).append(statistics.median(hs))
    r["cache_len_end"] = dec.cache.get_seq_length()
    res[ctx] = r
    print(ctx, r, flush=True)
    del dec
    torch.cuda.empty_cache()
out = Path(os.environ.get("OUT", "/tmp/out"))
out.mkdir(parents=True, exist_ok=True)
(out / "peer_timing.json").write_text(json.dumps(res, indent=1))
