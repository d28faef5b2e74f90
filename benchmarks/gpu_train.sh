#!/usr/bin/env bash
# Train presets with Keras on JAX on a fresh GPU machine that has Python and JAX (CUDA) but no TensorFlow and
# no internet, and bring the run dirs back in pieces small enough to carry. Export, quality and the cards then
# run on the CPU machine as usual.
#
# 1. Where there is internet and the data (once):
#      bash benchmarks/gpu_train.sh --prepare
#    puts into benchmarks/gpu_inputs/train/: wheels/ (keras, namex, optree and this project, built for
#    Python ${WHEEL_PYTHON:-3.12}) and fashion-mnist/ (the four IDX files, from Debian's dataset-fashion-mnist).
# 2. On the GPU machine, from the repository root:
#      bash benchmarks/gpu_train.sh [PRESET ...]          (default: every fashion_mnist preset)
#    installs the wheels with --no-deps into a private folder, trains each preset at its recipe with
#    KERAS_BACKEND=jax, strips the optimizer state from each model.keras (export needs the weights only; the
#    ten presets are then about 35 MB), and writes OUT_DIR/gpu_runs.tar.gz.part-NN (15 MB pieces),
#    OUT_DIR/gpu_runs.list (the run dirs) and OUT_DIR/gpu_runs.sha256. OUT_DIR is $OUT when set (the device
#    tool's output folder), else gpu_runs/. The runs take the layout of benchmarks/reproduce.sh, which
#    benchmarks.quality reads:
#      SEEDS="1 2"   each preset again with these seeds, into seeds/<preset>/seed<N>/
#      LATENT20=1    each preset with --set latent_dim=20 too, into latent20/<preset>/ (and latent20/seeds/...)
#      SET="KEY=VALUE ..." with EXP=NAME: an experiment, every run with these --set overrides, under exp/NAME/
#    EPOCHS=N and LIMIT=N shorten every run (smoke tests); INSTALL=0 skips the install.
# 3. Back on the CPU machine:
#      bash benchmarks/gpu_train.sh --unpack DIR_WITH_PIECES [RUNS_DIR]     (default RUNS_DIR: runs)
#    checks the sha256 and that none of the listed run dirs exists yet, then extracts them; then
#    `python -m export runs/<preset>`, `python -m benchmarks.quality <preset>` and so on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
INPUTS=benchmarks/gpu_inputs/train
START=$SECONDS

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$INPUTS/wheels" "$INPUTS/fashion-mnist"
    rm -f "$INPUTS"/wheels/*.whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
        --platform manylinux2014_x86_64 -d "$INPUTS/wheels" "keras==3.15.1" namex optree
    "$PY" -m pip wheel -q --no-deps -w "$INPUTS/wheels" .
    src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    [[ -f "$src/train-images-idx3-ubyte.gz" ]] || { echo "error: no Fashion-MNIST IDX files in $src;" \
        "apt-get install -y dataset-fashion-mnist or set FASHION_MNIST_DIR" >&2; exit 2; }
    cp "$src"/*-ubyte.gz "$INPUTS/fashion-mnist/"
    echo "prepared $INPUTS ($(du -sh "$INPUTS" | cut -f1)): $(ls "$INPUTS/wheels" | tr '\n' ' ')"
    exit 0
fi

if [[ "${1:-}" == "--unpack" ]]; then
    pieces=${2:?usage: gpu_train.sh --unpack DIR_WITH_PIECES [RUNS_DIR]}
    runs=${3:-runs}
    (cd "$pieces" && sha256sum --quiet -c gpu_runs.sha256) || { echo "error: the pieces in $pieces do not" \
        "match gpu_runs.sha256; bring them back again" >&2; exit 2; }
    mapfile -t listed < "$pieces/gpu_runs.list"
    for dir in "${listed[@]}"; do
        if [[ -e "$runs/$dir" ]]; then
            echo "error: $runs/$dir exists; move it away first (nothing was extracted)" >&2
            exit 2
        fi
    done
    mkdir -p "$runs"
    cat "$pieces"/gpu_runs.tar.gz.part-* | tar -xzf - -C "$runs"
    echo "extracted into $runs/: ${listed[*]}"
    exit 0
fi

if [[ -n "${SET:-}" && -z "${EXP:-}" ]]; then
    echo "error: SET needs EXP=NAME, the folder its runs go to (exp/NAME/), so that they are not taken for the" \
        "presets' own runs" >&2
    exit 2
fi
OUT_DIR=${OUT:-gpu_runs}
WORK=${WORK:-/tmp/aezoo-gpu-runs}
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1

echo "== machine"
"$PY" --version
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "(no nvidia-smi)"

echo "== install"
if [[ "${INSTALL:-1}" != 0 ]]; then
    compgen -G "$INPUTS/wheels/*.whl" > /dev/null || { echo "error: no wheels in $INPUTS/wheels; run" \
        "\`bash benchmarks/gpu_train.sh --prepare\` where there is internet, and carry that folder" >&2; exit 3; }
    SITE=${AEZOO_SITE:-/tmp/aezoo-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$INPUTS"/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c 'import jax, keras, zoo; print("keras", keras.__version__, "on", keras.backend.backend(), "| jax",
      jax.__version__, jax.devices())'

DATA=${DATA_DIR:-$INPUTS/fashion-mnist}
PRESETS=("$@")
if [[ ${#PRESETS[@]} -eq 0 ]]; then
    mapfile -t PRESETS < <("$PY" -c 'from zoo.presets import PRESETS
print("\n".join(sorted(n for n, p in PRESETS.items() if p.dataset == "fashion_mnist")))')
fi
EXTRA=()
[[ -z "${EPOCHS:-}" ]] || EXTRA+=(--epochs "$EPOCHS")
[[ -z "${LIMIT:-}" ]] || EXTRA+=(--limit "$LIMIT")
PREFIX=""
for kv in ${SET:-}; do EXTRA+=(--set "$kv"); done
[[ -z "${EXP:-}" ]] || PREFIX="exp/$EXP/"
# One entry per run: its dir (relative to the runs folder), the preset, then its own arguments.
RUN_SPECS=()
SIZES=(preset)
[[ "${LATENT20:-0}" == 0 ]] || SIZES+=(20)
for preset in "${PRESETS[@]}"; do
    for size in "${SIZES[@]}"; do
        base=$PREFIX; size_args=""
        if [[ "$size" == 20 ]]; then base="${PREFIX}latent20/"; size_args="--set latent_dim=20"; fi
        RUN_SPECS+=("$base$preset $preset $size_args")
        for seed in ${SEEDS:-}; do
            RUN_SPECS+=("${base}seeds/$preset/seed$seed $preset $size_args --seed $seed")
        done
    done
done

echo "== train ${#RUN_SPECS[@]} runs"
mkdir -p "$WORK"
RUN_DIRS=()
for spec in "${RUN_SPECS[@]}"; do
    read -r dir preset args <<< "$spec"
    t0=$SECONDS
    # --overwrite: WORK is this script's own scratch folder.
    # shellcheck disable=SC2086
    "$PY" -m zoo.train "$preset" --data-dir "$DATA" --out "$WORK/$dir" --overwrite $args "${EXTRA[@]}"
    echo "$dir: $((SECONDS - t0)) s"
    RUN_DIRS+=("$dir")
done

echo "== pack"
"$PY" - "$WORK" "${RUN_DIRS[@]}" <<'EOF'
import sys
from pathlib import Path

import keras

import zoo  # noqa: F401  (registers the families)
from zoo import fileio

work, run_dirs = Path(sys.argv[1]), sys.argv[2:]
for run_dir in run_dirs:
    path = work / run_dir / "model.keras"
    model = keras.models.load_model(path)
    bare = model.__class__.from_config(model.get_config())  # same architecture, not compiled: no optimizer state
    bare.set_weights(model.get_weights())
    with fileio.atomic_path(path) as tmp:
        bare.save(tmp)
    print("{}: model.keras {:.1f} MB without optimizer state".format(run_dir, path.stat().st_size / 1e6))
EOF
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/gpu_runs.tar.gz.part-* "$OUT_DIR"/gpu_runs.sha256 "$OUT_DIR"/gpu_runs.list
tar -czf - -C "$WORK" --exclude=.backup --exclude=.lock "${RUN_DIRS[@]}" | split -b 15m -d - "$OUT_DIR/gpu_runs.tar.gz.part-"
printf '%s\n' "${RUN_DIRS[@]}" > "$OUT_DIR/gpu_runs.list"
(cd "$OUT_DIR" && sha256sum gpu_runs.tar.gz.part-* gpu_runs.list > gpu_runs.sha256)
echo "done in $((SECONDS - START)) s: $(ls "$OUT_DIR" | tr '\n' ' ')($(du -sh "$OUT_DIR" | cut -f1))"
echo "on the CPU machine: bash benchmarks/gpu_train.sh --unpack DIR_WITH_THESE_FILES"
