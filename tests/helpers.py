"""Shared test helpers: tiny model sizes chosen from what a constructor accepts."""

import numpy as np

import zoo
from zoo import idx

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


N_TRAIN, N_TEST = 200, 50


def write_idx_dir(directory, n_train=N_TRAIN, n_test=N_TEST, shape=(28, 28)):
    """Random images whose first pixel is the index, so order can be checked after the pipeline."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n, suffix in (("train", n_train, ".gz"), ("test", n_test, "")):
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_name, label_name = (v[0] for v in idx.idx_file_names(split))
        idx.write_idx(directory / (image_name + suffix), images)
        idx.write_idx(directory / (label_name + suffix), labels)
    return directory
