"""What `import zoo` sets up without importing anything heavy: quiet TensorFlow start-up, and the zoo's
Keras classes registered as soon as Keras is imported (so `keras.models.load_model` finds them).

Both hang on one mechanism, a hook that runs code around the first import of a module.
"""

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

VERBOSE_ENV = "AEZOO_VERBOSE"  # 1: let TensorFlow's start-up lines through

# TensorFlow's C++ start-up chatter on a CPU machine: not warnings about anything the user did.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|Could not find cuda drivers|"
    r"failed call to cuInit|This TensorFlow binary is optimized|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning|Number of eligible GPUs|Starting new session")


def verbose():
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _Hook(importlib.abc.MetaPathFinder):
    """Run `around(exec_module)` in place of the first import of module `name`.

    A probe such as importlib.util.find_spec(name) gets the wrapped spec too but does not run it; the hook
    stays armed until the module is actually executed."""

    def __init__(self, name, around):
        self.name, self.around = name, around
        self._asking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self._asking or fullname in sys.modules:
            return None
        self._asking = True  # the question below must be answered by the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._asking = False
        if spec is None or spec.loader is None:
            return spec
        loader, around, hook = spec.loader, self.around, self

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                if hook in sys.meta_path:
                    sys.meta_path.remove(hook)  # once
                around(lambda: loader.exec_module(module))

        spec.loader = _Loader()
        return spec


def on_first_import(name, around):
    if name not in sys.modules:
        sys.meta_path.insert(0, _Hook(name, around))


def _quiet_tensorflow(run_import):
    """Import TensorFlow with its C++ start-up lines on stderr filtered out; anything else it prints passes."""
    if verbose():
        return run_import()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO lines from later C++ logging either
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
        captured = tempfile.TemporaryFile()
    except OSError:  # no stderr to capture, or nowhere to put it: import as is
        return run_import()
    with captured:
        os.dup2(captured.fileno(), 2)
        try:
            run_import()
            # CUDA's start-up (the cuInit line) runs at first device use: do it here, inside the capture.
            sys.modules["tensorflow"].config.list_physical_devices()
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line.strip() and not STARTUP_NOISE.search(line)]
    if kept and sys.stderr is not None:
        print("\n".join(kept), file=sys.stderr)


def _register_models(run_import):
    run_import()
    importlib.import_module("zoo.models")


def install():
    on_first_import("tensorflow", _quiet_tensorflow)
    if "keras" in sys.modules:
        importlib.import_module("zoo.models")
    else:
        on_first_import("keras", _register_models)
