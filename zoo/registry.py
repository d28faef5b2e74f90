"""The model registry: one name per model family, one factory for all of them."""

import inspect

import keras

from zoo.errors import unknown_name

_MODELS = {}


def register(name, description):
    """Class decorator: make a model class buildable as `zoo.build(name)`."""

    def wrap(cls):
        if name in _MODELS:
            raise ValueError("model name {!r} is registered twice".format(name))
        cls.registry_name = name
        cls.description = description
        # Registered with Keras too, so `keras.models.load_model("model.keras")` finds the class.
        cls = keras.saving.register_keras_serializable(package="aezoo")(cls)
        _MODELS[name] = cls
        return cls

    return wrap


def list_models():
    """Sorted registry keys of every model family."""
    return sorted(_MODELS)


def describe_models():
    """{name: one-line description} for every registered model."""
    return {name: _MODELS[name].description for name in list_models()}


def get_class(name):
    try:
        return _MODELS[name]
    except KeyError:
        raise unknown_name("model", name, _MODELS) from None


# Wiring between a family and the base class, not arguments a user sets.
_INTERNAL_ARGUMENTS = {"self", "args", "kwargs", "encoder", "decoder", "corruption", "sampler"}


def constructor_arguments(name):
    """{argument: default} a model accepts, gathered along its class chain (mixins pass **kwargs on)."""
    arguments = {"name": None}
    for klass in reversed(inspect.getmro(get_class(name))):
        if "__init__" in vars(klass) and klass.__module__.startswith("zoo."):
            for param in inspect.signature(klass.__init__).parameters.values():
                if param.name not in _INTERNAL_ARGUMENTS:
                    arguments[param.name] = None if param.default is param.empty else param.default
    return arguments


def build(name, **overrides):
    """Build the registered model `name` with its defaults, updated by `overrides`."""
    cls = get_class(name)
    accepted = constructor_arguments(name)
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError("model {!r} has no argument(s) {}; it accepts: {}.".format(
            name, ", ".join(unknown), ", ".join(sorted(accepted))))
    return cls(**overrides)
