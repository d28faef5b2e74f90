"""Overrides of a preset: `python -m zoo.train PRESET --set KEY=VALUE --config FILE`, zoo.presets.apply_overrides,
and what a run records of them."""

import json
import sys
import types

import keras
import pytest

from tests.helpers import write_idx_dir
from zoo import presets, schema, train, training
from zoo.errors import ZooError


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py


@pytest.fixture
def idx_dir(tmp_path):
    return write_idx_dir(tmp_path / "idx", n_train=200, n_test=32)


def argv(preset, idx_dir, out, *extra):
    return [preset, "--epochs", "1", "--limit", "128", "--data-dir", str(idx_dir), "--out", str(out), "--quiet",
            *extra]


# --- apply_overrides ------------------------------------------------------------------------------------------


def test_every_preset_keeps_adam_with_cosine_decay():
    for preset in presets.PRESETS.values():
        assert (preset.optimizer, preset.schedule, preset.weight_decay, preset.limit) == ("adam", "cosine", 0.0, None)
    optimizer = training.make_optimizer(presets.get_preset("dae_mnist"), steps_per_epoch=10)
    assert type(optimizer) is keras.optimizers.Adam and optimizer.weight_decay is None
    schedule = optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert (schedule.initial_learning_rate, schedule.decay_steps, schedule.alpha) == (1e-3, 400, 0.01)


def test_make_optimizer_uses_keras_classes():
    base = presets.get_preset("ae_mnist")
    for name, cls in (("adamw", keras.optimizers.AdamW), ("sgd", keras.optimizers.SGD),
                      ("rmsprop", keras.optimizers.RMSprop)):
        preset, _ = presets.apply_overrides(base, {"optimizer": name, "schedule": "constant", "weight_decay": 1e-4})
        optimizer = training.make_optimizer(preset, steps_per_epoch=10)
        assert type(optimizer) is cls and optimizer.weight_decay == pytest.approx(1e-4)
        assert float(optimizer.learning_rate) == pytest.approx(base.learning_rate)
    adamw, _ = presets.apply_overrides(base, {"optimizer": "AdamW"})
    assert training.make_optimizer(adamw, 10).weight_decay == 0.0  # AdamW needs a value; the recipe's is 0


def test_apply_overrides_returns_a_new_preset_and_what_changed():
    base = presets.get_preset("dae_mnist")
    preset, changed = presets.apply_overrides("dae_mnist", {
        "latent_dim": 20, "noise": "masking", "noise_level": 1, "hidden_units": [64, 32], "epochs": 3,
        "learning_rate": 1, "optimizer": "SGD", "schedule": "constant", "seed": base.seed})
    assert changed == {"latent_dim": 20, "noise": "masking", "noise_level": 1.0, "hidden_units": (64, 32),
                       "epochs": 3, "learning_rate": 1.0, "optimizer": "sgd", "schedule": "constant"}
    assert preset.model_config["hidden_units"] == (64, 32) and preset.model_config["latent_dim"] == 20
    assert isinstance(preset.learning_rate, float) and isinstance(preset.model_config["noise_level"], float)
    assert (preset.epochs, preset.optimizer, preset.schedule, preset.name) == (3, "sgd", "constant", "dae_mnist")
    assert "latent_dim=20" in preset.description and "noise=\"masking\"" in preset.description
    assert base.model_config["latent_dim"] == 30 and base.epochs == 40, "the preset itself is left as it was"
    with pytest.raises(AttributeError):
        preset.epochs = 1  # frozen
    # The preset's own values change nothing; null is taken where the preset has None.
    assert presets.apply_overrides(base, {"latent_dim": 30, "limit": None, "decoder_units": None}) == (base, {})
    assert presets.apply_overrides(base, {}) == (base, {})
    limited, changed = presets.apply_overrides(base, {"limit": 100, "decoder_units": [8]})
    assert changed == {"limit": 100, "decoder_units": (8,)} and limited.limit == 100


@pytest.mark.parametrize("overrides, message", [
    ({"latnt_dim": 3}, "Unknown key 'latnt_dim' for preset dae_mnist. Did you mean: latent_dim?"),
    ({"epoch": 3}, "Did you mean: epochs?"),
    ({"filters": [8, 16]}, "model (dae) activation, clean_fraction, decoder_units, hidden_units, latent_dim, noise"),
    ({"input_shape": [32, 32, 3]}, "input_shape is fixed by the dataset (mnist images are 28x28x1)"),
    ({"latent_dim": "abc"}, 'latent_dim expects an integer, e.g. 30; got "abc".'),
    ({"latent_dim": 3.0}, "latent_dim expects an integer"),
    ({"latent_dim": True}, "latent_dim expects an integer"),
    ({"noise_level": "high"}, "noise_level expects a number, e.g. 0.3"),
    ({"noise": 1}, 'noise expects a string, e.g. "gaussian"; got 1.'),
    ({"noise": None}, "noise expects a string"),
    ({"hidden_units": 64}, "hidden_units expects a list of integers, e.g. [1000, 500, 250]; got 64."),
    ({"hidden_units": [64, "a"]}, "hidden_units expects a list of integers"),
    ({"limit": "all"}, "limit expects an integer or null"),
    ({"epochs": 0}, "epochs must be at least 1; got 0."),
    ({"batch_size": -1}, "batch_size must be at least 1"),
    ({"learning_rate": 0}, "learning_rate must be a positive finite number"),
    ({"learning_rate": float("inf")}, "learning_rate must be a positive finite number"),
    ({"seed": -1}, "seed must be between 0 and 4294967295"),
    ({"augment": "flip"}, "augment must be one of none, hflip; got 'flip'. Did you mean: hflip?"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"optimizer": "adan"}, "optimizer must be one of adam, adamw, sgd, rmsprop; got 'adan'. Did you mean: adam"),
    ({"schedule": "cosin"}, "schedule must be one of cosine, constant; got 'cosin'. Did you mean: cosine?"),
])
def test_apply_overrides_refuses_in_one_line(overrides, message):
    with pytest.raises(ZooError) as info:
        presets.apply_overrides("dae_mnist", overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_labels_name_the_flag():
    with pytest.raises(ZooError, match="^--epochs must be at least 1"):
        presets.apply_overrides("ae_mnist", {"epochs": 0}, labels={"epochs": "--epochs"})


def test_recipe_overrides_need_no_model_lookup(monkeypatch):
    monkeypatch.setattr(presets, "model_arguments", None)  # would fail if called
    preset, changed = presets.apply_overrides("ae_mnist", {"epochs": 2, "limit": 64})
    assert changed == {"epochs": 2, "limit": 64}


def test_build_model_names_the_keys_the_model_rejects():
    preset, changed = presets.apply_overrides("dae_mnist", {"noise": "foo", "epochs": 2})
    with pytest.raises(ZooError, match=r"^dae_mnist \(dae\) cannot be built with noise=\"foo\": noise must be one"):
        presets.build_model(preset, changed)
    preset, changed = presets.apply_overrides("conv_ae_mnist", {"latent_dim": -3})
    with pytest.raises(ZooError, match="latent_dim=-3"):
        presets.build_model(preset, changed)
    model = presets.build_model(presets.apply_overrides("dae_mnist", {"latent_dim": 5, "seed": 3})[0])
    assert model.latent_dim == 5 and model.get_config()["seed"] == 3


# --- the command line -----------------------------------------------------------------------------------------


def test_parse_assignments():
    assert train.parse_assignments(["latent_dim=20", "noise=masking", "noise_level=0.5", "hidden_units=[64,128]",
                                    "limit=null", "x=true", "name=a=b", "latent_dim=21"]) == {
        "latent_dim": 21, "noise": "masking", "noise_level": 0.5, "hidden_units": [64, 128], "limit": None,
        "x": True, "name": "a=b"}
    for bad in ("latent_dim", "=3"):
        with pytest.raises(ZooError, match="--set expects KEY=VALUE"):
            train.parse_assignments([bad])


def test_read_overrides(tmp_path, monkeypatch):
    flat = tmp_path / "flat.json"
    flat.write_text('{"latent_dim": 5, "epochs": 2}')
    assert train.read_overrides(flat) == {"latent_dim": 5, "epochs": 2}
    nested = tmp_path / "nested.json"
    nested.write_text('{"model": {"latent_dim": 5}, "training": {"optimizer": "sgd"}, "seed": 1}')
    assert train.read_overrides(nested) == {"latent_dim": 5, "optimizer": "sgd", "seed": 1}
    for text, message in (('{"model": {"epochs": 1}, "epochs": 2}', "sets epochs twice"),
                          ("[1, 2]", "must hold an object"), ("{latent_dim: 5}", "is not valid JSON")):
        flat.write_text(text)
        with pytest.raises(ZooError, match=message):
            train.read_overrides(flat)
    with pytest.raises(ZooError, match="cannot be read"):
        train.read_overrides(tmp_path / "missing.json")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("latent_dim: 5\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    with pytest.raises(ZooError, match="is YAML, and PyYAML is not installed: write it as JSON, or `pip install "
                                       "pyyaml`"):
        train.read_overrides(recipe)
    fake = types.SimpleNamespace(safe_load=lambda text: {"training": {"epochs": 3}}, YAMLError=ValueError)
    monkeypatch.setitem(sys.modules, "yaml", fake)
    assert train.read_overrides(recipe) == {"epochs": 3}


@pytest.mark.parametrize("extra, message", [
    (["--set", "latnt_dim=3"], "Unknown key 'latnt_dim' for preset dae_mnist. Did you mean: latent_dim?"),
    (["--set", "latent_dim=abc"], "latent_dim expects an integer"),
    (["--set", "noise=foo"], "cannot be built with noise=\"foo\""),
    (["--set", "latent_dim=-3"], "cannot be built with latent_dim=-3"),
    (["--set", "optimizer=adan"], "optimizer must be one of adam, adamw, sgd, rmsprop"),
    (["--set", "epochs=0", "--epochs", "2", "--set", "schedule=warm"], "schedule must be one of"),
    (["--set", "epochs"], "--set expects KEY=VALUE"),
    (["--config", "missing.json"], "cannot be read"),
])
def test_bad_overrides_are_one_line_and_create_nothing(extra, message, idx_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert train.main(argv("dae_mnist", idx_dir, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists() and not (tmp_path / schema.RUNS_DIR).exists()


def test_set_is_recorded_in_the_run_dir(idx_dir, tmp_path, monkeypatch):
    from zoo import data

    augments, train_batches = [], data.Splits.train
    monkeypatch.setattr(data.Splits, "train", lambda self, *a, **k: augments.append(k.get("augment")) or
                        train_batches(self, *a, **k))
    out = tmp_path / "run"
    assert train.main(argv("ae_mnist", idx_dir, out, "--set", "latent_dim=3", "--set", "optimizer=sgd",
                           "--set", "schedule=constant", "--set", "seed=1337", "--set", "augment=hflip")) == 0
    assert augments == ["hflip"]  # the training pipeline mirrors images
    config = schema.RunConfig.load(out)
    assert config.model_config["latent_dim"] == 3 and config.latent_dim == 3
    t = config.training
    assert (t["optimizer"], t["schedule"], t["weight_decay"], t["augment"], t["epochs"], t["limit"]) == (
        "sgd", "constant", 0.0, "hflip", 1, 128)
    assert config.overrides == {"latent_dim": 3, "optimizer": "sgd", "schedule": "constant", "augment": "hflip",
                                "epochs": 1, "limit": 128}
    assert "hflip augmentation" in config.recipe_text()
    assert "(changed: latent_dim=3)" in config.description
    assert config.format_version == schema.FORMAT_VERSION
    model = keras.models.load_model(out / schema.MODEL)
    assert type(model.optimizer) is keras.optimizers.SGD
    assert float(model.optimizer.learning_rate) == pytest.approx(presets.get_preset("ae_mnist").learning_rate)
    assert schema.RunMetrics.load(out).num_images == 32


def test_a_run_whose_set_values_the_preset_adopted_is_a_run_of_the_preset(monkeypatch):
    """quality.json and a release describe a run against the preset as it is now (presets.as_now)."""
    import dataclasses

    preset = presets.get_preset("conv_ae_mnist")
    trained, _ = presets.apply_overrides(preset, {"convs_per_stage": 3, "epochs": 3})  # 3: no preset has it
    config = schema.RunConfig(
        preset=preset.name, model=preset.model, dataset=preset.dataset,
        model_config=dict(presets.model_arguments(trained), input_shape=[28, 28, 1], name="conv_ae"),
        training=dict(trained.recipe(), backend="tensorflow"), input_shape=[28, 28, 1], latent_dim=30,
        description=trained.description, overrides={"convs_per_stage": 3, "epochs": 3})
    assert presets.as_now(config) == (trained.description, config.overrides)  # the preset as it is today
    # The preset adopts the model value: only the epochs still differ, and the description is the preset's.
    adopted = dataclasses.replace(preset, description=preset.description + " (deeper)", model_config=dict(
        preset.model_config, convs_per_stage=3))
    monkeypatch.setitem(presets.PRESETS, preset.name, adopted)
    assert presets.as_now(config) == (adopted.description, {"epochs": 3})
    # A preset that changed in another way (its filters) keeps the run's recorded terms: the run is of an old recipe.
    other = dataclasses.replace(adopted, model_config=dict(adopted.model_config, filters=(16, 32)))
    monkeypatch.setitem(presets.PRESETS, preset.name, other)
    assert presets.as_now(config) == (trained.description, config.overrides)
    # So does a run whose recorded model is not what its overrides make of the preset now, or a preset gone.
    monkeypatch.setitem(presets.PRESETS, preset.name, adopted)
    assert presets.as_now(dataclasses.replace(config, model_config=dict(config.model_config, kernel_size=7))) == (
        trained.description, config.overrides)
    monkeypatch.delitem(presets.PRESETS, preset.name)
    assert presets.as_now(config) == (trained.description, config.overrides)

def test_config_file_and_the_order_of_overrides(idx_dir, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"model": {"latent_dim": 5, "hidden_units": [16]},
                                  "training": {"optimizer": "rmsprop", "learning_rate": 0.01, "epochs": 4}}))
    out = tmp_path / "run"
    # preset < --config < --set < --epochs
    assert train.main(argv("deep_ae_mnist", idx_dir, out, "--config", str(recipe), "--set", "latent_dim=4",
                           "--set", "epochs=3")) == 0
    config = schema.RunConfig.load(out)
    assert config.model_config["latent_dim"] == 4 and config.model_config["hidden_units"] == [16]
    assert config.training["optimizer"] == "rmsprop" and config.training["learning_rate"] == 0.01
    assert config.training["epochs"] == 1 and config.training["schedule"] == "cosine"
    assert config.overrides["hidden_units"] == [16] and config.overrides["latent_dim"] == 4


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def test_resume_needs_the_same_overrides(idx_dir, tmp_path):
    out = tmp_path / "run"
    kwargs = dict(out=out, epochs=2, limit=128, data_dir=idx_dir, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train.train("deep_ae_mnist", overrides={"latent_dim": 3, "hidden_units": [16]}, callbacks=[_Interrupt()],
                    **kwargs)
    for other in ({"latent_dim": 4, "hidden_units": [16]}, {"hidden_units": [16]}, {}):
        with pytest.raises(ZooError, match="interrupted run with other settings"):
            train.train("deep_ae_mnist", overrides=other, **kwargs)
    # The same overrides resume it, however they are spelt (a list read back from JSON, a tuple).
    assert train.train("deep_ae_mnist", overrides={"hidden_units": (16,), "latent_dim": 3}, **kwargs) == out
    config = schema.RunConfig.load(out)
    assert config.training["resumed"] is True and config.latent_dim == 3
