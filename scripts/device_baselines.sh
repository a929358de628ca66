#!/usr/bin/env bash
# Table 2, all seven rows, on the lent GPU (issue 14): ONE device command, run from the repository root with the
# wheels of scripts/device_wheels.sh carried along (device tool: carry [".whl"]):
#
#   bash scripts/device_baselines.sh
#
# Phases, each under its own time limit (the speed files are rewritten after every row, and --budget-s starts no
# model or variant past its budget; what did not run is listed in the file's meta.not_measured), ~8 minutes in all
# (measured 2026-12-02: the baselines' phase took ~350 s at 2 repeats, VisualRWKV's first generate compiling fla's
# Triton kernels for ~90 s of it; hence 1 repeat here, and our models in their own phase so a slow baseline cannot
# crowd them out):
#   0. install .whl/ into /tmp/site; GPU, driver, package versions, import probes     -> $OUT/env.txt
#   1. speed: the four baselines (release + best)                                      -> $OUT/speed_table2_h200.json
#   2. speed: our three models (best)                                                  -> $OUT/speed_table2_h200_ours.json
#   3. speed: our three models the paper-faithful way (release: eager, KV cache grown by torch.cat), one repeat
#                                                                                      -> $OUT/speed_table2_h200_release.json
#   4. the report: Table 2 beside the paper's, what was not measured, the ordering check -> $OUT/report/report.md
# The baselines run first on purpose: transformers' Mamba resolves its kernels when it is first imported, and our
# mamba_ssm backend (used by our models) registers the Python-only mamba_ssm package without its __init__, which
# would let transformers pick mamba_ssm's Triton selective_state_update instead of its PyTorch reference. Either way
# each row's path records what each Mamba function resolved to.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAMBA_DETERMINISTIC=${MAMBA_DETERMINISTIC:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
t0=$SECONDS
stamp() { echo "[$(date +%H:%M:%S) +$((SECONDS - t0))s] $*"; }
progress() { grep --line-buffered -E 'tokens/s|not measured|^wrote|error|Error|Traceback' | grep --line-buffered -v ' INFO '; }
BASELINES=${BASELINES:-llava-phi,mobilevlm-3b,cobra-3.5b,visualrwkv-3b}
OURS=${OURS:-mmmamba-linear,mmmamba-hybrid,hovle-2.6b}

stamp "0/3 installing the carried wheels into /tmp/site"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { stamp "wheel install failed (are the wheels carried? carry: [\".whl\"])"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
{
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv
  python3 - <<'EOF'
import importlib
import importlib.metadata as md
import platform


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def probe(module):
    try:
        importlib.import_module(module)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


names = ("torch", "triton", "transformers", "fla-core", "flash-linear-attention", "mamba-ssm", "causal-conv1d",
         "einops", "pandas")
print("python", platform.python_version(), {n: version(n) for n in names})
print("import probes:", {m: probe(m) for m in ("mamba_ssm", "causal_conv1d", "fla.models")})
EOF
} 2>&1 | tee "$OUT/env.txt"

# our decode kernels' launch configurations measured on this kind of GPU before are reused (keyed by GPU name)
export MMMAMBA_BENCH_TUNE_CACHE=${MMMAMBA_BENCH_TUNE_CACHE:-$OUT/decode-tuning.json}
[ -f "$MMMAMBA_BENCH_TUNE_CACHE" ] || cp reports/h200/decode-tuning.json "$MMMAMBA_BENCH_TUNE_CACHE" 2>/dev/null
chmod u+w "$MMMAMBA_BENCH_TUNE_CACHE" 2>/dev/null

stamp "1/4 speed: $BASELINES (release + best)"
timeout 330 python3 -m mmmamba_bench.cli speed --models "$BASELINES" --repeats "${REPEATS:-1}" \
  --budget-s "${BUDGET_BASELINES:-300}" --out "$OUT/speed_table2_h200.json" 2>&1 \
  | tee "$OUT/speed_table2_h200.log" | progress

stamp "2/4 speed: $OURS (best: our decode path)"
timeout 100 python3 -m mmmamba_bench.cli speed --models "$OURS" --repeats 2 \
  --budget-s "${BUDGET_OURS:-80}" --out "$OUT/speed_table2_h200_ours.json" 2>&1 \
  | tee "$OUT/speed_table2_h200_ours.log" | progress

stamp "3/4 speed: $OURS (release: the paper-faithful eager decode)"
timeout 90 python3 -m mmmamba_bench.cli speed --models "$OURS" --variants release --repeats 1 \
  --budget-s "${BUDGET_RELEASE:-60}" --out "$OUT/speed_table2_h200_release.json" 2>&1 \
  | tee "$OUT/speed_table2_h200_release.log" | progress

stamp "4/4 report"
files=$(ls "$OUT"/speed_table2_h200*.json 2>/dev/null)
if [ -n "$files" ]; then
  # shellcheck disable=SC2086
  timeout 40 python3 -m mmmamba_bench.cli report --speed $files --out "$OUT/report" \
    --title "Table 2 on the lent GPU (issue 14)" 2>&1 | tail -1
  sed -n '/^### Ordering check/,/^## /p' "$OUT/report/report.md" | grep -E '^\| |^- ' | cut -c1-220
else
  stamp "no speed file was written (see the logs in $OUT)"
fi
stamp "done"
