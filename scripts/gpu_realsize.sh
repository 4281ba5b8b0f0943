#!/usr/bin/env bash
# configs/gpu/realsize224.yaml on one GPU machine: 224 px colour images, the team's exported model,
# a timm ResNet-50 new model streamed by Ray Data in bf16, through the same pipeline as `make demo`.
#   bash scripts/gpu_realsize.sh          # in this project's environment
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no GPU visible to torch'"
bash scripts/fetch_data.sh
[ -f data/colour-fashion-mnist-224/.written ] || { PYTHONPATH=. "$PYTHON" scripts/colour_fashion_mnist.py \
  --out data/colour-fashion-mnist-224 --size 224 --train 60000 --test 10000 && touch data/colour-fashion-mnist-224/.written; }
[ -f outputs/gpu-realsize-team/old.ts ] || PYTHONPATH=. "$PYTHON" scripts/realsize_team_model.py \
  --images data/colour-fashion-mnist-224 --out outputs/gpu-realsize-team
exec "$PYTHON" -m jobs.pipeline --config configs/gpu/realsize224.yaml "$@"
