#!/usr/bin/env bash
# Quickstart on a fresh machine: install, get real data, train a small preset, export it, benchmark it.
# Works offline on Debian: when tfds cannot download, it installs Debian's dataset-fashion-mnist (as root).
set -euo pipefail
cd "$(dirname "$0")"
PRESET="${PRESET:-deep_ae_fashion_mnist}"
EPOCHS="${EPOCHS:-3}"
RUN="runs/quickstart/$PRESET"  # the quickstart's own folder: running it again replaces it (--overwrite)

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[train,test]'  # training, export and benchmarks: the train extra
PY=.venv/bin/python

echo "== 1/4 data"
if ! $PY -m zoo.data fashion_mnist 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Fashion-MNIST not found and not downloadable: installing Debian's dataset-fashion-mnist"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  fi
  $PY -m zoo.data fashion_mnist   # prints how to provide the data if it is still missing
fi

echo "== 2/4 train $PRESET for $EPOCHS epochs"
$PY -m zoo.train "$PRESET" --epochs "$EPOCHS" --out "$RUN" --overwrite

echo "== 3/4 export to SavedModel and ONNX (with the parity check)"
$PY -m export "$RUN"

echo "== 4/4 onnxruntime vs TensorFlow throughput on this CPU"
$PY -m benchmarks.throughput "$RUN/export" --batch-sizes 1,64,1024 --out "$RUN/benchmark"

echo "Done: $RUN/ holds the model, metrics, figures, exports and benchmark results."
