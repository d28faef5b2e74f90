#!/usr/bin/env bash
# The two forms of a transposed convolution in the exported graphs (export.optimize.CONV_TRANSPOSE_FORMS), timed
# in one session on one machine: the released conv_ae_fashion_mnist weights (zoo.pretrained.write_run_dir) exported
# once as "phases" (one Conv per output phase, the default) and once as "slice" (ConvTranspose, cropped), each with
# its int8 file, each timed by benchmarks.throughput against TensorFlow on the same weights. Then a table of the two.
#
#   bash benchmarks/conv_transpose_forms.sh                  # -> benchmarks/results/conv_transpose_forms/
#   PRESET=conv_ae_fashion_mnist OUT=/tmp/forms bash benchmarks/conv_transpose_forms.sh
#
# About 10 minutes on 2 cores. Time it on an idle machine: the two runs are compared with each other.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PRESET=${PRESET:-conv_ae_fashion_mnist}
OUT=${OUT:-benchmarks/results/conv_transpose_forms}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m zoo.weights fetch "$PRESET" --run-dir "$work/run" --quiet > /dev/null
for form in phases slice; do
    "$PY" -m export "$work/run" --formats savedmodel,onnx --precision fp32,int8 --conv-transpose "$form" \
        --out "$work/$form" --quiet
    "$PY" -m benchmarks.throughput "$work/$form" --precision fp32,int8 --max-seconds 0.5 --no-plot \
        --out "$OUT/$form" --quiet
done
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {form: json.loads((out / form / "throughput.json").read_text()) for form in ("phases", "slice")}
rows = {form: {(r["part"], r["precision"], r["batch_size"]): r for r in run["rows"]} for form, run in runs.items()}
lines = ["# Transposed convolutions: phases against slice", "",
         "Made by `bash benchmarks/conv_transpose_forms.sh`: the same weights ({}) exported in both forms, timed "
         "one after the other by `benchmarks.throughput` on {} ({} usable CPUs, MatMul peak {:.0f} / {:.0f} GFLOP/s "
         "in the two runs). images/s; TF is TensorFlow float32 on the same weights in the same run.".format(
             runs["phases"]["models"][0]["name"], runs["phases"]["machine"]["cpu_model"],
             runs["phases"]["machine"]["usable_cpus"], runs["phases"]["peak"]["gflops_per_s"],
             runs["slice"]["peak"]["gflops_per_s"]), "",
         "| part | precision | batch | phases | phases/TF | slice | slice/TF | phases/slice |",
         "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for key, p in rows["phases"].items():
    s = rows["slice"].get(key)
    if s is None or key[0] == "encoder":  # the encoders have no transposed convolution: the same graph in both
        continue
    lines.append("| {} | {} | {} | {:,.0f} | {:.2f} | {:,.0f} | {:.2f} | {:.2f} |".format(
        *key, p["images_per_s"], p["ort_tf_ratio"] or float("nan"), s["images_per_s"],
        s["ort_tf_ratio"] or float("nan"), p["images_per_s"] / s["images_per_s"]))
(out / "README.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
