"""Device-side probe for the decode / Table-2 / peer questions (run through scripts/device_run.sh probe).

A: the captured mmMamba-linear decode step with programmatic dependent launch on vs off (interleaved repeats),
   and a few forced GEMV launch configurations; B: where the 789-token Table-2 prefill of linear spends its time
   (SSD backends, torch.profiler, the captured prefill); C: the transformers peer at 103K done several ways.
Prints a short table per part and writes JSON to $OUT/probe.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from mmmamba_bench.fast.decoder import FastDecoder
from mmmamba_bench.fast.triton_ops import GemvTuner
from mmmamba_bench.generation import prefill
from mmmamba_bench.profiler.models import build_model

OUT = Path(os.environ.get("OUT", "/tmp/out"))
DEV = torch.device("cuda")
RES: dict = {}


def save():
    (OUT / "probe.json").write_text(json.dumps(RES, indent=1, default=str))


def graph_step_ms(dec, n=150):
    for _ in range(10):
        dec.step()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for a, b in ev:
        a.record()
        dec.step()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def part_decode():
    model = build_model("mmmamba-linear", DEV, torch.bfloat16)
    V = model.config.llm_config.vocab_size
    ids = torch.randint(0, V, (1, 1024), device=DEV)
    tuner = GemvTuner(tune=True)
    decs = {}
    for name, pdl in (("pdl", True), ("serial", False)):
        cache = model.allocate_cache(1, 1024 + 4000)
        lg = prefill(model, cache, ids)
        d = FastDecoder(model, cache, impl="triton", tuner=tuner, pdl=pdl)
        d.start(lg.argmax(-1))
        d.step()
        d.capture()
        decs[name] = d
    out = {k: [] for k in decs}
    for _ in range(3):
        for k, d in decs.items():
            out[k].append(graph_step_ms(d))
    RES["decode_ab"] = {"ms": out, "configs": tuner.describe(), "tuning_us": tuner.timings}
    print("decode A/B (ms/step, 3 interleaved medians of 150):", {k: [round(x, 4) for x in v] for k, v in out.items()})
    save()
    # torch.profiler over graph replays of the PDL step: kernel time vs wall
    try:
        from torch.profiler import ProfilerActivity, profile

        d = decs["pdl"]
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                d.step()
            torch.cuda.synchronize()
        ka = prof.key_averages()
        rows = sorted(((e.key, e.count, e.device_time_total) for e in ka), key=lambda r: -r[2])
        tot = sum(r[2] for r in rows)
        RES["decode_kernels"] = {"total_device_us_per_step": tot / 5, "rows": rows[:20]}
        print(f"kernel time per step (profiler) {tot / 5 / 1e3:.3f} ms")
        for r in rows[:12]:
            print(f"  {r[0][:60]:60s} n={r[1] // 5:4d} {r[2] / 5 / 1e3:.3f} ms")
    except Exception as exc:  # noqa: BLE001
        print("profiler failed:", exc)
    del decs
    # forced configurations (PDL on)
    sets = {
        "tuned": dict(tuner.chosen),
        "bk_full": {("mamba_in", 6160, 2048): (4, 2048, 8), ("gated_oproj", 2048, 2048): (4, 2048, 8),
                    ("swiglu", 8192, 2048): (2, 2048, 8), ("gemv_residual", 2048, 8192): (2, 4096, 8),
                    ("norm_gemv", 92553, 2048): (4, 2048, 8)},
        "bn2_bk1024": {("mamba_in", 6160, 2048): (2, 1024, 4), ("gated_oproj", 2048, 2048): (2, 1024, 4),
                       ("swiglu", 8192, 2048): (2, 1024, 4), ("gemv_residual", 2048, 8192): (2, 1024, 4),
                       ("norm_gemv", 92553, 2048): (4, 1024, 4)},
        "bn8_bk512": {("mamba_in", 6160, 2048): (8, 512, 4), ("gated_oproj", 2048, 2048): (8, 512, 4),
                      ("swiglu", 8192, 2048): (4, 512, 4), ("gemv_residual", 2048, 8192): (8, 512, 4),
                      ("norm_gemv", 92553, 2048): (8, 512, 4)},
    }
    res = {}
    for name, chosen in sets.items():
        t = GemvTuner(tune=False)
        t.chosen.update(chosen)
        cache = model.allocate_cache(1, 1024 + 2000)
        lg = prefill(model, cache, ids)
        d = FastDecoder(model, cache, impl="triton", tuner=t, pdl=True)
        d.start(lg.argmax(-1))
        d.step()
        d.capture()
        res[name] = [graph_step_ms(d, 100) for _ in range(2)]
        del d, cache
    RES["decode_configs"] = res
    print("configs (ms/step):", {k: [round(x, 4) for x in v] for k, v in res.items()})
    save()
    del model
    torch.cuda.empty_cache()


def part_prefill():
    from mmmamba_bench.fast.prefill import PrefillGraph
    from mmmamba_bench.profiler.run import table2_prompt

    model = build_model("mmmamba-linear", DEV, torch.bfloat16)
    ids, pix = table2_prompt(model, 3)
    cache = model.allocate_cache(1, ids.shape[1] + 300)

    def eager(n=5):
        ts = []
        for _ in range(n):
            cache.reset()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            prefill(model, cache, ids, pixel_values=pix)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return ts

    res = {}
    for be in ("mamba_ssm", "fla", "torch"):
        model.set_ssd_backend(be)
        eager(2)
        res[be] = eager(5)
    model.set_ssd_backend("auto")
    eager(1)
    t0 = time.perf_counter()
    with torch.no_grad():
        e = model.embed(ids, pix)
    torch.cuda.synchronize()
    res["embed_s"] = time.perf_counter() - t0
    print("eager prefill 789 tokens (s):", {k: (round(min(v), 4) if isinstance(v, list) else round(v, 4))
                                            for k, v in res.items()})
    try:
        from torch.profiler import ProfilerActivity, profile

        cache.reset()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            prefill(model, cache, ids, pixel_values=pix)
            torch.cuda.synchronize()
        ka = prof.key_averages()
        cpu = sorted(((e.key, e.count, e.self_cpu_time_total, e.device_time_total) for e in ka), key=lambda r: -r[2])
        dev = sorted(((e.key, e.count, e.self_cpu_time_total, e.self_device_time_total) for e in ka),
                     key=lambda r: -r[3])
        res["prof_cpu_top"] = cpu[:15]
        res["prof_dev_top"] = dev[:15]
        res["prof_dev_total_us"] = sum(r[3] for r in dev)
        print(f"kernel time in one eager prefill: {res['prof_dev_total_us'] / 1e3:.1f} ms")
        for r in dev[:8]:
            print(f"  dev {r[0][:55]:55s} n={r[1]:4d} {r[3] / 1e3:.2f} ms")
        for r in cpu[:8]:
            print(f"  cpu {r[0][:55]:55s} n={r[1]:4d} {r[2] / 1e3:.2f} ms")
    except Exception as exc:  # noqa: BLE001
        print("profiler failed:", exc)
    cache.reset()
    ref = prefill(model, cache, ids, pixel_values=pix).clone()
    ref_state = [t.clone() for c in cache.layers for t in vars(c).values()]
    pg = PrefillGraph(model, cache)
    cache.reset()
    pg(ids, pix)
    ts = []
    for _ in range(5):
        cache.reset()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = pg(ids, pix)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    same = torch.equal(out, ref) and all(torch.equal(a, b) for a, b in
                                         zip(ref_state, [t for c in cache.layers for t in vars(c).values()]))
    res["graph_s"] = ts
    res["graph_equal_eager"] = same
    print(f"captured prefill: {min(ts):.4f} s (median {statistics.median(ts):.4f}); equal to eager: {same}")
    RES["prefill"] = res
    save()
    del pg, cache, model
    torch.cuda.empty_cache()


def part_speed():
    from mmmamba_bench.profiler.run import speed_run

    model = build_model("mmmamba-linear", DEV, torch.bfloat16)
    row = speed_run(model, "mmmamba-linear", tuner=GemvTuner(tune=True))
    RES["speed_linear"] = row.__dict__ if hasattr(row, "__dict__") else str(row)
    print(f"speed linear: {row.tokens_per_s:.1f} tok/s total {row.total_s:.4f} prefill {row.prefill_s:.4f} "
          f"decode {row.decode_s:.4f}; eager-prefill variant {row.extra.get('tokens_per_s_eager_prefill')}")
    save()
    del model
    torch.cuda.empty_cache()


def part_peer():
    from transformers import DynamicCache

    from mmmamba_bench.profiler.peer import LlamaDecoder, build_llama

    res = {}
    llama = build_llama(DEV, torch.bfloat16, 105472 + 200)
    res["grad_enabled_params"] = any(p.requires_grad for p in llama.parameters())
    for ctx in (1024, 105472):
        ids = torch.randint(0, 92553, (1, ctx), device=DEV)
        dec = LlamaDecoder(llama)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dec.prefill(ids)
        torch.cuda.synchronize()
        r = {"prefill_s": time.perf_counter() - t0, "cache_type": type(dec.cache).__name__,
             "layer_type": type(dec.cache.layers[0]).__name__, "len0": dec.cache.get_seq_length()}

        def ev_time(fn, n=30):
            for _ in range(3):
                fn()
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            for a, b in ev:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize()
            return statistics.median(a.elapsed_time(b) for a, b in ev)

        def host_time(fn, n=30):
            for _ in range(3):
                fn()
            ts = []
            for _ in range(n):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                ts.append(1e3 * (time.perf_counter() - t0))
            return statistics.median(ts)

        r["events_ms"] = ev_time(dec.step)
        r["host_sync_ms"] = host_time(dec.step)
        # generate()-like call: attention mask over everything so far, explicit cache_position
        n0 = dec.cache.get_seq_length()
        state = {"n": n0}

        def gen_like():
            n = state["n"]
            am = torch.ones(1, n + 1, dtype=torch.long, device=DEV)
            cp = torch.tensor([n], device=DEV)
            with torch.no_grad():
                out = llama(input_ids=dec.tok, past_key_values=dec.cache, attention_mask=am, cache_position=cp,
                            use_cache=True)
            dec.tok = out.logits[:, -1].argmax(-1, keepdim=True)
            state["n"] = n + 1

        r["generate_like_ms"] = ev_time(gen_like)

        def no_grad_off():  # without torch.no_grad (autograd records the graph of every op)
            out = llama(input_ids=dec.tok, past_key_values=dec.cache, use_cache=True)
            dec.tok = out.logits[:, -1].argmax(-1, keepdim=True).detach()

        r["grad_on_ms"] = ev_time(no_grad_off, 10)
        r["len_end"] = dec.cache.get_seq_length()
        r["k_shape"] = list(dec.cache.layers[0].keys.shape)
        del dec
        torch.cuda.empty_cache()
        # HF generate(): per-token time from two lengths
        if ctx == 105472:
            gl = {}
            for n_new in (2, 34):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.no_grad():
                    llama.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                   past_key_values=DynamicCache(config=llama.config))
                torch.cuda.synchronize()
                gl[n_new] = time.perf_counter() - t0
                torch.cuda.empty_cache()
            r["generate_s"] = gl
            r["generate_ms_per_token"] = 1e3 * (gl[34] - gl[2]) / 32
        res[ctx] = r
        print(f"peer {ctx}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
        RES["peer"] = res
        save()
    del llama
    torch.cuda.empty_cache()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    parts = sys.argv[1:] or ["decode", "prefill", "speed", "peer"]
    for p in parts:
        t0 = time.perf_counter()
        try:
            globals()[f"part_{p}"]()
        except Exception as exc:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            RES[f"{p}_error"] = repr(exc)
            save()
        print(f"== part {p}: {time.perf_counter() - t0:.1f} s", flush=True)
