"""The base install is the TensorFlow-free runtime: it declares only what the runtime imports, `import zoo`
works without the training extra, and what needs Keras says in one line what to install. The slow tests
install the repository into a fresh virtual environment, as `pip install -e .` does on a user's machine."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from zoo.errors import TRAINING_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
PRESET = "deep_ae_fashion_mnist"
INSTALL_HINT = 'pip install "aezoo[train]"'
# What a runtime-only user imports (the ONNX runtime, the weights download, `import zoo`, the console command);
# the check follows the zoo's own imports from there.
RUNTIME_MODULES = ("export.runtime", "zoo", "zoo.weights", "zoo.fileio", "zoo.schema", "zoo.errors", "zoo.cli")
# Import name -> the base dependency that provides it.
BASE_IMPORTS = {"numpy": "numpy", "onnxruntime": "onnxruntime", "PIL": "pillow"}
PIP = ("-m", "pip", "install", "--quiet", "--disable-pip-version-check")
MISSING_EXTRA = re.compile(r"error: this command needs (keras|tensorflow), which is not installed .*"
                           + re.escape(INSTALL_HINT) + r".*\n")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def distribution(requirement):
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def module_file(name):
    path = ROOT.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(name):
    """The modules `name` imports when it is imported (not those its functions import on use), as dotted names."""
    found, todo = set(), list(ast.parse(module_file(name).read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
            # `from zoo import fileio` imports the submodule zoo.fileio
            found.update(node.module + "." + alias.name for alias in node.names
                         if module_file(node.module + "." + alias.name).is_file())
        todo.extend(ast.iter_child_nodes(node))
    return found


def test_base_dependencies_are_what_the_runtime_imports():
    project = pyproject()
    assert {distribution(r) for r in project["dependencies"]} == set(BASE_IMPORTS.values())
    extras = project["optional-dependencies"]
    assert {"tensorflow", "keras", "tensorflow-datasets", "onnx", "tf2onnx", "faiss-cpu"} <= {
        distribution(r) for r in extras["train"]}
    assert "aezoo[train]" in extras["test"] and "runtime" in extras
    seen, todo, outside = set(), list(RUNTIME_MODULES), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports_of(name):
            top = imported.split(".")[0]
            if top in ("zoo", "export"):
                if module_file(imported).is_file():
                    todo.append(imported)
            elif top not in sys.stdlib_module_names:
                outside.setdefault(top, set()).add(name)
    assert set(outside) <= set(BASE_IMPORTS), "importing the runtime needs packages the base install lacks: {}".format(
        {k: sorted(v) for k, v in outside.items() if k not in BASE_IMPORTS})
    assert not set(outside) & TRAINING_PACKAGES


# Import the zoo with the training packages unimportable, as in an install without the `train` extra.
BLOCKED = textwrap.dedent("""
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"tensorflow", "keras", "tensorflow_datasets", "tf2onnx", "jax", "torch"}:
                raise ModuleNotFoundError("No module named {!r} (blocked by the test)".format(name), name=name)

    sys.meta_path.insert(0, Blocker())
""")

# Run in a Python without the training stack (blocked or really absent): prints what each entry point raised.
ENTRY_POINTS = textwrap.dedent("""
    import json, sys
    import zoo, zoo.weights
    from export.runtime import Runtime
    from zoo.errors import MissingExtraError, ZooError

    result = {"light": not any(m in sys.modules for m in ("tensorflow", "keras"))}
    calls = {"build": lambda: zoo.build("ae"), "list_models": lambda: zoo.list_models(),
             "describe_models": lambda: zoo.describe_models(), "get_class": lambda: zoo.get_class("ae")}
    for name, call in calls.items():
        try:
            call()
            result[name] = None
        except MissingExtraError as exc:
            result[name] = {"message": str(exc), "zoo_error": isinstance(exc, ZooError),
                            "import_error": isinstance(exc, ImportError)}
    print(json.dumps(result))
""")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in (
        "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "ZOO_WEIGHTS_URL", "ZOO_DATA_DIR", "AEZOO_VERBOSE")}
    env.update(extra)
    return env


def check_entry_points(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result.pop("light") is True
    for name, error in result.items():
        assert error is not None, "zoo.{} did not refuse".format(name)
        assert error["zoo_error"] and error["import_error"], name
        message = error["message"]
        assert "\n" not in message and message.startswith("zoo.{} needs ".format(name)), message
        assert INSTALL_HINT in message, message


def check_train_refuses(proc, out):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert MISSING_EXTRA.fullmatch(proc.stderr), proc.stderr
    assert not out.exists()


def test_zoo_without_training_extra_says_what_to_install(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCKED + ENTRY_POINTS], cwd=ROOT, capture_output=True, text=True,
                          env=clean_env(PYTHONPATH=str(ROOT)), timeout=120)
    check_entry_points(proc)


def test_python_m_zoo_train_without_training_extra_is_one_line(tmp_path):
    # python -m zoo.train ARGS, after the blocker: argv as -m would give it
    run_module = "import runpy; sys.argv.pop(0); runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED + run_module, "zoo.train", "ae_mnist", "--epochs", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, env=clean_env(PYTHONPATH=str(ROOT), ZOO_OFFLINE="1"), timeout=120)
    check_train_refuses(proc, out)


# --- a fresh virtual environment with the base install only -----------------------------------------------------

@pytest.fixture(scope="module")
def base_venv(tmp_path_factory):
    """(python, env, work dir) of a new venv holding `pip install -e <repo>`: no extras, no system site-packages."""
    work = tmp_path_factory.mktemp("install")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = clean_env(ZOO_CACHE_DIR=str(work / "cache"))
    proc = subprocess.run([str(python), *PIP, "-e", str(ROOT)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return python, env, work


@pytest.mark.slow
def test_base_install_has_no_training_stack(base_venv):
    python, env, work = base_venv
    probe = "import importlib.util as u, json, sys; print(json.dumps([n for n in sys.argv[1:] if u.find_spec(n)]))"
    proc = subprocess.run([str(python), "-c", probe, *sorted(TRAINING_PACKAGES)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == []
    # `import zoo` comes from the install, not from the current folder.
    where = subprocess.run([str(python), "-c", "import zoo; print(zoo.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.returncode == 0 and Path(where.stdout.strip()).resolve() == ROOT / "zoo" / "__init__.py"
    check_entry_points(subprocess.run([str(python), "-c", ENTRY_POINTS], cwd=work, env=env, capture_output=True,
                                      text=True, timeout=120))
    out = work / "run"
    train = [str(python), "-m", "zoo.train", "ae_mnist", "--epochs", "1", "--out", str(out)]
    check_train_refuses(subprocess.run(train, cwd=work, env=env, capture_output=True, text=True, timeout=120), out)
    aezoo = subprocess.run([str(python.parent / "aezoo"), "--version"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=120)
    assert aezoo.returncode == 0 and aezoo.stdout.startswith("aezoo "), aezoo.stderr[-2000:]


def bundled_release():
    """The repository's bundled release folder that holds PRESET, or None."""
    manifests = sorted((ROOT / "releases").glob("*/{}/manifest.json".format(PRESET)))
    return manifests[-1].parent.parent if manifests else None


@pytest.mark.slow
def test_base_install_runs_a_bundled_preset(base_venv):
    python, env, work = base_venv
    if bundled_release() is None:
        pytest.skip("releases/ holds no bundle for {} yet".format(PRESET))
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from export.runtime import Runtime

        rt = Runtime.from_preset(sys.argv[1])
        images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
        codes = rt.encode(images)
        print(json.dumps({"shape": list(codes.shape), "finite": bool(np.isfinite(codes).all()),
                          "tensorflow": "tensorflow" in sys.modules or "keras" in sys.modules}))
    """)
    proc = subprocess.run([str(python), "-c", script, PRESET], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"shape": [4, 30], "finite": True, "tensorflow": False}
    listing = subprocess.run([str(python), "-m", "zoo.weights", "list"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert re.search(r"^{}\b".format(PRESET), listing.stdout, re.M), listing.stdout
