"""Shared test helpers: tiny model sizes chosen from what a constructor accepts."""

import numpy as np

import zoo
from zoo import idx, schema

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


# --- run dirs for export tests (appended by the export engineer) ------------------------------------------


def write_run_dir(run_dir, family, data_dir, dataset="mnist", epochs=1, seed=0, **extra):
    """A run dir shaped like zoo.train's (model.keras, config.json, metrics.json, history.csv) for a
    tiny 28x28 model of `family`, trained briefly on the IDX files in `data_dir`."""
    import keras

    from zoo import data

    keras.utils.set_random_seed(seed)
    train = data.normalize(data.load_arrays(dataset, "train", data_dir=data_dir).images)
    test = data.normalize(data.load_arrays(dataset, "test", data_dir=data_dir).images)
    model = tiny_model(family, input_shape=data.get_info(dataset).image_shape, **extra)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(train, batch_size=32, epochs=epochs, verbose=0, shuffle=False).history
    recon = model.reconstruct(test)
    mse = float(np.mean(np.square(test - recon)))
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / schema.MODEL)
    schema.RunConfig(
        preset="{}_{}".format(family, dataset), model=family, model_config=model.get_config(), dataset=dataset,
        data_source="idx:{}".format(data_dir), data_dir=str(data_dir),
        training={"epochs": epochs, "batch_size": 32, "learning_rate": 1e-3, "seed": seed, "limit": None,
                  "optimizer": "adam", "schedule": "constant"},
        input_shape=list(model.image_shape), latent_dim=model.latent_dim,
        versions={"tensorflow": "test", "keras": keras.__version__, "aezoo": zoo.__version__, "python": "test"},
    ).save(run_dir)
    schema.RunMetrics(split="test", num_images=len(test),
                      metrics={"mse_per_pixel": mse, "psnr_db": float(10 * np.log10(1 / mse))},
                      units={"mse_per_pixel": "mean of (x - x_hat)^2", "psnr_db": "dB"}).save(run_dir)
    (run_dir / schema.HISTORY).write_text("epoch,loss\n" + "".join(
        "{},{}\n".format(i, v) for i, v in enumerate(history["loss"])))
    return run_dir


def export_tiny_run(base, family, **extra):
    """Train a tiny 28x28 `family` model on random IDX images under `base`, export it; returns the run dir."""
    from export import exporter

    data_dir = base / "idx"
    if not data_dir.is_dir():
        write_idx_dir(data_dir, n_train=128, n_test=64)
    run = write_run_dir(base / family, family, data_dir, **extra)
    exporter.export_run(run, verbose=0)
    return run
