"""Evaluation-speed benchmark (issue 10, part 1): Table-1-shaped questions through ``generate``, eager vs the
batched CUDA-graph path, on one GPU. Run on the lent GPU (device tool), e.g.

    python3 scripts/bench_eval_generate.py --models mmmamba-linear,hovle-2.6b --out $OUT/bench_eval_generate.json

Questions: 7 tiles x 256 image tokens + 30-50 text tokens (left-padded batches), random bf16 weights of the real
shapes (profiler.models.build_model), random pixels; answers forced to full length (no EOS). Reports questions/s
per variant, the batched decode step per bucket (graph replay, context ~1.85K), the prefill's model FLOP rate
against the bf16 matmul rate measured in the same run, and a projection of the full Table 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch

from mmmamba_bench.generation import generate, prefill
from mmmamba_bench.profiler.models import build_model

TILES, TILE_TOKENS = 7, 256
# Table 1's nine benchmarks (lmms-eval splits): questions, and the decode steps a batch typically runs (short
# answers end at EOS within a few tokens, capped by the task's max_new_tokens; MM-Vet answers are free text).
TABLE1 = {"MME": (2374, 10), "MMBench-EN dev": (4329, 10), "POPE (3 splits)": (9000, 10), "SEED-Image": (14233, 10),
          "MMMU val": (900, 16), "MM-Vet": (218, 256), "TextVQA val": (5000, 10), "ScienceQA-IMG": (2017, 10),
          "GQA testdev": (12578, 10)}


def sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def ceilings() -> dict:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    t0 = sync_time()
    for _ in range(10):
        a @ b
    mm = 10 * 2 * 8192 ** 3 / (sync_time() - t0) / 1e12
    x = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    t0 = sync_time()
    for _ in range(10):
        y.copy_(x)
    bw = 10 * 2 * x.numel() / (sync_time() - t0) / 1e12
    del a, b, x, y
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": round(mm, 1), "copy_tb_s": round(bw, 3)}


class Questions:
    """Table-1-shaped prompts: chat-template-like text, <img>, 7 x 256 context tokens, </img>, the question."""

    def __init__(self, model, seed: int = 0):
        emb = model.config.embedding_config
        self.V, self.emb, self.gen = emb.llm_vocab_size, emb, torch.Generator().manual_seed(seed)
        S = emb.image_size
        self.pixels = [torch.randn(TILES, 3, S, S, generator=self.gen).to("cuda", model.dtype) for _ in range(4)]

    def row(self) -> list[int]:
        sp, n_text = self.emb.special_token_maps, int(torch.randint(30, 51, (1,), generator=self.gen))
        text = lambda n: torch.randint(0, self.V, (n,), generator=self.gen).tolist()
        return (text(5) + [sp["<img>"]] + [self.emb.img_context_token_id] * (TILES * TILE_TOKENS) + [sp["</img>"]]
                + text(n_text))

    def batch(self, n: int):
        rows = [self.row() for _ in range(n)]
        L = max(map(len, rows))
        ids = torch.zeros(n, L, dtype=torch.long)
        mask = torch.zeros(n, L, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, L - len(r):] = torch.tensor(r)
            mask[b, L - len(r):] = 1
        pv = torch.cat([self.pixels[b % len(self.pixels)] for b in range(n)])
        return ids.cuda(), mask.cuda(), pv


def prefill_flops(model, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Model FLOPs of a prefill: 2 x (weights) per token through every decoder layer (padding included, as it is
    computed), attention scores and values (causal half), the vision embedding, the head on the last position."""
    cfg = model.config
    B, L = ids.shape
    per_token = 0
    for layer in model.layers:
        per_token += sum(p.numel() for n, p in layer.named_parameters() if p.dim() == 2)
    flops = 2 * per_token * B * L
    hd, nh = cfg.llm_config.head_dim, cfg.llm_config.num_attention_heads
    n_attn = sum(1 for layer in model.layers if layer.kind == "mha")
    flops += n_attn * B * 2 * 2 * nh * hd * L * L / 2
    vis = model.embedding_model
    H = cfg.llm_config.hidden_size
    patch = vis.vision_embeddings.patch_embedding.weight.numel()
    n_img = int((ids == cfg.embedding_config.img_context_token_id).sum())
    flops += 2 * patch * n_img * 4  # 4 patches per image token (pixel shuffle 0.5)
    flops += 2 * sum(p.numel() for p in vis.pixel_shuffle_proj.parameters() if p.dim() == 2) * n_img
    flops += 2 * H * cfg.llm_config.vocab_size * B
    return float(flops)


def time_generate(model, qs: Questions, batch: int, n_batches: int, new: int, fast: str) -> dict:
    batches = [qs.batch(batch) for _ in range(n_batches)]
    t0 = sync_time()
    for ids, mask, pv in batches:
        out = generate(model, ids, pixel_values=pv, attention_mask=mask, max_new_tokens=new, fast=fast)
        assert out.shape[1] == ids.shape[1] + new
    dt = sync_time() - t0
    n = batch * n_batches
    return {"path": fast, "batch": batch, "new_tokens": new, "questions": n, "seconds": round(dt, 3),
            "questions_per_s": round(n / dt, 2)}


def time_prefill(model, qs: Questions, batch: int, peak: float, fused: bool = True, reps: int = 3) -> dict:
    """The prefill as FastGenerator runs it (``fused``: model.fused's element-wise kernels; False: plain ops)."""
    from mmmamba_bench.model.fused import fused_prefill

    ids, mask, pv = qs.batch(batch)
    cache = model.allocate_cache(batch, ids.shape[1] + 1)
    times = []
    with fused_prefill(fused):
        prefill(model, cache, ids, pixel_values=pv, attention_mask=mask)  # warm-up (JIT, autotune)
        for _ in range(reps):
            cache.length = 0
            t0 = sync_time()
            prefill(model, cache, ids, pixel_values=pv, attention_mask=mask)
            times.append(sync_time() - t0)
    t = statistics.median(times)
    fl = prefill_flops(model, ids, mask)
    del cache
    torch.cuda.empty_cache()
    return {"batch": batch, "fused_elementwise": fused, "tokens": int(ids.numel()), "seconds": round(t, 4), "per_question_ms": round(1e3 * t / batch, 2),
            "model_tflop": round(fl / 1e12, 2), "tflops": round(fl / t / 1e12, 1), "pct_of_peak": round(100 * fl / t / peak, 1)}


def time_new_length(model, qs: Questions, batch: int = 8) -> dict:
    """A padded prefill (plain model forward) at a sequence length not seen before, then again at that length: the
    first call includes per-shape planning (cuDNN's masked attention, autotuning); the reason FastGenerator pads
    batches to a multiple of batched.LENGTH_QUANTUM."""
    ids, mask, pv = qs.batch(batch)
    ids = torch.cat([torch.zeros(batch, 11, dtype=ids.dtype, device=ids.device), ids], 1)  # an unusual length
    mask = torch.cat([torch.zeros(batch, 11, dtype=mask.dtype, device=mask.device), mask], 1)
    out = {"length": int(ids.shape[1])}
    cache = model.allocate_cache(batch, ids.shape[1] + 1)
    for key in ("first_s", "second_s"):
        cache.length = 0
        t0 = sync_time()
        prefill(model, cache, ids, pixel_values=pv, attention_mask=mask)
        out[key] = round(sync_time() - t0, 3)
    del cache
    return out


def time_steps(model, buckets, length: int, reps: int = 50) -> dict:
    from mmmamba_bench.fast.batched import fast_generator

    gen = fast_generator(model)
    out = {}
    for b in buckets:
        dec = gen._decoder(b, length + reps + 1)
        dec.idx.fill_(length)
        dec.step()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dec.idx.fill_(length)
        start.record()
        for _ in range(reps):
            dec.step()
        end.record()
        torch.cuda.synchronize()
        out[str(b)] = round(start.elapsed_time(end) / reps, 3)
    return out


def profile_prefill(model, qs: Questions, batch: int = 16, top: int = 25) -> str:
    """The prefill's CUDA kernels by total time (torch.profiler), for finding what is not a GEMM."""
    from torch.profiler import ProfilerActivity, profile

    ids, mask, pv = qs.batch(batch)
    cache = model.allocate_cache(batch, ids.shape[1] + 1)
    prefill(model, cache, ids, pixel_values=pv, attention_mask=mask)
    cache.length = 0
    from mmmamba_bench.model.fused import fused_prefill

    with profile(activities=[ProfilerActivity.CUDA]) as prof, fused_prefill():
        prefill(model, cache, ids, pixel_values=pv, attention_mask=mask)
        torch.cuda.synchronize()
    del cache
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=70)


def bench_model(name: str, args, peak: float) -> dict:
    t_build = time.perf_counter()
    model = build_model(name, torch.device("cuda"), torch.bfloat16, ssd_backend=args.ssd_backend)
    qs = Questions(model)
    res = {"model": name, "ssd_backend": model.code_path.ssd_scan, "build_s": round(time.perf_counter() - t_build, 1)}
    if args.profile:
        print(profile_prefill(model, qs), flush=True)
        if args.profile_only:
            return res
    # warm-ups (JIT / autotune, graph capture per bucket): not timed
    ids, mask, pv = qs.batch(8)
    generate(model, ids, pixel_values=pv, attention_mask=mask, max_new_tokens=2, fast="off")
    for b in args.batches:
        ids, mask, pv = qs.batch(b)
        generate(model, ids, pixel_values=pv, attention_mask=mask, max_new_tokens=args.long, fast="on")
    res["code_path"] = model.code_path.as_dict()
    runs = []
    runs.append(time_generate(model, qs, 8, 2, 10, "off"))
    runs.append(time_generate(model, qs, 8, 1, args.long, "off"))
    for b in args.batches:
        runs.append(time_generate(model, qs, b, max(1, 64 // b), 10, "on"))
    for b in args.batches:
        if b >= 16:
            runs.append(time_generate(model, qs, b, max(1, 32 // b), args.long, "on"))
    res["generate"] = runs
    for r in runs:
        print(f"  {name:15s} {r['path']:3s} batch {r['batch']:2d} new {r['new_tokens']:3d}: {r['questions_per_s']:7.2f} q/s",
              flush=True)
    res["new_length_prefill"] = time_new_length(model, qs)
    print(f"  {name} prefill at a new length: {res['new_length_prefill']}", flush=True)
    res["decode_step_ms"] = time_steps(model, [1] + list(args.batches), 1850)
    print(f"  {name} decode step ms by bucket: {res['decode_step_ms']}", flush=True)
    res["prefill"] = [time_prefill(model, qs, b, peak) for b in (8, 16)] + [time_prefill(model, qs, 16, peak, False)]
    print(f"  {name} prefill: {res['prefill']}", flush=True)
    res["code_path_after"] = model.code_path.as_dict()
    # Table-1 projection from this model's measurements (batch 16, fast path)
    p16 = res["prefill"][1]["per_question_ms"] / 1e3
    s16 = res["decode_step_ms"]["16"] / 1e3
    q10 = next(r for r in runs if r["path"] == "on" and r["batch"] == 16 and r["new_tokens"] == 10)
    other = max(0.0, 1 / q10["questions_per_s"] - p16 - 9 * s16 / 16)  # per-question time not in prefill or steps
    proj, total = {}, 0.0
    for bench, (n, steps) in TABLE1.items():
        t = n * (p16 + (steps - 1) * s16 / 16 + other)
        proj[bench] = round(t, 1)
        total += t
    res["table1_projection"] = {"per_benchmark_s": proj, "total_min": round(total / 60, 1),
                                "questions": sum(n for n, _ in TABLE1.values()),
                                "per_question_prefill_s": p16, "step_s_batch16": s16, "other_s": round(other, 5)}
    print(f"  {name} Table 1 projection: {res['table1_projection']['total_min']} min", flush=True)
    del model, qs
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mmmamba-linear,hovle-2.6b")
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--long", type=int, default=64)
    ap.add_argument("--ssd-backend", default="auto")
    ap.add_argument("--out", default="bench_eval_generate.json")
    ap.add_argument("--profile", action="store_true", help="print the prefill's top CUDA kernels first")
    ap.add_argument("--profile-only", action="store_true")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    import triton

    env = {"gpu": torch.cuda.get_device_name(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
           "python": platform.python_version()}
    for pkg in ("fla", "mamba_ssm"):
        try:
            __import__(pkg)
            env[pkg] = "importable"
        except Exception as exc:  # noqa: BLE001
            env[pkg] = f"not importable ({type(exc).__name__})"
    env.update(ceilings())
    print(env, flush=True)
    results = {"env": env, "models": []}
    for name in args.models.split(","):
        results["models"].append(bench_model(name, args, env["bf16_matmul_tflops"] * 1e12))
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print("done", flush=True)


if __name__ == "__main__":
    main()
