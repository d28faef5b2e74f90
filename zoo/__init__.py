"""aezoo: a Keras 3 model zoo of autoencoders.

    >>> import zoo
    >>> zoo.list_models()
    >>> model = zoo.build("dae", noise="masking", noise_level=0.3)        # a model family, untrained
    >>> model = zoo.from_preset("deep_ae_fashion_mnist")                  # a preset, with released weights

Words: a *model* (family) is what `zoo.build` makes (`deep_ae`); a *preset* is a training recipe on a
dataset (`deep_ae_fashion_mnist`, zoo.presets); a *release* holds the trained presets' weights
(releases/<version>/, zoo.weights).

`import zoo` itself is light: Keras (and TensorFlow) load on first use, so the command-line tools
that only list, look up or download answer at once. The model classes are registered with Keras as
soon as Keras is imported, so `keras.models.load_model("model.keras")` works after `import zoo`.
Without the training extra (a runtime-only install), what needs Keras raises zoo.errors.MissingExtraError,
one line that says what to install.
"""

from zoo import _startup

__all__ = ["build", "describe_models", "from_preset", "get_class", "list_models"]
__version__ = "0.2.0"

_startup.install()


def __getattr__(name):
    import importlib

    if name in __all__:
        try:
            importlib.import_module("zoo.models")  # registers every family
        except ModuleNotFoundError as exc:
            from zoo.errors import missing_extra

            missing = missing_extra(exc, "zoo." + name)
            if missing is None:
                raise
            raise missing from None
        module = "zoo.pretrained" if name == "from_preset" else "zoo.registry"
        return getattr(importlib.import_module(module), name)
    try:  # a submodule used as an attribute, e.g. zoo.registry after a plain `import zoo`
        return importlib.import_module("zoo." + name)
    except ModuleNotFoundError as exc:
        if exc.name != "zoo." + name:
            raise  # the submodule exists but needs something missing: say that, not "no attribute"
        raise AttributeError("module 'zoo' has no attribute {!r}".format(name)) from None
