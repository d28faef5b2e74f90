"""TensorFlow's side of the throughput benchmark: the exported SavedModel's endpoints, timed like onnxruntime.

benchmarks.throughput starts this as a worker process (`python -m benchmarks.tf_baseline --threads N --device
cpu`) and asks it for one point at a time, right after timing onnxruntime on the same point, so that both see
the same machine load. Its own process, so that TensorFlow's thread pools are sized before TensorFlow starts
and the onnxruntime process never loads TensorFlow. Protocol: one JSON request per line on stdin, one JSON
reply per line on stdout; everything else goes to stderr.
"""

import argparse
import json
import os
import sys

from benchmarks.throughput import latency_stats, make_input, time_calls


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
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
                "call": "the SavedModel endpoint (tf.function) on a tensor already on the device"}

    def measure(self, request):
        tf = self.tf
        path = request["savedmodel"]
        if path not in self.loaded:
            self.loaded[path] = tf.saved_model.load(path)
        module = self.loaded[path]
        endpoint = getattr(module, request["endpoint"], None) or module.signatures[request["endpoint"]]
        batch_size = int(request["batch_size"])
        x = make_input(request["input"], request["item_shape"], batch_size, request["seed"])
        with tf.device(self.device):
            tensor = tf.identity(tf.constant(x))
        sync = self.sync

        def call():
            outputs = endpoint(tensor)
            if sync is not None:
                sync()
            return outputs

        times = time_calls(call, request["repeats"], request["max_seconds"], request["warmup_seconds"])
        return latency_stats(times, batch_size)


def serve(threads, device):
    """Answer requests from stdin until it closes; replies go to the real stdout, all else to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # a stray print (TensorFlow's, say) must not corrupt the replies
    try:
        baseline = Baseline(threads, device)
        replies.write(json.dumps({"ok": True, "info": baseline.info()}) + "\n")
    except Exception as exc:
        replies.write(json.dumps({"ok": False, "error": "{}: {}".format(type(exc).__name__, exc)}) + "\n")
        replies.flush()
        return 1
    replies.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = {"ok": True, "stats": baseline.measure(json.loads(line))}
        except Exception as exc:
            reply = {"ok": False, "error": "{}: {}".format(type(exc).__name__, exc)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tf_baseline",
                                     description="TensorFlow timing worker for benchmarks.throughput.")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    return serve(args.threads, args.device)


if __name__ == "__main__":
    sys.exit(main())
