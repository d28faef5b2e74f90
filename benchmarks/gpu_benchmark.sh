#!/usr/bin/env bash
# The whole GPU throughput table in one run on a fresh GPU machine (no TensorFlow, no internet): onnxruntime's CUDA
# provider (IOBinding, CUDA graphs, the fp16 files where an export has them; device-resident and copy-inclusive,
# pageable and pinned) against Keras on JAX (XLA) running the same weights, then the issue's GPU targets.
#
# 1. Where the exported runs are (once):
#      bash benchmarks/gpu_benchmark.sh --prepare [EXPORT_OR_RUN_DIR ...]
#    copies each model's encoder/decoder ONNX files (every precision it has) with its config.json and Keras weights
#    (model.weights.h5, for the JAX baseline) into benchmarks/gpu_inputs/models/<preset>/. Default: the runs/*_fashion_mnist exports
#    whose preset the bundled release (releases/<version>/, tracked, so it travels anyway) does not hold.
#    WHEELS=1 also downloads keras 3.15.1, namex and optree for Python ${WHEEL_PYTHON:-3.12} into
#    benchmarks/gpu_inputs/wheels/. ORT_GPU_WHEEL=path/to/onnxruntime_gpu-*.whl splits that wheel into PIECE_MB (default 6) MB pieces: the tracked tree (60 MB with the bundled release) leaves about 7 MB of the 64 MiB a call carries
#    (benchmarks/gpu_inputs/pieces/, with its sha256) for machines whose carry cannot take it whole.
# 2. On the GPU machine, from the repository root (carry benchmarks/gpu_inputs, and .whl if you have one):
#      bash benchmarks/gpu_benchmark.sh --stage      # only when the wheel comes in pieces: once per call that
#                                                   # carries some, moves them to $PIECES_DIR (/tmp/aezoo-pieces)
#      bash benchmarks/gpu_benchmark.sh [MODEL ...]  # default: the bundled release + benchmarks/gpu_inputs/models/*
#    installs what is missing (never from the index unless INDEX=1): .whl/*.whl and benchmarks/gpu_inputs/wheels/*.whl,
#    and onnxruntime-gpu from .whl/, or joined from pieces (sha256-checked), into a private --target folder so that
#    the CPU package `onnxruntime` cannot shadow it; puts pip's nvidia-* CUDA libraries on LD_LIBRARY_PATH; then
#    runs benchmarks.throughput --device cuda and benchmarks.targets. INSTALL=0 never installs. JAX=0 skips the JAX
#    baseline. Settings: BATCH_SIZES (1,64,1024,4096), PARTS (encoder,decoder), PRECISIONS (fp32,fp16), TIMEOUT_S.
#    Writes OUT_DIR (default $OUT when set, else benchmarks/results)/throughput_cuda.{json,csv,md},
#    throughput_cuda_<preset>.png and throughput_cuda_run.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
BATCH_SIZES=${BATCH_SIZES:-1,64,1024,4096}
PARTS=${PARTS:-encoder,decoder}
PRECISIONS=${PRECISIONS:-fp32,fp16}
INPUTS=benchmarks/gpu_inputs
PIECES_DIR=${PIECES_DIR:-/tmp/aezoo-pieces}
SITE=${AEZOO_SITE:-/tmp/aezoo-site}
START=$SECONDS

release_dir() {
    "$PY" -c 'from zoo import weights; print(weights.bundled_release() or "")'
}

if [[ "${1:-}" == "--prepare" ]]; then
    shift
    mkdir -p "$INPUTS/models"
    # The copies are build inputs, not sources: keep them out of git.
    printf '*\n!.gitignore\n' > "$INPUTS/.gitignore"
    find "$INPUTS/models" -mindepth 1 -maxdepth 1 -type d -exec rm -rf '{}' +  # no stale models from an earlier run
    release=$(release_dir)
    if [[ $# -eq 0 ]]; then
        for run in runs/*_fashion_mnist; do
            [[ -n "$release" && -d "$release/$(basename "$run")" ]] || set -- "$@" "$run"
        done
    fi
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
        dest=$INPUTS/models/$name
        mkdir -p "$dest"
        for part in ${PARTS//,/ }; do cp "$dir/$part".*onnx "$dest/" 2>/dev/null || cp "$dir/$part.onnx" "$dest/"; done
        # The Keras weights for the JAX baseline, without model.keras's optimizer state (a third of its size).
        run=$dir
        [[ -f "$run/config.json" ]] || run=$dir/..
        if [[ -f "$run/config.json" && -f "$run/model.keras" ]]; then
            cp "$run/config.json" "$dest/"
            KERAS_BACKEND=${KERAS_BACKEND:-jax} "$PY" -m benchmarks.keras_parts weights "$run" "$dest" 2>/dev/null
        else
            echo "note: $src has no config.json and model.keras beside it: no JAX baseline for it" >&2
        fi
        n=$((n + 1))
    done
    if [[ "${WHEELS:-0}" == 1 ]]; then
        mkdir -p "$INPUTS/wheels"
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
            --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
            -d "$INPUTS/wheels" "keras==3.15.1" namex optree
    fi
    if [[ -n "${ORT_GPU_WHEEL:-}" ]]; then
        mkdir -p "$INPUTS/pieces"
        rm -f "$INPUTS"/pieces/*
        wheel=$(basename "$ORT_GPU_WHEEL")
        split -b "${PIECE_MB:-6}m" -d "$ORT_GPU_WHEEL" "$INPUTS/pieces/$wheel.part-"
        (cd "$(dirname "$ORT_GPU_WHEEL")" && sha256sum "$wheel") > "$INPUTS/pieces/$wheel.sha256"
        echo "split $wheel into $(ls "$INPUTS"/pieces/*.part-* | wc -l) pieces in $INPUTS/pieces/"
    fi
    echo "prepared $n models in $INPUTS/models ($(du -sh "$INPUTS" | cut -f1) in $INPUTS; the bundled release" \
         "${release:+($release) }travels with the repository)"
    exit 0
fi

if [[ "${1:-}" == "--stage" ]]; then
    mkdir -p "$PIECES_DIR"
    found=0
    for piece in "$INPUTS"/pieces/* .whl/*.part-* .whl/*.sha256; do
        [[ -f "$piece" ]] || continue
        mv "$piece" "$PIECES_DIR/"
        found=$((found + 1))
    done
    echo "staged $found files; $PIECES_DIR holds: $(ls "$PIECES_DIR" | tr '\n' ' ')"
    exit 0
fi

OUT_DIR=${OUT_DIR:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/throughput_cuda_run.log") 2>&1

has_cuda_provider() {
    "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
        2>/dev/null
}

join_pieces() {  # the onnxruntime-gpu wheel joined from its pieces and checked; prints its path
    local dir sums wheel
    for dir in "$PIECES_DIR" "$INPUTS/pieces" .whl; do
        for sums in "$dir"/onnxruntime_gpu-*.whl.sha256; do
            [[ -f "$sums" ]] || continue
            sums=$(cd "$(dirname "$sums")" && pwd)/$(basename "$sums")
            wheel=$(basename "$sums" .sha256)
            mkdir -p /tmp/aezoo-wheel
            cat "$dir/$wheel".part-* > "/tmp/aezoo-wheel/$wheel"
            if ! (cd /tmp/aezoo-wheel && sha256sum -c --quiet "$sums" >&2); then
                echo "error: the pieces of $wheel in $dir do not match its sha256; carry them again" >&2
                return 1
            fi
            echo "/tmp/aezoo-wheel/$wheel"
            return 0
        done
    done
    return 1
}

echo "== machine"
"$PY" --version
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "nvidia-smi failed" >&2

echo "== install"
if [[ "${INSTALL:-1}" != 0 ]]; then
    wheels=()
    for w in .whl/*.whl "$INPUTS"/wheels/*.whl; do [[ -f "$w" ]] && wheels+=("$w"); done
    if ! has_cuda_provider && ! compgen -G ".whl/onnxruntime_gpu-*.whl" > /dev/null; then
        if joined=$(join_pieces); then
            wheels+=("$joined")
        elif [[ "${INDEX:-0}" == 1 ]]; then
            "$PY" -m pip install -q --no-cache-dir --timeout 20 --retries 1 --target "$SITE" \
                "onnxruntime-gpu[cuda,cudnn]" || { echo "error: could not install onnxruntime-gpu" >&2; exit 3; }
        fi
    fi
    if [[ ${#wheels[@]} -gt 0 ]]; then
        echo "installing into $SITE: ${wheels[*]}"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
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
    echo "error: onnxruntime has no CUDAExecutionProvider here; carry the onnxruntime-gpu wheel in .whl/ (or in" \
         "pieces, see --prepare), or set INDEX=1 where there is internet" >&2
    exit 3
fi
JAX_FLAG=(--jax)
if [[ "${JAX:-1}" == 0 ]]; then
    JAX_FLAG=(--no-jax)
elif ! KERAS_BACKEND=jax "$PY" -c 'import jax, keras; print("keras", keras.__version__, "| jax", jax.__version__,
        jax.default_backend(), jax.devices()); assert jax.default_backend() == "gpu", "JAX has no GPU backend"'; then
    echo "error: Keras on JAX (GPU) is not importable: carry keras 3.15.1, namex and optree wheels (--prepare with" \
         "WHEELS=1, or .whl/), or run with JAX=0" >&2
    exit 3
fi

echo "== models"
MODELS=("$@")
if [[ ${#MODELS[@]} -eq 0 ]]; then
    release=$(release_dir)
    for d in ${release:+"$release"/*/} "$INPUTS"/models/*/; do
        [[ -f "$d/encoder.onnx" ]] && MODELS+=("${d%/}")
    done
fi
if [[ ${#MODELS[@]} -eq 0 ]]; then
    echo "error: no models: no bundled release and nothing in $INPUTS/models/ (bash benchmarks/gpu_benchmark.sh" \
         "--prepare where the exported runs are)" >&2
    exit 2
fi
printf '%s\n' "${MODELS[@]}"

echo "== benchmark (no TensorFlow in this process; Keras on JAX in a worker)"
# Bounded per point (0.05 s warm-up, at most 0.1 s timed, for each way of running) so that about ten models with
# two parts, four batch sizes and two precisions finish in about five minutes.
timeout "${TIMEOUT_S:-480}" "$PY" -m benchmarks.throughput "${MODELS[@]}" --device cuda --no-tf "${JAX_FLAG[@]}" \
    --precision "$PRECISIONS" --batch-sizes "$BATCH_SIZES" --parts "$PARTS" --repeats 100 --max-seconds 0.1 \
    --warmup-seconds 0.05 --out "$OUT_DIR" 2>&1 | grep -v "No registered plugin EP device"
echo "== targets"
"$PY" -m benchmarks.targets "$OUT_DIR/throughput_cuda.json"
echo "done in $((SECONDS - START)) s; results in $OUT_DIR/throughput_cuda.*"
