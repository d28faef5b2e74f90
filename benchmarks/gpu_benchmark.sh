#!/usr/bin/env bash
# The onnxruntime CUDA throughput benchmark, end to end, on a fresh GPU machine: no TensorFlow, no internet needed.
#
# On the machine with the exported runs (once): copy their ONNX files into benchmarks/gpu_inputs/<preset>/
#   bash benchmarks/gpu_benchmark.sh --prepare [EXPORT_OR_RUN_DIR ...]     (default: runs/*_fashion_mnist)
# On the GPU machine, from the repository root (Python 3.10+ with numpy, onnx, matplotlib if wanted):
#   bash benchmarks/gpu_benchmark.sh [INPUT_DIR [OUT_DIR]]    (defaults: benchmarks/gpu_inputs, benchmarks/results)
# It installs onnxruntime-gpu only if the CUDA provider is missing: from .whl/*.whl when that folder exists
# (into a private --target folder, so the CPU package `onnxruntime` cannot shadow it), else from the index.
# INSTALL=0 never installs. BATCH_SIZES=1,8,64,256,1024,4096 (default). PARTS=encoder,decoder (default all three,
# for both steps): the ten fashion_mnist presets' files come to about 64 MiB with autoencoder.onnx.
# Writes OUT_DIR/throughput_cuda.{json,csv,md} and throughput_cuda_<preset>.png.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
BATCH_SIZES=${BATCH_SIZES:-1,8,64,256,1024,4096}
PARTS=${PARTS:-encoder,decoder,autoencoder}
INPUTS_DEFAULT=benchmarks/gpu_inputs
START=$SECONDS

if [[ "${1:-}" == "--prepare" ]]; then
    shift
    [[ $# -gt 0 ]] || set -- runs/*_fashion_mnist
    mkdir -p "$INPUTS_DEFAULT"
    find "$INPUTS_DEFAULT" -mindepth 1 -maxdepth 1 -type d -exec rm -rf '{}' +  # no stale models from an earlier run
    # The copies are build inputs, not sources: keep them out of git.
    printf '*\n!.gitignore\n' > "$INPUTS_DEFAULT/.gitignore"
    n=0
    for src in "$@"; do
        dir=$src
        [[ -f "$dir/encoder.onnx" ]] || dir=$src/export
        if [[ ! -f "$dir/encoder.onnx" ]]; then
            echo "skip $src: no encoder.onnx in it or in its export/" >&2
            continue
        fi
        name=$(basename "$src")
        [[ "$name" != export ]] || name=$(basename "$(dirname "$src")")
        mkdir -p "$INPUTS_DEFAULT/$name"
        for part in ${PARTS//,/ }; do cp "$dir/$part.onnx" "$INPUTS_DEFAULT/$name/"; done
        n=$((n + 1))
    done
    [[ $n -gt 0 ]] || { echo "error: no exported model among: $*" >&2; exit 2; }
    echo "prepared $n models in $INPUTS_DEFAULT ($(du -sh "$INPUTS_DEFAULT" | cut -f1))"
    exit 0
fi

IN=${1:-$INPUTS_DEFAULT}
OUT_DIR=${2:-benchmarks/results}

has_cuda_provider() {
    "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
        2>/dev/null
}

echo "== machine"
"$PY" --version
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "nvidia-smi failed" >&2

echo "== onnxruntime-gpu"
if [[ "${INSTALL:-1}" != 0 ]] && ! has_cuda_provider; then
    SITE=${AEZOO_SITE:-/tmp/aezoo-site}
    if compgen -G ".whl/*.whl" > /dev/null; then
        echo "installing .whl/*.whl into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    else
        echo "no .whl/ folder: installing onnxruntime-gpu[cuda,cudnn] from the package index into $SITE"
        "$PY" -m pip install -q --no-cache-dir --timeout 20 --retries 1 --target "$SITE" "onnxruntime-gpu[cuda,cudnn]" \
            || { echo "error: could not install onnxruntime-gpu; carry its wheel (and any dependency the machine" \
                      "lacks) in .whl/" >&2; exit 3; }
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# CUDA and cuDNN from pip's nvidia-* packages (nvidia/cu13/lib, nvidia/cudnn/lib, ...): onnxruntime installed
# elsewhere (--target) does not look beside itself for them, so name them to the dynamic loader.
NVIDIA_LIBS=$("$PY" -c 'import glob, importlib.util, os
spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
print(":".join(d for r in roots for d in sorted(glob.glob(os.path.join(r, "*", "lib")))))' 2>/dev/null || true)
if [[ -n "$NVIDIA_LIBS" ]]; then
    export LD_LIBRARY_PATH="$NVIDIA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "CUDA libraries from: ${NVIDIA_LIBS//:/ }"
fi
"$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, "from", o.__file__); print("providers", o.get_available_providers())'
if ! has_cuda_provider; then
    echo "error: onnxruntime has no CUDAExecutionProvider here; install onnxruntime-gpu (pip install .[gpu])" >&2
    exit 3
fi

echo "== models"
DIRS=()
while IFS= read -r d; do DIRS+=("$d"); done < <(
    find "$IN" -mindepth 1 -maxdepth 1 -type d -exec test -f '{}/encoder.onnx' ';' -print | sort)
if [[ ${#DIRS[@]} -eq 0 ]]; then
    echo "error: no exported models in $IN/ (each a folder with encoder.onnx, decoder.onnx, autoencoder.onnx);" \
         "make them with \`bash benchmarks/gpu_benchmark.sh --prepare\` where the exported runs are" >&2
    exit 2
fi
printf '%s\n' "${DIRS[@]}"

echo "== benchmark (no TensorFlow in this process)"
# Bounded per point (about 0.1 s warm-up, 0.25 s timed, twice: bound and copy-inclusive) so that ten models
# with three parts each finish in about three minutes.
timeout "${TIMEOUT_S:-420}" "$PY" -m benchmarks.throughput "${DIRS[@]}" --device cuda --no-tf \
    --batch-sizes "$BATCH_SIZES" --parts "$PARTS" --repeats 100 --max-seconds 0.25 --warmup-seconds 0.1 --out "$OUT_DIR"
echo "done in $((SECONDS - START)) s; results in $OUT_DIR/throughput_cuda.*"
