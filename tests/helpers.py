"""Shared test helpers: tiny model sizes chosen from what a constructor accepts."""

import zoo

TINY_SHAPE = (8, 8, 1)
TINY_LATENT = 4


def tiny_overrides(name, **extra):
    """Small sizes for any registered model, so a new family is covered with no new test code."""
    accepted = zoo.registry.constructor_arguments(name)
    wanted = {"input_shape": TINY_SHAPE, "latent_dim": TINY_LATENT, "hidden_units": (16, 8), "filters": (4, 8)}
    overrides = {k: v for k, v in wanted.items() if k in accepted}
    overrides.update(extra)
    return overrides


def tiny_model(name, **extra):
    return zoo.build(name, **tiny_overrides(name, **extra))
