#!/usr/bin/env bash
# GPU check for whoever has a GPU machine (under 5 minutes on one GPU): a few hundred training
# steps per model on the GPU, encoding of the 10k test images, faiss scoring (GPU build when
# installed), throughput and the compatibility matrix. Extra arguments go to scripts/gpu_check.py
# (--steps, --batch-size, --precision, --data, --out).
#   bash scripts/gpu_check.sh                       # in this project's environment
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no GPU visible to torch'" \
  || echo "warning: no GPU visible; the check runs on the CPU (slowly)" >&2
exec "$PYTHON" -m scripts.gpu_check "$@"
