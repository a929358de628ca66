#!/usr/bin/env bash
# Run on the lent GPU machine (device tool), from the repository root: installs the carried wheels (.whl/), then
# runs one stage. Results go to $OUT (the device tool brings them back).
#   check   : GPU tests (fused kernels vs twins, SSD backends, captured vs eager decode) + a short profile
#   profile : the full profile (all models, all contexts, both baselines, the transformers peer at 103K)
#   cap     : the 24 GiB memory-cap run at 103K/128K, and the Table-2 speed run
#   final   : profile + the Table-2 speed run + the GPU tests (fused kernels, captured decode, PDL, captured prefill)
#   hovle   : the HoVLE profile (optimised, paper baseline, transformers peer) + the 24 GiB cap runs + GPU decode tests
#   h200    : GPU tests + one optimised profile per model + Table 2, launch configurations tuned once and cached in
#             $OUT/decode-tuning.json (MMMAMBA_BENCH_TUNE_CACHE)
#   bw      : scripts/bw_probe.py (copy / read bandwidth; each GEMV kernel x32 layers vs one launch of the same bytes)
#   probe   : scripts/perf_probe.py (PDL A/B, GEMV configs, Table-2 prefill breakdown, peer variants) + GPU tests
set -uo pipefail
stage=${1:?stage}
export PYTHONUNBUFFERED=1 MAMBA_DETERMINISTIC=1
[ -d /tmp/site/mamba_ssm ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.mem --format=csv | tee "$OUT/nvidia_smi.txt"
case $stage in
  all)
    bash "$0" profile 2>&1 | tee "$OUT/run.log"; bash "$0" cap 2>&1 | tee -a "$OUT/run.log"
    python3 -m pytest -q -s -m gpu tests/test_fast_decode_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
    ;;
  final)
    bash "$0" profile 2>&1 | tee "$OUT/run.log"
    python3 -m mmmamba_bench.cli speed --models mmmamba-linear,mmmamba-hybrid,hovle-2.6b --out "$OUT/speed.json" 2>&1 | tee -a "$OUT/run.log" | tail -6
    python3 -m pytest -q -s -m gpu tests/test_kernels_gpu.py tests/test_fast_decode_gpu.py -k "not ssd_backend" 2>&1 | tee "$OUT/gpu_tests.log" | tail -12
    ;;
  hovle)
    python3 -m mmmamba_bench.cli profile --models hovle-2.6b --contexts "${CONTEXTS:-1k,2k,4k,8k,16k,32k,64k,103k,128k}" \
      --baseline optimized,paper --hf-peer "${PEER:-1k,103k}" --out "$OUT/profile_hovle.json" 2>&1 | tail -25 | tee "$OUT/run.log"
    python3 -m mmmamba_bench.cli profile --models mmmamba-linear,mmmamba-hybrid --contexts 103k,128k \
      --baseline optimized --memory-cap 24GiB --out "$OUT/profile_cap24_mamba.json" 2>&1 | tail -8 | tee -a "$OUT/run.log"
    python3 -m mmmamba_bench.cli profile --models hovle-2.6b --contexts 103k,128k \
      --baseline optimized,paper --memory-cap 24GiB --out "$OUT/profile_cap24_hovle.json" 2>&1 | tail -8 | tee -a "$OUT/run.log"
    python3 -m pytest -q -s -m gpu tests/test_fast_decode_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
    ;;
  probe)
    python3 scripts/perf_probe.py ${PARTS:-decode prefill speed peer} 2>&1 | tee "$OUT/probe.log" | grep -v "^\s*$"
    python3 -m pytest -q -s -m gpu tests/test_fast_decode_gpu.py tests/test_kernels_gpu.py -k "${TESTS_K:-not ssd_backend}" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
    ;;
  h200)  # issue 13: GPU tests, then one profile per model (optimised) and the Table-2 run, tuning cached in $OUT
    export MMMAMBA_BENCH_TUNE_CACHE=${MMMAMBA_BENCH_TUNE_CACHE:-$OUT/decode-tuning.json}
    python3 -m pytest -q -s -m gpu tests/test_kernels_gpu.py -k "argmax or attention" 2>&1 | tail -2  # fail fast
    python3 -m mmmamba_bench.cli profile --models mmmamba-linear,mmmamba-hybrid --contexts "${CONTEXTS:-1k,2k,4k,8k,16k,32k,64k,103k,128k}" \
      --baseline optimized --out "$OUT/profile_mamba_h200.json" 2>&1 | tee "$OUT/profile_mamba.log" | grep -v "^$" | grep -v "refine " | tail -25
    python3 -m mmmamba_bench.cli profile --models hovle-2.6b --contexts "${CONTEXTS:-1k,2k,4k,8k,16k,32k,64k,103k,128k}" \
      --baseline optimized --out "$OUT/profile_hovle_h200.json" 2>&1 | tee "$OUT/profile_hovle.log" | grep -v "refine " | tail -14
    python3 -m mmmamba_bench.cli speed --models mmmamba-linear,mmmamba-hybrid,hovle-2.6b --out "$OUT/speed_h200.json" 2>&1 | tail -4
    python3 -m pytest -q -s -m gpu tests/test_kernels_gpu.py tests/test_fast_decode_gpu.py tests/test_batched_decode_gpu.py -k "not ssd_backend" 2>&1 | tee "$OUT/gpu_tests.log" | tail -12
    ;;
  bw)  # where the decode step loses bandwidth: 32 launches of each GEMV kernel vs one launch of the same bytes
    MMMAMBA_BENCH_TUNE_CACHE=${MMMAMBA_BENCH_TUNE_CACHE:-reports/h200/decode-tuning.json} python3 scripts/bw_probe.py 2>&1 | tee "$OUT/bw_probe.log" | tail -40
    ;;
  check)
    python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_fast_decode_gpu.py -x 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
    python3 -m mmmamba_bench.cli profile --models mmmamba-linear,mmmamba-hybrid,hovle-2.6b --contexts 1k,32k \
      --baseline optimized --steps 30 --warmup 5 --out "$OUT/check_profile.json" 2>&1 | tail -12
    ;;
  profile)
    python3 -m mmmamba_bench.cli profile --models mmmamba-linear,mmmamba-hybrid --contexts "${CONTEXTS:-1k,2k,4k,8k,16k,32k,64k,103k,128k}" \
      --baseline optimized --out "$OUT/profile_mamba.json" 2>&1 | grep -v "^$" | tail -25
    python3 -m mmmamba_bench.cli profile --models hovle-2.6b --contexts "${CONTEXTS:-1k,2k,4k,8k,16k,32k,64k,103k,128k}" \
      --baseline optimized,paper --hf-peer "${PEER:-1k,103k}" --out "$OUT/profile_hovle.json" 2>&1 | tail -25
    ;;
  cap)
    python3 -m mmmamba_bench.cli profile --models mmmamba-linear,mmmamba-hybrid --contexts 103k,128k \
      --baseline optimized --memory-cap 24GiB --out "$OUT/profile_cap24_mamba.json" 2>&1 | tail -8
    python3 -m mmmamba_bench.cli profile --models hovle-2.6b --contexts 103k,128k \
      --baseline optimized,paper --memory-cap 24GiB --out "$OUT/profile_cap24_hovle.json" 2>&1 | tail -8
    python3 -m mmmamba_bench.cli speed --models mmmamba-linear,mmmamba-hybrid,hovle-2.6b --out "$OUT/speed.json" 2>&1 | tail -6
    for be in fla torch; do
      python3 -m mmmamba_bench.cli speed --models mmmamba-linear --ssd-backend $be --out "$OUT/speed_ssd_$be.json" 2>&1 | tail -2
    done
    ;;
esac
