"""aezoo: a Keras 3 model zoo of autoencoders.

    >>> import zoo
    >>> zoo.list_models()
    >>> model = zoo.build("dae", noise="masking", noise_level=0.3)

`import zoo` itself is light: Keras (and TensorFlow) load on first use, so the command-line tools
that only list, look up or download answer at once. The model classes are registered with Keras as
soon as Keras is imported, so `keras.models.load_model("model.keras")` works after `import zoo`.
Without the training extra (a runtime-only install), what needs Keras raises zoo.errors.MissingExtraError,
one line that says what to install.
"""

from zoo import _startup

__all__ = ["build", "describe_models", "get_class", "list_models"]
__version__ = "0.1.0"

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
        return getattr(importlib.import_module("zoo.registry"), name)
    try:  # a submodule used as an attribute, e.g. zoo.registry after a plain `import zoo`
        return importlib.import_module("zoo." + name)
    except ModuleNotFoundError as exc:
        if exc.name != "zoo." + name:
            raise  # the submodule exists but needs something missing: say that, not "no attribute"
        raise AttributeError("module 'zoo' has no attribute {!r}".format(name)) from None
