#!/usr/bin/env bash
# Reproduce every committed result for the fashion_mnist presets with one command:
# train each preset with its defaults on the real Fashion-MNIST, export with the parity check, build the bundled
# release (releases/v<version>/), evaluate quality, benchmark onnxruntime against TensorFlow on this CPU, measure similar-image search
# and training speed per backend, regenerate MODEL_CARDS.md.
# For the quality benchmark's spread over seeds and its common code size it also trains, for the dense presets,
# each recipe again with seeds 1 and 2 (runs/seeds/<preset>/seed<N>/) and with --set latent_dim=20
# (runs/latent20/<preset>/, with the same extra seeds in runs/latent20/seeds/<preset>/seed<N>/): about 1 h 45 more
# on 2 cores (20 s to 7 min a run). The conv presets' extra runs take about 1 h each here: CONV_EXTRA=1 adds them.
#   bash benchmarks/reproduce.sh                 (about 7 hours on 2 cores, most of it the three conv presets)
#   PRESETS="deep_ae_fashion_mnist conv_ae_fashion_mnist" bash benchmarks/reproduce.sh
#   SEEDS="1 2 3" LATENT20_SEEDS="" CONV_EXTRA=1 bash benchmarks/reproduce.sh
# Trained runs that already have metrics.json are kept (delete runs/<preset>/ to retrain one).
# Run the throughput step on an otherwise idle machine: its figures are timings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
PRESETS=${PRESETS:-$($PY -c 'from zoo.presets import list_presets; print(" ".join(p for p in list_presets() if p.endswith("_fashion_mnist")))')}
SEEDS=${SEEDS-1 2}                     # extra seeds beside the preset's own (1337)
LATENT20_SEEDS=${LATENT20_SEEDS-$SEEDS}  # extra seeds of the latent_dim=20 runs
CONV_EXTRA=${CONV_EXTRA:-0}            # 1: the conv presets' extra seeds and latent-20 runs too

train_once() {  # train_once DIR PRESET [ARGS...]: train into DIR unless it holds a finished run
  local dir=$1; shift
  [ -f "$dir/metrics.json" ] || $PY -m zoo.train "$@" --out "$dir" --quiet
}

$PY -m zoo.data fashion_mnist   # says how to get the data if it is missing (apt-get install -y dataset-fashion-mnist)
for preset in $PRESETS; do
  if [ ! -f "runs/$preset/metrics.json" ]; then
    $PY -m zoo.train "$preset" --quiet
  fi
  # int8 files too: the throughput step times them beside fp32 (they are kept only within tolerance).
  [ -f "runs/$preset/export/parity.json" ] || $PY -m export "runs/$preset" --precision fp32,int8 --quiet
done
# The extra runs the quality benchmark reads (benchmarks/quality.py names the layout).
for preset in $PRESETS; do
  case $preset in conv_*) [ "$CONV_EXTRA" = 1 ] || continue ;; esac
  for seed in $SEEDS; do
    train_once "runs/seeds/$preset/seed$seed" "$preset" --seed "$seed"
  done
  train_once "runs/latent20/$preset" "$preset" --set latent_dim=20
  for seed in $LATENT20_SEEDS; do
    train_once "runs/latent20/seeds/$preset/seed$seed" "$preset" --set latent_dim=20 --seed "$seed"
  done
done
RUN_DIRS=$(for p in $PRESETS; do printf 'runs/%s ' "$p"; done)
# The release aezoo ships (zoo.weights and zoo.from_preset read it by default): releases/v<major.minor>/. It holds the
# presets it held before (RELEASED), which keeps it under 60 MB: the repository travels to GPU machines in 64 MiB.
RELEASE=releases/v$($PY -c 'import zoo; print(".".join(zoo.__version__.split(".")[:2]))')
RELEASED=${RELEASED:-$($PY -c 'from zoo import weights; print(" ".join(weights.list_released()))' 2>/dev/null || true)}
RELEASE_DIRS=$(for p in ${RELEASED:-$PRESETS}; do [ -d "runs/$p" ] && printf 'runs/%s ' "$p"; done)
# shellcheck disable=SC2086
$PY -m export.release $RELEASE_DIRS --out "$RELEASE" --precision fp32,int8 --quiet
du -sh "$RELEASE"   # keep it under 60 MB
# Every preset's run, its seed runs and its latent-20 runs: about 25 s a run dir and 4 min for the pixel baselines
# (kNN and probe) on 2 cores.
# shellcheck disable=SC2086
$PY -m benchmarks.quality $PRESETS
# shellcheck disable=SC2086
$PY -m benchmarks.throughput $RUN_DIRS --precision fp32,int8 --max-seconds 0.5 --rounds 3 --tune --out benchmarks/results/
$PY -m benchmarks.search --runs runs --out benchmarks/results/     # similar-image search, float and binary codes
$PY -m benchmarks.training_speed --out benchmarks/results/          # training images/s per Keras backend
$PY -m benchmarks.cards
echo "Results in benchmarks/results/ and MODEL_CARDS.md"
