"""Keras on JAX (XLA), the GPU baseline of the throughput benchmark: the same architecture and weights as the ONNX
files, rebuilt from the run dir or release bundle, each part's Keras call compiled with jax.jit and timed like
onnxruntime, device-resident and copy-inclusive.

benchmarks.measure starts this as a worker process (`python -m benchmarks.jax_baseline --device cuda`, with
KERAS_BACKEND=jax and XLA_PYTHON_CLIENT_PREALLOCATE=false, so that JAX leaves GPU memory to onnxruntime) and asks
for one point at a time; it never imports TensorFlow (onnxruntime-gpu and JAX target CUDA 13, TensorFlow's GPU
wheels CUDA 12). Protocol: benchmarks.workers.
"""

import argparse
import json
import os
import sys

import numpy as np

from benchmarks import keras_parts, workers
from benchmarks.timing import latency_stats, make_input, time_calls

CALL = ("jax.jit of the part's Keras call (weights passed in through keras.StatelessScope), input already on the "
        "device, jax.block_until_ready; copy: jax.device_put of the numpy input, the call, np.asarray of each output")


class Baseline:
    def __init__(self, device="cuda"):
        if os.environ.get("KERAS_BACKEND") != "jax":
            raise RuntimeError("run with KERAS_BACKEND=jax (got {!r})".format(os.environ.get("KERAS_BACKEND")))
        import jax
        import keras

        self.jax, self.keras, self.device = jax, keras, device
        self.models, self.functions = {}, {}

    def info(self):
        jax = self.jax
        return {"jax": jax.__version__, "keras": self.keras.__version__, "keras_backend": self.keras.backend.backend(),
                "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                "tensorflow_imported": "tensorflow" in sys.modules, "call": CALL}

    def _function(self, source, part):
        jax, keras = self.jax, self.keras
        model_key = json.dumps(source, sort_keys=True)
        if (model_key, part) not in self.functions:
            if model_key not in self.models:
                self.models[model_key] = keras_parts.load_model(source)
            model = self.models[model_key]
            call = keras_parts.part_function(model, part)
            variables = keras_parts.variables_of(model, part)

            def pure(values, x):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return call(x)

            values = [jax.device_put(v.value) for v in variables]
            self.functions[model_key, part] = (jax.jit(pure), values)
        return self.functions[model_key, part]

    def handle(self, request):
        jax = self.jax
        op = request.get("op", "measure")
        if op == "info":
            return self.info()
        function, values = self._function(request["keras"], request["part"])
        batch_size = int(request["batch_size"])
        x = make_input(request["input"], request["item_shape"], batch_size, request["seed"])
        if op == "outputs":  # for the parity check against onnxruntime
            outputs = [np.asarray(o) for o in function(values, jax.device_put(x))]
            np.savez(request["path"], *outputs)
            return {"path": request["path"], "outputs": len(outputs)}
        device_x = jax.block_until_ready(jax.device_put(x))

        def bound():
            jax.block_until_ready(function(values, device_x))

        def copy():
            return [np.asarray(o) for o in function(values, jax.device_put(x))]

        timing = (request["repeats"], request["max_seconds"], request["warmup_seconds"])
        result = {"bound": latency_stats(time_calls(bound, *timing), batch_size)}
        if request.get("copy", True):
            result["copy"] = latency_stats(time_calls(copy, *timing), batch_size)
        return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jax_baseline",
                                     description="Keras-on-JAX timing worker for benchmarks.throughput.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    args = parser.parse_args(argv)
    return workers.serve(lambda: Baseline(args.device))


if __name__ == "__main__":
    sys.exit(main())
