#!/usr/bin/env bash
# Recreate .whl/ (git-ignored): the wheels the GPU machine's image lacks, for its Python 3.12 on manylinux x86_64
# (torch 2.11, Triton 3.6, accelerate 1.15, einops, ninja, msgpack, psutil, py-cpuinfo, nvidia-ml-py are there:
# /work/.library/device/KINDS.md). The device tool carries the folder (`carry: [".whl"]`) and
# scripts/device_distill.sh installs it into /tmp/site.
#
#   mamba-ssm 2.3.2.post1   Python-only (no CUDA extension): its Triton SSD scan, forward and backward, is what the
#                           student's "mamba_ssm" backend imports (ops/backends.py skips the package __init__)
#   deepspeed 0.19.8        pure Python (DS_BUILD_OPS=0; ZeRO-2 with a torch AdamW needs no compiled op)
#   hjson, pydantic, pydantic-core (cp312 manylinux), annotated-types, typing-inspection, typing-extensions
#                           deepspeed's requirements missing there (typing-extensions: pydantic 2.14 wants >= 4.16,
#                           newer than the image may hold; it shadows the image's copy, which it supersedes)
#   fla-core / flash-linear-attention 0.6.0   the "fla" SSD backend (the eval benchmark's prefill scan)
#
# Usage: bash scripts/device_wheels.sh   (needs the package index; BUILD_PY: a Python with torch importable, CPU
# torch is enough: mamba-ssm's setup.py imports torch even when it builds nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_PY=${BUILD_PY:-/tmp/venv/bin/python}
"$BUILD_PY" -c "import torch" || { echo "BUILD_PY=$BUILD_PY cannot import torch" >&2; exit 1; }
git check-ignore -q .whl/x.whl || echo "/.whl/" >> "$(git rev-parse --git-path info/exclude)"
rm -rf .whl && mkdir -p .whl
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT

# Python-only builds from the source distributions. MAMBA_FORCE_BUILD=TRUE: with FALSE, mamba-ssm's setup.py first
# tries to download a prebuilt CUDA wheel from GitHub (and fails on a CPU torch); with MAMBA_SKIP_CUDA_BUILD=TRUE the
# forced build compiles nothing.
export MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE DS_BUILD_OPS=0
python3 -m pip --python "$BUILD_PY" download -q --no-deps --no-build-isolation --no-binary :all: -d "$src" \
  mamba-ssm==2.3.2.post1 deepspeed==0.19.8
python3 -m pip --python "$BUILD_PY" wheel -q --no-deps --no-build-isolation -w .whl \
  "$src"/mamba_ssm-2.3.2.post1.tar.gz "$src"/deepspeed-0.19.8.tar.gz

# Binary / universal wheels for the machine's Python 3.12.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 fla-core==0.6.0 flash-linear-attention==0.6.0

# One version of each package (two would stop the install), and the size the device tool will carry.
dups=$(ls .whl | sed -E 's/-[0-9].*//' | tr '[:upper:]-' '[:lower:]_' | sort | uniq -d)
[ -z "$dups" ] || { echo "more than one wheel of: $dups" >&2; exit 1; }
ls -l .whl
du -sh .whl
