#!/usr/bin/env bash
# Reproduce every committed result for the fashion_mnist presets with one command:
# train each preset with its defaults on the real Fashion-MNIST, export with the parity check, build the bundled
# release (releases/v<version>/), evaluate quality, benchmark onnxruntime against TensorFlow on this CPU, measure similar-image search
# and training speed per backend, regenerate MODEL_CARDS.md.
#   bash benchmarks/reproduce.sh                 (about 5 hours on 2 cores, most of it the three conv presets)
#   PRESETS="deep_ae_fashion_mnist conv_ae_fashion_mnist" bash benchmarks/reproduce.sh
# Trained runs that already have metrics.json are kept (delete runs/<preset>/ to retrain one).
# Run the throughput step on an otherwise idle machine: its figures are timings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
PRESETS=${PRESETS:-$($PY -c 'from zoo.presets import list_presets; print(" ".join(p for p in list_presets() if p.endswith("_fashion_mnist")))')}

$PY -m zoo.data fashion_mnist   # says how to get the data if it is missing (apt-get install -y dataset-fashion-mnist)
for preset in $PRESETS; do
  if [ ! -f "runs/$preset/metrics.json" ]; then
    $PY -m zoo.train "$preset" --quiet
  fi
  [ -f "runs/$preset/export/parity.json" ] || $PY -m export "runs/$preset" --quiet
done
RUN_DIRS=$(for p in $PRESETS; do printf 'runs/%s ' "$p"; done)
# The release aezoo ships (zoo.weights and zoo.from_preset read it by default): releases/v<major.minor>/.
RELEASE=releases/v$($PY -c 'import zoo; print(".".join(zoo.__version__.split(".")[:2]))')
# shellcheck disable=SC2086
$PY -m export.release $RUN_DIRS --out "$RELEASE" --quiet
du -sh "$RELEASE"   # keep it under 60 MB
# shellcheck disable=SC2086
$PY -m benchmarks.quality $PRESETS
# shellcheck disable=SC2086
$PY -m benchmarks.throughput $RUN_DIRS --max-seconds 0.5 --out benchmarks/results/
$PY -m benchmarks.search --runs runs --out benchmarks/results/     # similar-image search, float and binary codes
$PY -m benchmarks.training_speed --out benchmarks/results/          # training images/s per Keras backend
$PY -m benchmarks.cards
echo "Results in benchmarks/results/ and MODEL_CARDS.md"
