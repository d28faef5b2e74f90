"""benchmarks/gpu_train.sh end to end on the CPU (Keras on JAX, as on a GPU machine): seeds, latent-20 runs and
experiments in reproduce.sh's layout, packed into pieces and unpacked here into a runs folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_idx_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_train.sh"
PRESET = "linear_ae_fashion_mnist"

pytest.importorskip("jax")


def _env(tmp_path, **extra):
    env = dict(os.environ, PYTHON=sys.executable, INSTALL="0", EPOCHS="1", LIMIT="64",
               DATA_DIR=str(write_idx_dir(tmp_path / "idx", n_train=96, n_test=32)),
               WORK=str(tmp_path / "work"), OUT=str(tmp_path / "out"), JAX_PLATFORMS="cpu")
    env.update(extra)
    return env


def _bash(*args, env):
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_seeds_and_latent20_runs_come_back_in_the_quality_layout(tmp_path):
    env = _env(tmp_path, SEEDS="1", LATENT20="1")
    done = _bash(PRESET, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    want = [PRESET, "seeds/{}/seed1".format(PRESET), "latent20/{}".format(PRESET),
            "latent20/seeds/{}/seed1".format(PRESET)]
    out = tmp_path / "out"
    assert (out / "gpu_runs.list").read_text().split() == want
    assert "gpu_runs.list" in (out / "gpu_runs.sha256").read_text()
    runs = tmp_path / "runs"
    unpacked = _bash("--unpack", str(out), str(runs), env=env)
    assert unpacked.returncode == 0, unpacked.stderr
    for run_dir in want:
        config = json.loads((runs / run_dir / "config.json").read_text())
        assert (runs / run_dir / "metrics.json").is_file() and not (runs / run_dir / ".backup").exists()
        assert config["training"]["seed"] == (1 if "seed1" in run_dir else 1337)
        assert config["latent_dim"] == (20 if run_dir.startswith("latent20") else 30)
        assert config["versions"]["backend"] == "jax"
    # A second unpack would overwrite runs made here: refused, nothing touched.
    stamp = (runs / PRESET / "metrics.json").stat().st_mtime_ns
    again = _bash("--unpack", str(out), str(runs), env=env)
    assert again.returncode == 2 and "runs/{} exists; move it away first".format(PRESET) in again.stderr
    assert (runs / PRESET / "metrics.json").stat().st_mtime_ns == stamp


def test_an_experiment_needs_a_name_and_pieces_are_checked(tmp_path):
    env = _env(tmp_path, SET="latent_dim=8")
    refused = _bash(PRESET, env=env)
    assert refused.returncode == 2 and "SET needs EXP=NAME" in refused.stderr
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    (pieces / "gpu_runs.tar.gz.part-00").write_bytes(b"not a tarball")
    (pieces / "gpu_runs.list").write_text(PRESET + "\n")
    (pieces / "gpu_runs.sha256").write_text("0" * 64 + "  gpu_runs.tar.gz.part-00\n")
    broken = _bash("--unpack", str(pieces), str(tmp_path / "runs"), env=env)
    assert broken.returncode == 2 and "do not match gpu_runs.sha256" in broken.stderr
    assert not (tmp_path / "runs").exists()
