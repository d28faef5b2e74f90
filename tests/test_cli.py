"""The command line: light commands run with TensorFlow blocked from import, no TensorFlow start-up lines,
one log line per epoch when stdout is not a terminal, and `aezoo X` is `python -m X`."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from export import release
from tests.helpers import export_tiny_run, write_idx_dir
import zoo
from zoo import cli

ROOT = Path(__file__).resolve().parents[1]
STARTUP_NOISE = re.compile(r"All log messages before absl|oneDNN custom operations|Could not find cuda drivers|"
                           r"This TensorFlow binary is optimized|cuInit")

# Run a command the way `aezoo` does, after making TensorFlow, Keras, tfds and tf2onnx unimportable.
BLOCKED = textwrap.dedent("""
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"tensorflow", "keras", "tensorflow_datasets", "tf2onnx", "jax", "torch"}:
                raise ModuleNotFoundError("No module named {!r} (blocked by the test)".format(name), name=name)

    sys.meta_path.insert(0, Blocker())
    from zoo import cli
    sys.exit(cli.main(sys.argv[1:]))
""")


def env(tmp_path):
    result = dict(os.environ, PYTHONPATH=str(ROOT), ZOO_OFFLINE="1", TFDS_DATA_DIR=str(tmp_path / "tfds"))
    result.pop("ZOO_DATA_DIR", None)
    result.pop("AEZOO_VERBOSE", None)
    return result


def run_blocked(args, tmp_path):
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], cwd=ROOT, env=env(tmp_path), capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny_run(tmp_path_factory.mktemp("cli"), "ae")


def test_light_commands_work_with_tensorflow_blocked(exported, tmp_path):
    idx_dir = write_idx_dir(tmp_path / "idx", n_train=40, n_test=10)
    dist = tmp_path / "dist"
    release.release([exported], dist, verbose=0)
    cases = [
        (["--version"], "aezoo " + zoo.__version__),
        (["train", "--list"], "dae_fashion_mnist"),
        (["train", "--help"], "examples:"),
        (["data", "mnist", "--data-dir", str(idx_dir)], "mnist: 40 train images + 10 test images"),
        (["weights", "list", "--source", str(dist)], "ae_mnist  ae on mnist"),
        (["weights", "fetch", "ae_mnist", "--source", str(dist), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
         "encoder: "),
        (["export", "--help"], "--formats"),
        # Releasing maps the Keras weights into the ONNX files, so it needs Keras; its help does not.
        (["release", "--help"], "--name"),
        (["runtime", "info", str(exported / "export")], '"latent_dim"'),
        (["bench", "--help"], "--batch-sizes"),
        (["quality", "--help"], "examples:"),
        (["cards", "--help"], "examples:"),
    ]
    for args, expected in cases:
        proc = run_blocked(args, tmp_path)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert expected in proc.stdout, (args, proc.stdout[-2000:])
        assert not STARTUP_NOISE.search(proc.stdout + proc.stderr), args


def test_a_command_that_needs_tensorflow_says_so_in_one_line(tmp_path):
    idx_dir = write_idx_dir(tmp_path / "idx", n_train=40, n_test=10)
    proc = run_blocked(["train", "ae_mnist", "--epochs", "1", "--data-dir", str(idx_dir), "--out", str(tmp_path / "r")],
                       tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert re.fullmatch(r"error: this command needs (keras|tensorflow), which is not installed .*\n", proc.stderr)
    assert not (tmp_path / "r").exists()


def test_training_log_has_one_line_per_epoch_and_no_startup_lines(tmp_path):
    idx_dir = write_idx_dir(tmp_path / "idx", n_train=300, n_test=20)
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "train", "ae_mnist", "--epochs", "3", "--limit", "128", "--data-dir",
         str(idx_dir), "--out", str(tmp_path / "run")],
        cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(" ")[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r" - \d+\.\d+s - loss [\d.]+ - reconstruction_loss [\d.]+ - val_loss", e) for e in epochs)
    assert "\r" not in proc.stdout and max(len(line) for line in lines) < 400
    assert not STARTUP_NOISE.search(proc.stdout + proc.stderr), proc.stderr[-2000:]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_aezoo_command_and_python_m_print_the_same_help(command, tmp_path):
    module = cli.COMMANDS[command][0]
    forms = ([sys.executable, "-m", "zoo.cli", command, "--help"], [sys.executable, "-m", module, "--help"])
    texts = [subprocess.run(f, cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=60) for f in forms]
    assert texts[0].returncode == texts[1].returncode == 0
    if command == "runtime":  # the standalone runtime names itself after how it was called
        assert texts[0].stdout.replace("aezoo runtime", "python -m export.runtime") == texts[1].stdout
    else:
        assert texts[0].stdout == texts[1].stdout
    assert "examples:" in texts[0].stdout


def test_aezoo_lists_its_commands_and_is_installed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "--help"], cwd=ROOT, env=env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    for name, (module, _, _) in cli.COMMANDS.items():
        assert re.search(r"^  {} +.*\(python -m {}\)$".format(name, re.escape(module)), proc.stdout, re.M), name
    script = Path(sys.executable).parent / "aezoo"
    if script.exists():  # installed with pip install -e .: [project.scripts]
        out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60).stdout
        assert out.startswith("aezoo ")


def test_verbose_lets_tensorflow_startup_lines_through(tmp_path):
    code = "import os; os.environ['AEZOO_VERBOSE'] = '1'; import zoo, tensorflow"
    quiet = subprocess.run([sys.executable, "-c", code.replace("os.environ['AEZOO_VERBOSE'] = '1'; ", "")],
                           cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=120)
    loud = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert quiet.returncode == loud.returncode == 0
    assert not STARTUP_NOISE.search(quiet.stderr)
    # Real warnings still pass: only the known start-up lines are filtered. (Whether TensorFlow prints any
    # start-up line depends on the machine; where it does, --verbose shows it.)
    assert len(loud.stderr) >= len(quiet.stderr)


def test_import_zoo_is_light_and_keras_finds_the_classes(tmp_path, exported):
    code = textwrap.dedent("""
        import importlib.util, sys, json
        import zoo
        light = not any(m in sys.modules for m in ("tensorflow", "keras"))
        assert importlib.util.find_spec("keras") is not None  # a probe must not disarm the registration
        import keras
        model = keras.models.load_model(sys.argv[1])
        print(json.dumps({"light": light, "family": model.registry_name}))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(exported / "model.keras")], cwd=ROOT, env=env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"light": True, "family": "ae"}
