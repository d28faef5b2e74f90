"""Training on any Keras 3 backend: the model suite under JAX, JAX training with TensorFlow not importable,
a JAX-trained model.keras exported by TensorFlow with parity, and data parallelism on JAX."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from export import exporter
from tests.helpers import write_idx_dir

ROOT = Path(__file__).resolve().parents[1]
jax = pytest.importorskip("jax", reason="the JAX backend tests need jax (pip install 'jax[cpu]', in the test extra)")

# Run `python -m zoo.train ARGS` under JAX with TensorFlow, tfds and tf2onnx unimportable.
TRAIN_WITHOUT_TF = textwrap.dedent("""
    import runpy, sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"tensorflow", "tensorflow_datasets", "tf2onnx"}:
                raise ModuleNotFoundError("No module named {!r} (blocked by the test)".format(name), name=name)

    sys.meta_path.insert(0, Blocker())
    sys.argv = ["zoo.train"] + sys.argv[1:]
    runpy.run_module("zoo.train", run_name="__main__")
""")


def jax_env(tmp_path, **extra):
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT), ZOO_OFFLINE="1",
               TFDS_DATA_DIR=str(tmp_path / "tfds"), **extra)
    env.pop("ZOO_DATA_DIR", None)
    return env


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dir(tmp_path_factory.mktemp("backends") / "idx", n_train=300, n_test=64)


def test_model_suite_and_training_tests_pass_under_jax(tmp_path):
    tests = ["tests/test_models.py", "tests/test_families.py", "tests/test_train.py",
             "tests/test_faults.py::test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one",
             "tests/test_faults.py::test_unreadable_checkpoint_is_reported_and_the_one_before_is_used"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not realdata",
                           *tests], cwd=ROOT, env=jax_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1] and "failed" not in proc.stdout.splitlines()[-1]


def test_jax_training_needs_no_tensorflow_and_exports_with_parity(idx_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_TF, "vae_mnist", "--epochs", "2", "--limit", "256",
                           "--data-dir", str(idx_dir), "--out", str(out)], cwd=ROOT, env=jax_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["backend"] == "jax" and config["versions"]["backend"] == "jax"
    assert "jax" in config["versions"]
    assert json.loads((out / "metrics.json").read_text())["metrics"]["sq_error_per_image"] > 0
    # This process runs TensorFlow: the JAX-trained file exports and passes the parity check.
    result = exporter.export_run(out, data_dir=idx_dir, verbose=0)
    assert result.parity["passed"]


MIRRORED = textwrap.dedent("""
    import json, sys
    import jax
    from zoo import train
    from zoo.errors import ZooError
    preset, idx, out = sys.argv[1:4]
    result = {"devices": jax.device_count()}
    for name in ("default", "mirrored"):
        run = train.train(preset, out=out + "/" + name, epochs=2, limit=256, batch_size=64, data_dir=idx, verbose=0,
                          strategy=name)
        config = json.load(open(run / "config.json"))
        result[name] = {"replicas": config["training"]["replicas"],
                        "test": json.load(open(run / "metrics.json"))["metrics"]["sq_error_per_image"]}
    # 251 images: the last batch of 59 cannot split over 2 devices; it is cut to 58.
    run = train.train(preset, out=out + "/odd", epochs=1, limit=251, batch_size=64, data_dir=idx, verbose=0,
                      strategy="mirrored")
    result["odd"] = json.load(open(run / "metrics.json"))["metrics"]["sq_error_per_image"]
    try:  # a global batch that does not split over the devices is refused before any work
        train.train(preset, out=out + "/bad", epochs=1, limit=256, batch_size=63, data_dir=idx, verbose=0,
                    strategy="mirrored")
    except ZooError as exc:
        result["refused"] = str(exc)
    print("RESULT " + json.dumps(result))
""")


def test_mirrored_on_jax_is_data_parallel_over_the_devices(idx_dir, tmp_path):
    env = jax_env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", MIRRORED, "deep_ae_mnist", str(idx_dir), str(tmp_path / "runs")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["devices"] == 2
    assert result["default"]["replicas"] == 1 and result["mirrored"]["replicas"] == 2
    # The same global batches, split over two devices: the same training up to float rounding.
    assert result["mirrored"]["test"] == pytest.approx(result["default"]["test"], rel=1e-3)
    assert result["odd"] > 0
    assert "--batch-size 63 does not split evenly over the 2 devices" in result["refused"]


MULTIWORKER = textwrap.dedent("""
    import sys
    from zoo import train
    sys.exit(train.main(sys.argv[1:]))
""")


def test_multiworker_on_jax_two_local_processes(idx_dir, tmp_path):
    """Two processes joined by jax.distributed (gloo on CPU), each feeding half of every global batch: the
    same training as one process, and only process 0 writes the run dir."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["deep_ae_mnist", "--epochs", "2", "--limit", "256", "--batch-size", "64", "--data-dir", str(idx_dir),
            "--quiet"]
    procs = []
    for rank in range(2):
        env = jax_env(tmp_path, KERAS_DISTRIBUTION_JOB_ADDRESSES="127.0.0.1:{}".format(port),
                      KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-c", MULTIWORKER, *args, "--out", str(tmp_path / "multi"),
                                       "--strategy", "multiworker"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    single = subprocess.run([sys.executable, "-c", MULTIWORKER, *args, "--out", str(tmp_path / "single")], cwd=ROOT,
                            env=jax_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    config = json.loads((tmp_path / "multi" / "config.json").read_text())
    assert config["training"]["replicas"] == 2 and config["training"]["strategy"] == "multiworker"
    errors = [json.loads((tmp_path / run / "metrics.json").read_text())["metrics"]["sq_error_per_image"]
              for run in ("multi", "single")]
    assert errors[0] == pytest.approx(errors[1], rel=1e-4)
