#!/usr/bin/env bash
# The paper's ResNet-18 -> ResNet-50 backbone scenario on one GPU machine
# (configs/scenarios/gpu/backbone.yaml): every method and CMC fit of the scenarios, one seed, through
# the same pipeline as `make results` (Ray Train, Ray Data, faiss, MLflow), tables written to
# outputs/gpu/gpu.md. Extra arguments go to jobs.results (for example --reuse to rebuild the table).
#   bash scripts/gpu_scenario.sh          # in this project's environment, after scripts/fetch_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no GPU visible to torch'"
bash scripts/fetch_data.sh
exec "$PYTHON" -m jobs.results --scenarios configs/scenarios/gpu/backbone.yaml --output-root outputs/gpu \
  --out outputs/gpu/gpu.md "$@"
