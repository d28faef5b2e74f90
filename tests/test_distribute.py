"""tf.distribute: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy on two local workers."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zoo import training
from zoo.errors import ZooError
from tests.helpers import write_idx_dir

ROOT = Path(__file__).resolve().parents[1]

MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    # Two logical CPU devices must be configured before TensorFlow starts.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from zoo import train
    preset, idx, out = sys.argv[1:4]
    losses = {}
    for name in ("default", "mirrored"):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "mirrored" else "default"
        run = train.train(preset, out=out + "/" + name, epochs=2, limit=256, batch_size=64, data_dir=idx,
                          verbose=0, strategy=strategy)
        config = json.load(open(run / "config.json"))
        rows = open(run / "history.csv").read().splitlines()
        header = rows[0].split(",")
        losses[name] = {"replicas": config["training"]["replicas"],
                        "loss": [float(r.split(",")[header.index("loss")]) for r in rows[1:]],
                        "test": json.load(open(run / "metrics.json"))["metrics"]["sq_error_per_image"]}
    print("RESULT " + json.dumps(losses))
""")

WORKER_SCRIPT = textwrap.dedent("""
    import sys
    from zoo import train
    run = train.train(sys.argv[1], out=sys.argv[2], epochs=2, limit=256, batch_size=64, data_dir=sys.argv[3],
                      verbose=0, strategy="multiworker")
    print("RESULT", run)
""")


def _env(tmp_path):
    env = dict(os.environ, ZOO_OFFLINE="1", TFDS_DATA_DIR=str(tmp_path / "tfds"), PYTHONPATH=str(ROOT))
    env.pop("ZOO_DATA_DIR", None)
    env.pop("TF_CONFIG", None)
    return env


def _result(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return lines[-1][len("RESULT "):]


@pytest.fixture
def idx_dir(tmp_path):
    return write_idx_dir(tmp_path / "idx", n_train=400, n_test=64)


@pytest.mark.slow
@pytest.mark.parametrize("preset,rel", [("deep_ae_mnist", 1e-3), ("vae_mnist", 1e-2)])
def test_mirrored_matches_single_device(preset, rel, idx_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, preset, str(idx_dir), str(tmp_path / "runs")],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(_result(proc.stdout))
    assert result["default"]["replicas"] == 1 and result["mirrored"]["replicas"] == 2
    for single, mirrored in zip(result["default"]["loss"], result["mirrored"]["loss"]):
        assert mirrored == pytest.approx(single, rel=rel)
    assert result["mirrored"]["test"] == pytest.approx(result["default"]["test"], rel=rel)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_two_local_workers(idx_dir, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": ["127.0.0.1:{}".format(p) for p in ports]}
    out = tmp_path / "run"
    procs = []
    for index in range(2):
        env = _env(tmp_path)
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, "deep_ae_mnist", str(out), str(idx_dir)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            outputs.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            proc.kill()
    for rc, stdout, stderr in outputs:
        assert rc == 0, stderr[-3000:]
    assert _result(outputs[0][1]) == str(out), "worker 0 is the chief and writes the run dir"
    assert _result(outputs[1][1]) == "None", "other workers write nothing shared"
    assert {"model.keras", "config.json", "history.csv", "metrics.json", "reconstructions.png"} <= {
        p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["strategy"] == "multiworker"
    assert config["training"]["replicas"] == 2 and config["training"]["global_batch_size"] == 64


def test_multiworker_without_tf_config_is_explained(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ZooError, match="TF_CONFIG"):
        training.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ZooError, match="not valid JSON"):
        training.make_strategy("multiworker")
