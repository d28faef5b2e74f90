"""TensorFlow's side of the CPU throughput benchmark, timed like onnxruntime: the exported SavedModel's endpoint
(float32), or the Keras model rebuilt from the run or bundle, in float32 or under Keras' mixed_bfloat16 policy
(bfloat16 matrix work through oneDNN, which uses AVX-512 BF16 or AMX where the CPU has them).

benchmarks.measure starts this as a worker process (`python -m benchmarks.tf_baseline --threads N --device cpu`,
KERAS_BACKEND=tensorflow) and asks it for one point at a time, right after timing onnxruntime on the same point,
so that both see the same machine load; its own process, so that TensorFlow's thread pools are sized before
TensorFlow starts and the onnxruntime process never loads TensorFlow. Protocol: benchmarks.workers.
"""

import argparse
import json
import os
import sys

from benchmarks import workers
from benchmarks.timing import latency_stats, make_input, time_calls

PRECISIONS = {"fp32": None, "bf16": "mixed_bfloat16"}  # precision -> Keras dtype policy


class Baseline:
    def __init__(self, threads, device="cpu"):
        import tensorflow as tf

        # Must come before TensorFlow creates its runtime, i.e. before the first op.
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
        if device == "cuda" and not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("TensorFlow sees no GPU for the CUDA baseline; run with --no-tf.")
        self.tf = tf
        self.device = "/GPU:0" if device == "cuda" else "/CPU:0"
        # GPU calls return before the work is done: wait for it inside the timed call.
        self.sync = tf.test.experimental.sync_devices if device == "cuda" else None
        self.loaded = {}

    def info(self):
        tf = self.tf
        return {"tensorflow": tf.__version__, "device": self.device,
                "keras_backend": os.environ.get("KERAS_BACKEND"),
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
                "call": "the SavedModel endpoint (tf.function) on a tensor already on the device; where there is no "
                        "SavedModel, or for bf16, the Keras model's part in a tf.function",
                "bf16": "Keras mixed_bfloat16 policy (bfloat16 compute, float32 variables), outputs cast to float32"}

    def _function(self, request):
        tf = self.tf
        if request.get("savedmodel") and request.get("precision", "fp32") == "fp32":
            path = request["savedmodel"]
            if path not in self.loaded:
                self.loaded[path] = tf.saved_model.load(path)
            module = self.loaded[path]
            return getattr(module, request["endpoint"], None) or module.signatures[request["endpoint"]], "savedmodel"
        from benchmarks import keras_parts

        precision = request.get("precision", "fp32")
        key = (json.dumps(request["keras"], sort_keys=True), request["part"], precision)
        if key not in self.loaded:
            model = keras_parts.load_model(request["keras"], PRECISIONS[precision])
            part = keras_parts.part_function(model, request["part"])
            self.loaded[key] = tf.function(lambda x: [tf.cast(o, tf.float32) for o in part(x)])
        return self.loaded[key], "keras"

    def handle(self, request):
        tf = self.tf
        function, source = self._function(request)
        batch_size = int(request["batch_size"])
        x = make_input(request["input"], request["item_shape"], batch_size, request["seed"])
        with tf.device(self.device):
            tensor = tf.identity(tf.constant(x))
        sync = self.sync

        def call():
            outputs = function(tensor)
            if sync is not None:
                sync()
            return outputs

        times = time_calls(call, request["repeats"], request["max_seconds"], request["warmup_seconds"])
        return dict(latency_stats(times, batch_size), source=source)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tf_baseline",
                                     description="TensorFlow timing worker for benchmarks.throughput.")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    return workers.serve(lambda: Baseline(args.threads, args.device))


if __name__ == "__main__":
    sys.exit(main())
