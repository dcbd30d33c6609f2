#!/usr/bin/env bash
# One short GPU run (under 5 minutes on an H100/H200): benchmarks 1 and 4 on CUDA with
# AMP. Writes JSON next to the printed tables when OUT is set (e.g. the device tool's $OUT).
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
OUT=${OUT:-/tmp/bnnas_gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
# 1. supernet step, BN-only vs all params, bf16 autocast + channels_last, demo and 224
"$PY" bench/supernet_step.py --device cuda --amp bf16 --sizes demo,imagenet \
    --batch-demo 256 --batch-224 128 --steps 20 --warmup 5 | tee "$OUT/supernet_step.txt"
"$PY" bench/supernet_step.py --device cuda --amp bf16 --sizes demo,imagenet \
    --batch-demo 256 --batch-224 128 --steps 20 --warmup 5 --json > "$OUT/supernet_step.json"
# 4. retrain step: fp32 / channels-last / bf16 / both, published BN-NAS architecture at 224
"$PY" bench/retrain_step.py --device cuda --batch 128 --steps 30 --warmup 10 | tee "$OUT/retrain_step.txt"
"$PY" bench/retrain_step.py --device cuda --batch 128 --steps 30 --warmup 10 --json > "$OUT/retrain_step.json"
echo "wrote $OUT"
