#!/usr/bin/env bash
# The GPU checks as one run, for a machine with CUDA (the `device` machine of docs/gpu.md):
# build litcore against that machine's torch, run the CUDA tests, then the GPU benchmark on
# a 1.1B model (512 MiB GPU budget) and a 7B-shaped one (GPU budget $BUDGET_7B). Everything
# printed also goes to $OUT/log.txt; tables and figures to $OUT/gpu-*.{md,json}.
#
#     OUT=gpu-check bash benchmarks/gpu_check.sh
#
# Each step has a time limit, and the whole run ends by $DEADLINE_S seconds (default 540).
set -u
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
LAYERS_7B=${LAYERS_7B:-16}
BUDGET_7B=${BUDGET_7B:-2GiB}
DEADLINE_S=${DEADLINE_S:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
start=$(date +%s)
left() { echo $((DEADLINE_S - ($(date +%s) - start))); }
step() { echo "== $* (t=$(($(date +%s) - start)) s)"; }

{
  step machine
  nvidia-smi -L
  $PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  step build
  timeout 300 $PY -m pip install --no-build-isolation --no-deps -q . || { echo "BUILD FAILED"; exit 1; }
  step tests
  timeout 180 $PY -m pytest -q -o filterwarnings=default tests/test_cuda.py
  step bench-1b
  timeout "$(left)" $PY benchmarks/gpu_bench.py --size 1b --gpu-budget 512MiB --timeout 120 \
    --json "$OUT/gpu-1b.json" --markdown "$OUT/gpu-1b.md"
  step bench-7b
  timeout "$(left)" $PY benchmarks/gpu_bench.py --size 7b --layers "$LAYERS_7B" --gpu-budget "$BUDGET_7B" --timeout 150 \
    --json "$OUT/gpu-7b.json" --markdown "$OUT/gpu-7b.md"
  step end
} 2>&1 | tee "$OUT/log.txt"
