#!/usr/bin/env bash
# The distillation throughput benchmark on the lent H200 (issue 11): ONE device command, run from the repository
# root with the wheels of scripts/device_wheels.sh carried along (device tool: carry [".whl"]):
#
#   bash scripts/device_distill.sh bench   # the benchmark, plain and ZeRO-2 (~8 min)
#   bash scripts/device_distill.sh tests   # the GPU tests of batched decode, the SSD scans and ZeRO-2 resume (~8 min)
#   bash scripts/device_distill.sh check   # a profile of two steps + the batched-decode and ZeRO-2 GPU tests
#
# Phases, each under its own time limit so the whole ends within ~8.7 minutes (whatever a phase wrote before its
# limit is kept; the benchmarks write their JSON after every case and start no case past their --budget-s):
#   0. install .whl/ into /tmp/site; GPU, driver and package versions       -> $OUT/env.txt
#   1. the batched-decode GPU tests (tests/test_batched_decode_gpu.py)      -> $OUT/gpu_tests_batched.log
#   2. scripts/bench_distill.py, one process (plain accelerate)            -> $OUT/bench_distill_plain.{json,log}
#   3. the same under accelerate launch + DeepSpeed ZeRO-2, one process     -> $OUT/bench_distill_zero2.{json,log}
#   4. both tables (bench_distill.py --summarize)
# mamba-ssm's Triton kernels run in deterministic mode (MAMBA_DETERMINISTIC=1: one configuration per kernel, no
# autotuning sweep, which could take minutes); the JSON records it. Set MAMBA_DETERMINISTIC=0 for the autotuned
# kernels (TRITON_CACHE_AUTOTUNING=1 lets the DeepSpeed run reuse the plain run's tuning).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAMBA_DETERMINISTIC=${MAMBA_DETERMINISTIC:-1} TRITON_CACHE_AUTOTUNING=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep NVLink multicast off
t0=$SECONDS
stamp() { echo "[$(date +%H:%M:%S) +$((SECONDS - t0))s] $*"; }
progress() { grep --line-buffered -E '^\[|^ *stage|^ +[0-9]+ +[0-9]+ |^paper|^wrote|^bench_distill:|Error|error:'; }

stamp "installing the carried wheels into /tmp/site"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { stamp "wheel install failed (are the wheels carried? carry: [\".whl\"])"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
{
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem,driver_version --format=csv
  python3 - <<'EOF'
import importlib.metadata as md
import platform


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


names = ("torch", "triton", "accelerate", "deepspeed", "mamba-ssm", "fla-core", "pydantic", "pydantic-core",
         "typing-extensions", "einops", "transformers")
print("python", platform.python_version(), {n: version(n) for n in names})
EOF
} 2>&1 | tee "$OUT/env.txt"

phase=${1:-bench}
if [ "$phase" = check ]; then
  stamp "check 1/3: where a distillation step's time goes (stage 1 and 3 at 2,048 tokens, torch.profiler)"
  timeout 150 python3 scripts/bench_distill.py --stages 1,3 --lengths 2048 --checkpointed "" --warmup 2 --steps 2 \
    --profile --out "$OUT/bench_distill_profile.json" 2>&1 | tee "$OUT/bench_distill_profile.log" | tail -120
  stamp "check 2/3: tests/test_batched_decode_gpu.py"
  timeout 160 python3 -m pytest -q -m gpu tests/test_batched_decode_gpu.py 2>&1 | tee "$OUT/gpu_tests_batched.log" | tail -4
  stamp "check 3/3: bf16 + DeepSpeed ZeRO-2 distillation, kill and resume (tests/test_distill_gpu.py)"
  timeout 230 python3 -m pytest -q -s -m gpu tests/test_distill_gpu.py 2>&1 | tee "$OUT/gpu_tests_distill.log" | tail -8
elif [ "$phase" = tests ]; then
  stamp "tests 1/3: tests/test_batched_decode_gpu.py"
  timeout 170 python3 -m pytest -q -m gpu tests/test_batched_decode_gpu.py 2>&1 | tee "$OUT/gpu_tests_batched.log" | tail -4
  stamp "tests 2/3: SSD kernel backends, forward and backward (tests/test_kernels_gpu.py -k ssd)"
  timeout 100 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k "ssd or backward" 2>&1 \
    | tee "$OUT/gpu_tests_kernels.log" | tail -4
  stamp "tests 3/3: bf16 + DeepSpeed ZeRO-2 distillation, kill and resume (tests/test_distill_gpu.py)"
  timeout 240 python3 -m pytest -q -s -m gpu tests/test_distill_gpu.py 2>&1 | tee "$OUT/gpu_tests_distill.log" | tail -8
else
  stamp "bench 1/2: distillation benchmark, one process (plain)"
  timeout 270 python3 scripts/bench_distill.py --budget-s 200 --out "$OUT/bench_distill_plain.json" 2>&1 \
    | tee "$OUT/bench_distill_plain.log" | progress

  stamp "bench 2/2: distillation benchmark, accelerate launch + DeepSpeed ZeRO-2"
  timeout 200 python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 --dynamo_backend no \
    --use_deepspeed --deepspeed_config_file distill/zero2.json --mixed_precision bf16 \
    scripts/bench_distill.py --budget-s 130 --out "$OUT/bench_distill_zero2.json" 2>&1 \
    | tee "$OUT/bench_distill_zero2.log" | progress

  stamp "summary"
  python3 scripts/bench_distill.py --summarize "$OUT"/bench_distill_plain.json "$OUT"/bench_distill_zero2.json 2>&1
fi
stamp "done"
