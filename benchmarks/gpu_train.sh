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
#    ten presets are then about 35 MB), and writes OUT_DIR/gpu_runs.tar.gz.part-NN (15 MB pieces) and
#    OUT_DIR/gpu_runs.sha256. OUT_DIR is $OUT when set (the device tool's output folder), else gpu_runs/.
#    EPOCHS=N and LIMIT=N shorten every preset (smoke tests); INSTALL=0 skips the install.
# 3. Back on the CPU machine:
#      bash benchmarks/gpu_train.sh --unpack DIR_WITH_PIECES [RUNS_DIR]     (default RUNS_DIR: runs)
#    checks the sha256, and extracts the run dirs; then `python -m export runs/<preset>` and so on.
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
    (cd "$pieces" && sha256sum -c gpu_runs.sha256) || { echo "error: the pieces in $pieces do not match" \
        "gpu_runs.sha256; bring them back again" >&2; exit 2; }
    mkdir -p "$runs"
    for name in $(cat "$pieces"/gpu_runs.tar.gz.part-* | tar -tzf - | cut -d/ -f1 | sort -u); do
        if [[ -e "$runs/$name" ]]; then
            echo "error: $runs/$name exists; move it away first (nothing was extracted)" >&2
            exit 2
        fi
    done
    cat "$pieces"/gpu_runs.tar.gz.part-* | tar -xzf - -C "$runs"
    echo "extracted into $runs/: $(cat "$pieces"/gpu_runs.tar.gz.part-* | tar -tzf - | cut -d/ -f1 | sort -u | tr '\n' ' ')"
    exit 0
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

echo "== train ${PRESETS[*]}"
mkdir -p "$WORK"
for preset in "${PRESETS[@]}"; do
    t0=$SECONDS
    # --overwrite: WORK is this script's own scratch folder.
    "$PY" -m zoo.train "$preset" --data-dir "$DATA" --out "$WORK/$preset" --overwrite "${EXTRA[@]}"
    echo "$preset: $((SECONDS - t0)) s"
done

echo "== pack"
"$PY" - "$WORK" "${PRESETS[@]}" <<'EOF'
import sys
from pathlib import Path

import keras

import zoo  # noqa: F401  (registers the families)
from zoo import fileio

work, presets = Path(sys.argv[1]), sys.argv[2:]
for preset in presets:
    path = work / preset / "model.keras"
    model = keras.models.load_model(path)
    bare = model.__class__.from_config(model.get_config())  # same architecture, not compiled: no optimizer state
    bare.set_weights(model.get_weights())
    with fileio.atomic_path(path) as tmp:
        bare.save(tmp)
    print("{}: model.keras {:.1f} MB without optimizer state".format(preset, path.stat().st_size / 1e6))
EOF
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/gpu_runs.tar.gz.part-* "$OUT_DIR"/gpu_runs.sha256
tar -czf - -C "$WORK" --exclude=.backup --exclude=.lock "${PRESETS[@]}" | split -b 15m -d - "$OUT_DIR/gpu_runs.tar.gz.part-"
(cd "$OUT_DIR" && sha256sum gpu_runs.tar.gz.part-* > gpu_runs.sha256)
echo "done in $((SECONDS - START)) s: $(ls "$OUT_DIR" | tr '\n' ' ')($(du -sh "$OUT_DIR" | cut -f1))"
echo "on the CPU machine: bash benchmarks/gpu_train.sh --unpack DIR_WITH_THESE_FILES"
