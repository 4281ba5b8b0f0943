#!/usr/bin/env bash
# Make sure the default dataset (Fashion-MNIST from Debian's dataset-fashion-mnist) is installed.
set -euo pipefail
dir="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "Fashion-MNIST not found in $dir: installing the Debian package dataset-fashion-mnist"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is not in $dir. Install it with:
    sudo apt-get update && sudo apt-get install dataset-fashion-mnist
or put the four idx .gz files (train-images-idx3-ubyte.gz, ...) in a folder and run
    make demo DATA=/that/folder      (or set FASHION_MNIST_DIR=/that/folder for make test)
MSG
exit 1
