#!/usr/bin/env bash
# Build the FLOPs/params lookup tables of both spaces at their ImageNet settings into
# data/flops_tables/ (committed). Other configs are built on demand into the cache.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
for space in mobilenet shufflenet; do
  "$PY" tools/flops.py --space "$space" --build --table-dir data/flops_tables
done
