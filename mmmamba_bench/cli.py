"""``mmmamba-bench``: one command-line entry for conversion, evaluation, distillation, profiling and reports.

A thin leaf over the library: each subcommand parses its flags and calls one library function (``seeding.convert``,
``eval.runner.run_eval``, ``train.distill.distill``, ``demo.run_demo`` ...); expected user errors become one line
and exit code 2. Nothing in the package imports this module. Heavy imports happen inside the subcommands, so
``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("mmmamba_bench")


def _number(kind: type, minimum: float, what: str):
    """An argparse type: ``kind`` (int / float), finite, at least ``minimum``; argparse names the flag in its error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (minimum <= value < float("inf")):  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


POSITIVE_INT = _number(int, 1, "a positive integer")
NON_NEGATIVE_INT = _number(int, 0, "an integer >= 0")
NON_NEGATIVE = _number(float, 0.0, "a finite number >= 0")


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="seed a Mamba-2 / hybrid student checkpoint from a Transformer teacher")
    p.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint directory (released layout)")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint directory")
    p.add_argument("--layout", default="linear",
                   help="linear | hybrid | head-interleaved:N | tail-interleaved:N | head-stacked:K | "
                        "tail-stacked:K | comma list of mha/mamba2 (global index: embedding layers first)")
    p.add_argument("--init", default="mimic", choices=("mimic", "inherit", "scratch"))
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from mmmamba_bench.seeding import convert

    out = convert(args.teacher, args.out, layout=args.layout, init=args.init, seed=args.seed,
                  overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint with lmms-eval (mini-suite or the paper's benchmarks)")
    p.add_argument("--model", required=True, help="checkpoint directory or model card name (models/*.yaml)")
    p.add_argument("--tasks", default="mini", help="'mini', 'paper', or a comma list of task names")
    p.add_argument("--output", required=True, type=Path, help="results folder (lmms-eval layout)")
    p.add_argument("--label", help="name of this model in results and reports (default: directory name)")
    p.add_argument("--device", help="cpu / cuda (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8)
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate only the first N documents per task, rounded up to "
                   "whole scoring clusters (MME pairs, POPE images, MMBench groups)")
    p.add_argument("--data-dir", type=Path, help="local copies of the real benchmarks (see tasks/README.md)")
    p.add_argument("--ssd-backend", default="auto", help="auto | torch | mamba_ssm | fla")
    p.add_argument("--log-samples", action=argparse.BooleanOptionalAction, default=True,
                   help="keep lmms-eval's per-sample records (document, target, prediction, per-sample metrics) as "
                        "<stamp>_samples_<task>.jsonl beside the results file; `regress` needs them (default: on)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="lmms-eval's random seeds")
    p.add_argument("--num-processes", type=POSITIVE_INT, default=1,
                   help="data parallel: evaluate in N processes started by `accelerate launch` (one GPU each; on "
                        "--device cpu a gloo group); requests sharded, results gathered and written once by rank 0 "
                        "(default: 1)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from mmmamba_bench.eval.runner import run_eval

    out = run_eval(args.model, args.tasks, args.output, label=args.label, device=args.device, dtype=args.dtype,
                   batch_size=args.batch_size, limit=args.limit, data_dir=args.data_dir,
                   ssd_backend=args.ssd_backend, log_samples=args.log_samples, seed=args.seed,
                   num_processes=args.num_processes)
    if out is not None:  # None: a non-zero rank under `accelerate launch -m mmmamba_bench eval`; rank 0 wrote
        print(f"wrote {out}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="Table-1/Table-2-style tables and Fig.-1-style plots from result files")
    p.add_argument("--results", nargs="*", type=Path, default=[], help="folders holding lmms-eval *_results.json")
    p.add_argument("--profile", nargs="*", type=Path, default=[], help="profile JSON files (mmmamba-bench profile)")
    p.add_argument("--speed", nargs="*", type=Path, default=[], help="speed JSON files (mmmamba-bench speed)")
    p.add_argument("--out", required=True, type=Path, help="output folder for report.md and the PNGs")
    p.add_argument("--title", default="mmMamba benchmark report")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from mmmamba_bench.report import build_report

    out = build_report(args.results, args.profile, args.speed, args.out, title=args.title)
    print(f"wrote {out}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="generate the offline mini-suite (parquet files for tasks/mini)")
    p.add_argument("--out", type=Path, default=None, help="folder (default: tasks/mini/data)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p.set_defaults(func=_cmd_data)


def _cmd_data(args) -> int:
    from mmmamba_bench.data.minisuite import default_data_dir, generate

    out = args.out or default_data_dir()
    manifest = generate(out, seed=args.seed)
    print(f"wrote the mini-suite to {out} ({manifest['test_rows']} test items)")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job end to end on the embedded default (offline, CPU, minutes)")
    p.add_argument("--smoke", action="store_true",
                   help="the same chain on a tiny budget (a few training steps per stage, a few documents per task, "
                        "tiny contexts): checks that every step runs, in a few minutes; default --out demo_smoke")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: demo_out, or demo_smoke with "
                                                          "--smoke)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="mini-suite folder (default: tasks/mini/data, or <out>/data with --smoke)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument("--teacher", choices=("embedded", "train"), default="embedded",
                   help="embedded: the teacher shipped in models/demo-teacher (default); train: retrain it with "
                        "distill/teacher-demo.yaml first (minutes on a GPU, about an hour on 2 CPU cores)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from mmmamba_bench.demo import FULL, SMOKE, run_demo

    run_demo(args.out, data_dir=args.data_dir, fresh=args.fresh, teacher=args.teacher,
             budget=SMOKE if args.smoke else FULL)
    return 0


def _add_train_teacher(sub) -> None:
    p = sub.add_parser("train-teacher", help="train the tiny HoVLE-architecture teacher on the mini-suite")
    p.add_argument("--recipe", required=True, type=Path, help="teacher recipe YAML (e.g. distill/teacher-demo.yaml)")
    p.add_argument("--data", type=Path, default=None, help="mini-suite data directory (default: tasks/mini/data)")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint directory (resumes if rerun)")
    p.add_argument("--device", default=None, help="torch device, overriding the recipe's (e.g. cuda, cpu); a run "
                                                  "may be resumed on another device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train_teacher)


def _cmd_train_teacher(args) -> int:
    from mmmamba_bench.train.teacher import train_teacher

    out = train_teacher(args.recipe, args.data, args.out, progress=not args.no_progress, device=args.device)
    print(f"wrote {out}")
    return 0


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="seed and distil an mmMamba student (paper Sec. 4.1-4.4), resumable")
    p.add_argument("--recipe", required=True, type=Path, help="distillation recipe YAML (e.g. distill/linear-demo.yaml)")
    p.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="output directory (seeded/, stage1/ ...; resumes if rerun)")
    p.add_argument("--stages", default="1,2,3", help="stages to chain, e.g. 1,2,3 (default) or 1,3 (ablation)")
    p.add_argument("--allow-stage-skip", action="store_true",
                   help="allow a chain that skips a stage (paper Table 3 ablations); recorded in distill_state.json")
    p.add_argument("--data", type=Path, default=None,
                   help="training data: a mini-suite folder (default: tasks/mini/data) or, for recipes with "
                        "data.source: internvl, an InternVL-format .jsonl file or meta JSON")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder the .jsonl's image paths are relative to (default: the file's folder; a meta JSON "
                        "names its own roots)")
    p.add_argument("--micro-batch", type=POSITIVE_INT, default=None,
                   help="rows per forward/backward on one process; the rest of the recipe's batch is accumulated "
                        "(default: the recipe's micro_batch_size, else batch_size / processes)")
    p.add_argument("--device", default=None, help="override the recipe's device (cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_distill)


def _cmd_distill(args) -> int:
    from mmmamba_bench.train.distill import distill

    out = distill(args.recipe, args.teacher, args.out, stages=args.stages, data_dir=args.data,
                  image_root=args.image_root, allow_skip=args.allow_stage_skip, device=args.device,
                  progress=not args.no_progress, micro_batch=args.micro_batch)
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmmamba-bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="decode latency / memory vs context with the bandwidth floor (Fig. 1)")
    p.add_argument("--models", required=True, help="comma list of presets (hovle-2.6b, mmmamba-linear, "
                   "mmmamba-hybrid, tiny, demo: random weights built on the device) or checkpoint dirs")
    p.add_argument("--contexts", default=None, help="comma list, K = 1024 tokens (default 1k,...,103k,128k on "
                   "CUDA; 64,256 on CPU)")
    p.add_argument("--memory-cap", default=None, help="limit device memory, e.g. 24GiB (the paper's RTX 4090)")
    p.add_argument("--baseline", default="optimized", help="optimized | paper | optimized,paper")
    p.add_argument("--out", type=Path, default=Path("reports/profile.json"))
    p.add_argument("--steps", type=POSITIVE_INT, default=50, help="timed decode steps per context (median reported)")
    p.add_argument("--warmup", type=NON_NEGATIVE_INT, default=10)
    p.add_argument("--chunk-size", type=POSITIVE_INT, default=16384, help="prefill chunk (tokens)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--impl", default="auto", choices=("auto", "triton", "torch"), help="decode-step kernels")
    p.add_argument("--no-graph", action="store_true", help="do not capture the decode step in a CUDA graph")
    p.add_argument("--no-tune", action="store_true", help="default GEMV launch configs instead of timing candidates")
    p.add_argument("--ssd-backend", default="auto", help="prefill SSD scan: auto | torch | mamba_ssm | fla")
    p.add_argument("--hf-peer", default=None, help="contexts at which to also time transformers' LlamaForCausalLM "
                   "of HoVLE's shape (DynamicCache, eager), e.g. 103k")
    p.set_defaults(func=_cmd_profile)


def _cmd_profile(args) -> int:
    from mmmamba_bench.profiler import commands as pc
    from mmmamba_bench.profiler.floor import parse_contexts, parse_size
    from mmmamba_bench.profiler.models import DTYPES

    device = pc.resolve_device(args.device)
    if args.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {args.dtype!r}; choose from {sorted(DTYPES)}")
    contexts = parse_contexts(args.contexts or (pc.DEFAULT_CONTEXTS if device.type == "cuda" else pc.CPU_CONTEXTS))
    rows = pc.run_profile([m.strip() for m in args.models.split(",") if m.strip()], contexts,
                          [b.strip() for b in args.baseline.split(",") if b.strip()], args.out, device,
                          DTYPES[args.dtype], memory_cap=parse_size(args.memory_cap) if args.memory_cap else None,
                          steps=args.steps, warmup=args.warmup, chunk_size=args.chunk_size, impl=args.impl,
                          graph=not args.no_graph, tune=not args.no_tune, ssd_backend=args.ssd_backend,
                          peer_contexts=parse_contexts(args.hf_peer) if args.hf_peer else None)
    print(pc.summary(rows))
    print(f"wrote {args.out}")
    return 0


def _add_speed(sub) -> None:
    p = sub.add_parser("speed", help="Table-2 recipe: one image + 'Describe the image specifically', 256 tokens")
    p.add_argument("--models", required=True, help="comma list of presets, checkpoint dirs or Table-2 baseline "
                   "cards (llava-phi, mobilevlm-3b, cobra-3.5b, visualrwkv-3b; tiny-<card>: CPU-test scale)")
    p.add_argument("--variants", default="default", help="release (how the model's release generates), best (the "
                   "best our tooling makes of it) or release,best; default: baselines both, our models best")
    p.add_argument("--budget-s", type=NON_NEGATIVE, default=None, help="start no model or variant after this many "
                   "seconds (those left are listed in the file's meta.not_measured)")
    p.add_argument("--output-tokens", type=POSITIVE_INT, default=256, help="forced new tokens (no EOS stop)")
    p.add_argument("--repeats", type=POSITIVE_INT, default=3, help="timed runs after one warm-up run (median reported)")
    p.add_argument("--out", type=Path, default=Path("reports/speed.json"))
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--impl", default="auto", choices=("auto", "triton", "torch"))
    p.add_argument("--no-graph", action="store_true")
    p.add_argument("--eager-prefill", action="store_true",
                   help="time the eager prefill (default on CUDA: the prompt's layers as one captured CUDA graph)")
    p.add_argument("--no-tune", action="store_true")
    p.add_argument("--ssd-backend", default="auto")
    p.set_defaults(func=_cmd_speed)


def _cmd_speed(args) -> int:
    from mmmamba_bench.profiler import commands as pc
    from mmmamba_bench.profiler.models import DTYPES

    if args.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {args.dtype!r}; choose from {sorted(DTYPES)}")
    from mmmamba_bench.profiler.table2 import parse_variants

    rows = pc.run_speed([m.strip() for m in args.models.split(",") if m.strip()], args.out,
                        pc.resolve_device(args.device), DTYPES[args.dtype], output_tokens=args.output_tokens,
                        repeats=args.repeats, impl=args.impl, graph=not args.no_graph, tune=not args.no_tune,
                        ssd_backend=args.ssd_backend, prefill_graph=not args.eager_prefill,
                        variants=parse_variants(args.variants), budget_s=args.budget_s)
    for r in rows:
        print(f"{r.model} ({r.extra.get('variant', 'best')}): {r.tokens_per_s:.1f} tokens/s, total {r.total_s:.3f} s "
              f"(prefill {r.prefill_s:.3f} s)")
    print(pc.not_measured_summary(args.out))
    print(f"wrote {args.out}")
    return 0


def _add_regress(sub) -> None:
    p = sub.add_parser("regress", help="did scores regress? two evaluation runs compared sample by sample (paired "
                       "bootstrap, McNemar, Holm); exit 0 nothing regressed, 1 a task regressed, 2 not comparable")
    p.add_argument("--baseline", required=True, type=Path, help="evaluation run folder (or results file) with "
                   "per-sample logs")
    p.add_argument("--candidate", required=True, type=Path, help="the run to judge, same tasks and documents")
    p.add_argument("--out", required=True, type=Path, help="folder for regress.md and regress.json")
    p.add_argument("--tolerance", type=NON_NEGATIVE, default=0.0,
                   help="a significant drop counts as a regression only when larger than this, in the table's "
                        "units (accuracy x100, MME points)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (Holm over the tasks)")
    p.add_argument("--resamples", type=_number(int, 1000, "at least 1000"), default=10_000,
                   help="bootstrap resamples")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="bootstrap seed")
    p.set_defaults(func=_cmd_regress)


def _cmd_regress(args) -> int:
    from mmmamba_bench.outputs import check_output_dir
    from mmmamba_bench.regress.compare import compare_runs, render_markdown, write_reports
    from mmmamba_bench.regress.runs import NotComparable

    check_output_dir(args.out, "--out")
    try:
        comparison = compare_runs(args.baseline, args.candidate, alpha=args.alpha, tolerance=args.tolerance,
                                  resamples=args.resamples, seed=args.seed)
    except NotComparable as exc:
        print(f"mmmamba-bench regress: not comparable: {exc}", file=sys.stderr)
        return 2
    js, md = write_reports(comparison, args.out)
    print(render_markdown(comparison))
    print(f"wrote {md} and {js}")
    if comparison.regressed:
        print(f"mmmamba-bench regress: regressed: {', '.join(comparison.regressed)}", file=sys.stderr)
        return 1
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="compare configurations (layouts, the paper's Tables 3-6): distil, evaluate with "
                       "per-sample logs and cost each, then a report with intervals, Pareto fronts and verdicts on "
                       "the paper's orderings; resumable")
    p.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint directory (or a model card)")
    p.add_argument("--layouts", nargs="+", default=None, metavar="LAYOUT",
                   help="layouts to compare (as `convert --layout`); with --preset paper-table3/-table4: their base "
                        "layout (default linear)")
    p.add_argument("--preset", default=None, choices=("paper-table3", "paper-table4", "paper-table5", "paper-table6"),
                   help="the paper's ablation scaled to the teacher's depth: table3 stage subsets, table4 init, "
                        "table5 0/1/2/4/8/all attention layers, table6 placements of K attention layers")
    p.add_argument("--attention-layers", type=POSITIVE_INT, default=None,
                   help="paper-table6: the K attention layers to place (default: round(layers / 4), the paper's 8 of "
                        "32)")
    p.add_argument("--recipe", required=True, type=Path, help="distillation recipe YAML (its layout / init are set "
                   "per configuration)")
    p.add_argument("--tasks", required=True, help="lmms-eval tasks: 'mini', 'paper', or a comma list")
    p.add_argument("--out", required=True, type=Path, help="sweep folder (resumes if rerun with the same settings)")
    p.add_argument("--contexts", default="1k,16k,103k", help="context lengths for the cost, K = 1024 tokens "
                                                             "(default 1k,16k,103k)")
    p.add_argument("--report-context", default=None, help="the context of the report's cost columns and plots "
                                                          "(default 103k if swept, else the largest)")
    p.add_argument("--cost", default="auto", choices=("auto", "measured", "modelled"),
                   help="auto: measured with the profiler on a CUDA GPU, modelled (bandwidth floor) otherwise")
    p.add_argument("--gpu", default=None, choices=("h100", "h200", "h200-measured", "rtx4090"),
                   help="the GPU of a modelled cost (default rtx4090, the paper's Fig. 1 GPU; h200-measured: the "
                        "copy bandwidth measured on the lent H200)")
    p.add_argument("--profile-impl", default="auto", choices=("auto", "triton", "torch"),
                   help="measured cost: the decode step's kernels (as `profile --impl`)")
    p.add_argument("--max-steps", type=POSITIVE_INT, default=None, help="cap every distillation stage's steps")
    p.add_argument("--data", type=Path, default=None, help="training data (as `distill --data`; default "
                                                           "tasks/mini/data)")
    p.add_argument("--image-root", type=Path, default=None, help="as `distill --image-root`")
    p.add_argument("--mini-data", type=Path, default=None,
                   help="the mini-suite the mini tasks are scored on (default: --data for mini-suite recipes, else "
                        "tasks/mini/data)")
    p.add_argument("--data-dir", type=Path, default=None, help="local copies of the real benchmarks (as `eval "
                                                               "--data-dir`)")
    p.add_argument("--limit", type=POSITIVE_INT, default=None, help="documents per task (whole scoring clusters)")
    p.add_argument("--device", default=None, help="cpu / cuda for distillation and evaluation (default: the "
                                                  "recipe's device; evaluation: cuda if available)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="evaluation batch size")
    p.add_argument("--resamples", type=_number(int, 1000, "at least 1000"), default=2000,
                   help="bootstrap resamples for the intervals (default 2000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    from mmmamba_bench.cards import resolve_model
    from mmmamba_bench.config import ChatConfig
    from mmmamba_bench.profiler.floor import parse_context, parse_contexts
    from mmmamba_bench.sweep.configs import configs_from_layouts, expand_preset
    from mmmamba_bench.sweep.runner import SweepSettings, run_sweep

    if args.preset is None and not args.layouts:
        raise ValueError("give --layouts L1 L2 ... or --preset")
    if args.attention_layers is not None and args.preset != "paper-table6":
        raise ValueError("--attention-layers goes with --preset paper-table6")
    if args.preset in ("paper-table3", "paper-table4") and args.layouts and len(args.layouts) > 1:
        raise ValueError(f"--preset {args.preset} takes one base layout in --layouts, got {len(args.layouts)}")
    try:
        teacher = resolve_model(str(args.teacher))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--teacher: {exc}") from None
    if not (teacher / "config.json").is_file():
        raise FileNotFoundError(f"--teacher {args.teacher}: no config.json (not a checkpoint directory)")
    layers = ChatConfig.from_json_file(teacher / "config.json").num_layers
    if args.preset is not None:
        configs = expand_preset(args.preset, layers, attention_layers=args.attention_layers,
                                base_layout=args.layouts[0] if args.layouts else None)
    else:
        configs = configs_from_layouts(args.layouts, layers)
    try:
        contexts = tuple(parse_contexts(args.contexts))
        report_context = parse_context(args.report_context) if args.report_context else None
    except ValueError as exc:
        raise ValueError(f"--contexts / --report-context: {exc}") from None
    settings = SweepSettings(teacher=teacher, recipe=args.recipe, tasks=args.tasks, contexts=contexts,
                             report_context=report_context, cost=args.cost, gpu=args.gpu, max_steps=args.max_steps,
                             data=args.data, image_root=args.image_root, mini_data=args.mini_data,
                             data_dir=args.data_dir, limit=args.limit, device=args.device, batch_size=args.batch_size,
                             resamples=args.resamples, profile_impl=args.profile_impl,
                             progress=not args.no_progress)
    report = run_sweep(configs, settings, args.out)
    print(f"wrote {report}")
    return 0


def _add_place(sub) -> None:
    p = sub.add_parser("place", help="search where a hybrid's attention layers should go: each layer's held-out KL "
                       "drop as the only attention layer (short stage-3 runs, several seeds, intervals), a proposal "
                       "under a budget with its cost; --evaluate: the sweep scores it beside head-interleaved")
    p.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint directory (or a model card)")
    p.add_argument("--budget", required=True, help="K attention layers (2), a decode latency at --context "
                                                   "(0.4ms) or a memory size at --context (6GiB)")
    p.add_argument("--recipe", required=True, type=Path, help="distillation recipe YAML (its stage 3, init and "
                                                              "data; layout and seed are set per run)")
    p.add_argument("--out", required=True, type=Path, help="search folder (resumes if rerun with the same settings)")
    p.add_argument("--seeds", type=POSITIVE_INT, default=3, help="seeds per layer, from the recipe's (default 3)")
    p.add_argument("--steps", type=POSITIVE_INT, default=50, help="stage-3 steps of each run (default 50)")
    p.add_argument("--layers", default=None, help="candidate global layers, comma list (default: every layer)")
    p.add_argument("--heldout", type=POSITIVE_INT, default=128, help="held-out rows for the KL (default 128)")
    p.add_argument("--heldout-data", type=Path, default=None, help="InternVL recipes: the held-out rows (.jsonl / "
                                                                   "meta JSON); mini-suite: the validation split")
    p.add_argument("--context", default="103k", help="context of the costs and of a cost budget (default 103k)")
    p.add_argument("--cost", default="auto", choices=("auto", "measured", "modelled"),
                   help="auto: measured with the profiler on a CUDA GPU, modelled (bandwidth floor) otherwise")
    p.add_argument("--gpu", default=None, help="the GPU of a modelled cost: h100, h200, h200-measured, rtx4090 "
                                               "(default)")
    p.add_argument("--data", type=Path, default=None, help="training data (as `distill --data`)")
    p.add_argument("--image-root", type=Path, default=None, help="as `distill --image-root`")
    p.add_argument("--device", default=None, help="cpu / cuda (default: the recipe's device)")
    p.add_argument("--keep-models", action="store_true", help="keep every run's student (default: removed once "
                                                              "its KL is recorded)")
    p.add_argument("--evaluate", action="store_true", help="then distil (full recipe) and evaluate the proposal "
                                                           "beside head-interleaved with the sweep, in OUT/evaluate")
    p.add_argument("--tasks", default="mini", help="--evaluate: lmms-eval tasks (default mini)")
    p.add_argument("--eval-max-steps", type=POSITIVE_INT, default=None, help="--evaluate: cap every stage's steps")
    p.add_argument("--mini-data", type=Path, default=None, help="--evaluate: as `sweep --mini-data`")
    p.add_argument("--limit", type=POSITIVE_INT, default=None, help="--evaluate: documents per task")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="--evaluate: evaluation batch size")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_place)


def _cmd_place(args) -> int:
    from mmmamba_bench.cards import resolve_model
    from mmmamba_bench.profiler.floor import parse_context
    from mmmamba_bench.sweep.place import PlaceSettings, run_place
    from mmmamba_bench.sweep.runner import SweepSettings

    try:
        teacher = resolve_model(str(args.teacher))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--teacher: {exc}") from None
    try:
        context = parse_context(args.context)
    except ValueError as exc:
        raise ValueError(f"--context: {exc}") from None
    try:
        layers = None if args.layers is None else tuple(int(x) for x in args.layers.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--layers {args.layers!r}: expected a comma list of layer indices") from None
    evaluate = None
    if args.evaluate:
        evaluate = SweepSettings(teacher=teacher, recipe=args.recipe, tasks=args.tasks, contexts=(context,),
                                 cost=args.cost, gpu=args.gpu, max_steps=args.eval_max_steps, data=args.data,
                                 image_root=args.image_root, mini_data=args.mini_data, limit=args.limit,
                                 device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    settings = PlaceSettings(teacher=teacher, recipe=args.recipe, budget=args.budget, seeds=args.seeds,
                             steps=args.steps, layers=layers, heldout=args.heldout, heldout_data=args.heldout_data,
                             context=context, cost=args.cost, gpu=args.gpu, data=args.data,
                             image_root=args.image_root, device=args.device, keep_models=args.keep_models,
                             progress=not args.no_progress, evaluate=evaluate)
    report = run_place(settings, args.out)
    print(f"wrote {report}")
    return 0


_SUBCOMMANDS = [_add_convert, _add_data, _add_eval, _add_report, _add_demo, _add_train_teacher, _add_distill,
                _add_profile, _add_speed, _add_regress, _add_sweep,
                _add_place]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from mmmamba_bench.process_group import leave

    finished = False
    try:
        code = int(args.func(args) or 0)
        finished = True
        return code
    except (OSError, ValueError, RuntimeError) as exc:
        # Expected user-facing failures (bad input, missing files, a full disk, a held output lock): one clear line,
        # no traceback (use -v for one).
        if args.verbose:
            raise
        print(f"mmmamba-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        # under `accelerate launch -m mmmamba_bench ...`: leave the process group before the interpreter ends
        leave(wait_for_others=finished)


if __name__ == "__main__":
    sys.exit(main())
