"""Named training recipes, `<model>_<dataset>`: model config, data, loss and optimizer settings, and the
overrides (`--set KEY=VALUE`, `--config FILE`, `zoo.from_preset(name, **overrides)`) that change them."""

import dataclasses
import difflib
import json
import math

from zoo.data import AUGMENTS, DATASETS
from zoo.errors import ZooError, unknown_name

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")  # keras.optimizers.get names
SCHEDULES = ("cosine", "constant")  # cosine: decay to 1% of the peak over the whole run
MAX_SEED = 2 ** 32 - 1  # numpy's and TensorFlow's seeding accept 0..2**32-1


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    model: str
    dataset: str
    description: str
    model_config: dict = dataclasses.field(default_factory=dict)
    # The recipe: every field below can be overridden by name (RECIPE_FIELDS).
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 1337
    optimizer: str = "adam"
    schedule: str = "cosine"
    weight_decay: float = 0.0  # decoupled (AdamW's); Keras applies it with the other optimizers too when > 0
    augment: str = "none"  # zoo.data.AUGMENTS: none, or hflip (clothes and scenes, not digits)
    limit: int = None  # only the first N training images (smoke runs); None: all of them

    @property
    def reconstruction_loss(self):
        return self.model_config.get("reconstruction_loss", "mse")

    def to_dict(self):
        return dataclasses.asdict(self)

    def recipe(self):
        """{field: value} of the recipe fields."""
        return {key: getattr(self, key) for key in RECIPE_FIELDS}


RECIPE_FIELDS = ("epochs", "batch_size", "learning_rate", "seed", "optimizer", "schedule", "weight_decay", "augment",
                 "limit")
_FIELDS = {f.name: f for f in dataclasses.fields(Preset)}
# Constructor arguments that are not the user's to set: the dataset fixes the input shape, the recipe's seed
# seeds the model's draws, and a name changes nothing that is trained.
_FIXED_ARGUMENTS = ("name", "input_shape", "seed")


# One recipe per family; a preset is the recipe on a dataset, with the dataset's image shape.
_RECIPES = {
    "ae": dict(description="one sigmoid code layer of {latent_dim} units, squared error",
               model_config=dict(latent_dim=30), epochs=30, learning_rate=2e-3),
    "linear_ae": dict(description="{latent_dim}-d linear code, squared error; matches PCA-{latent_dim}",
                      model_config=dict(latent_dim=30), epochs=30, learning_rate=2e-3),
    "deep_ae": dict(description="784-1000-500-250-30 ReLU stack (Hinton & Salakhutdinov 2006), squared error",
                    model_config=dict(latent_dim=30), epochs=40),
    # deep_ae's architecture and fine-tuning recipe, so that deep_ae is its control: only the pretraining differs.
    "stacked_ae": dict(description="784-1000-500-250-{latent_dim} ReLU stack, greedy layer-wise pretraining "
                                   "({pretrain_epochs} epochs a layer) then fine-tuning; deep_ae is its control",
                       model_config=dict(latent_dim=30, pretrain_epochs=5), epochs=40),
    # Fashion-MNIST test error per image: 32/64 filters, 25 epochs 5.36; 48/96, 25 epochs 4.96 (val still
    # falling when the cosine schedule ended); 48/96, 40 epochs 4.76. With augment=hflip (seed 1337) 4.80 and
    # precision@10 0.837 (without: 4.75, 0.839): the train-test gap shrank from 0.68 to 0.38, the test error did not.
    # With dense_units=[512]: 4.74 and 0.836, the gap grew to 0.85. Short proxy (first 20,000 training images,
    # 8 epochs): 9.44 as it is, 7.62 with convs_per_stage=2, residual=true (870k parameters, 1.56x the proxy's
    # time). That in full (40 epochs, seed 1337, 176 s an epoch on the 2-core CPU): 4.56 (0.37x PCA-30) against
    # 4.75, the train loss 3.65 against the validation's 4.55 at the end; precision@10 0.840 (0.839), 550-label
    # probe 0.791 (0.789). Its validation loss flattens from epoch 28 while the train loss still falls, but neither
    # regularizer tried helps on a proxy of it (first 10,000 training images, 20 epochs, seed 1337; test error 7.06):
    # augment=hflip 7.41, optimizer=adamw with weight_decay=0.05 7.09.
    # Precision@10 is held down by four upper-body classes (res2's codes: T-shirt 0.78, pullover 0.73, coat 0.71,
    # shirt 0.60; the other six 0.91-0.97), mostly confused with each other, as in raw pixels. Cosine instead of
    # Euclidean distance lifts it only to 0.848; training the encoder on images shifted by up to 2 pixels towards
    # the unshifted image (proxy: 20,000 images, 8 epochs) lowered it, 0.769 against 0.786.
    # Not the recipe until seeds 1 and 2 confirm it and conv_dae follows (a GPU job:
    # SET="convs_per_stage=2 residual=true" EXP=res2 SEEDS="1 2" bash benchmarks/gpu_train.sh conv_ae_fashion_mnist).
    # An InfoNCE term (SimCLR's NT-Xent, temperature 0.2) between each image's code and that of a copy shifted by up
    # to 10% and mirrored half the time, added to the squared error (tried, then removed: commits 69eb935 and
    # 527f2d7), helps only short runs. First 20,000 images, weight 5: 8 epochs 7.78 and P@10 0.807 against 9.54 and
    # 0.789; 20 epochs 6.58 and 0.816 against 6.83 and 0.814 (weight 20: 8.03 and 0.810). In full (weight 5, 40
    # epochs, seed 1337): 5.24 and 0.829 against 4.75 and 0.839, worse on both.
    "conv_ae": dict(description="2-stage strided conv encoder ({filters} filters), transposed-conv decoder, "
                                "{latent_dim}-d code",
                    model_config=dict(latent_dim=30, filters=(48, 96)), epochs=40),
    # A denoiser keeps its control's architecture and recipe (tests/test_train.py): only the noise differs.
    "dae": dict(description="deep_ae architecture trained on Gaussian noise (stddev 0.3), half of the images left "
                            "clean",
                model_config=dict(latent_dim=30, noise="gaussian", noise_level=0.3), epochs=40),
    "conv_dae": dict(description="conv_ae architecture ({filters} filters) trained on Gaussian noise (stddev 0.3), "
                                 "half of the images left clean",
                     model_config=dict(latent_dim=30, filters=(48, 96), noise="gaussian", noise_level=0.3),
                     epochs=40),
    # Mean code activation on Fashion-MNIST (target 0.05) at KL weight 1 / 3 / 10, 64 units, squared error: 0.092 /
    # 0.068 / 0.057 (test error 9.48 / 10.62 / 12.33). BCE needs about 3x the weight (64 units, weight 3: 0.092),
    # and fewer units more: 20 units, BCE, weight 1 / 3 / 10 / 30: 0.294 / 0.183 / 0.106 / 0.075.
    "sparse_ae": dict(description="64 sigmoid units, KL sparsity to rho=0.05 (weight 3)",
                      model_config=dict(latent_dim=64, sparsity="kl", sparsity_weight=3.0, sparsity_target=0.05),
                      epochs=30, learning_rate=2e-3),
    "contractive_ae": dict(description="30 sigmoid units, contractive penalty weight 0.5",
                           model_config=dict(latent_dim=30, contractive_weight=0.5), epochs=30, learning_rate=2e-3),
    # Fashion-MNIST, seed 1337: without input centering 5 of the 32 code units were constant bits (test error 13.04);
    # with it none (12.87).
    "semantic_hash": dict(description="784-1000-500-250-{latent_dim} ReLU stack on mean-centred input, sigmoid code "
                                      "with noise stddev 4 before it in training (Salakhutdinov & Hinton 2009): "
                                      "{latent_dim}-bit codes",
                          model_config=dict(latent_dim=32, code_noise=4.0), epochs=40),
    # KL warm-up over 10 of the 40 epochs, Fashion-MNIST seeds 1337 / 1: active latent dimensions 8 / 9 -> 16 / 16 of
    # 30, test error 10.07 / 9.91 -> 8.80 / 8.85, validation loss 234.4 / 234.2 -> 233.1 / 233.1. Adding free bits
    # 0.25 (seed 1337): 30 of 30 active, test error 8.36.
    "vae": dict(description="Dense VAE 512-256, {latent_dim}-d Gaussian latent, Bernoulli (BCE) likelihood, beta=1 "
                            "reached after 10 epochs of KL warm-up, 0.25 free nats per dimension",
                model_config=dict(latent_dim=30, beta=1.0, reconstruction_loss="bce", kl_warmup_epochs=10,
                                  free_bits=0.25), epochs=40),
    # The dense vae's fixes for inactive latent dimensions (KL warm-up, then free bits), with the warm-up over the
    # same share of the run.
    "conv_vae": dict(description="conv VAE ({filters} filters), {latent_dim}-d Gaussian latent, Bernoulli (BCE) "
                                 "likelihood, beta=1 reached after 6 epochs of KL warm-up, 0.25 free nats per "
                                 "dimension",
                     model_config=dict(latent_dim=30, filters=(32, 64), beta=1.0, reconstruction_loss="bce",
                                       kl_warmup_epochs=6, free_bits=0.25),
                     epochs=25),
    "vq_vae": dict(description="Dense 512-256 encoder, {latent_dim}-d code cut into 4-d tokens, each the nearest of 512 "
                               "codebook entries (commitment 0.25), Bernoulli (BCE) likelihood",
                   model_config=dict(latent_dim=64, embedding_dim=4, num_embeddings=512, beta=0.25,
                                     reconstruction_loss="bce"), epochs=40),
}
_CONV = ("conv_ae", "conv_dae", "conv_vae")
_DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def _make_presets():
    presets = {}
    for model, recipe in _RECIPES.items():
        for dataset in ("mnist", "fashion_mnist") + (("cifar10",) if model in _CONV else ()):
            info = DATASETS[dataset]
            config = dict(recipe["model_config"], input_shape=tuple(info.image_shape))
            if dataset == "cifar10":
                # Colour images carry more information per code dimension: widen code and filters.
                config.update(latent_dim=128, filters=(64, 128))
            name = "{}_{}".format(model, dataset)
            summary = recipe["description"].format(
                latent_dim=config["latent_dim"], filters="/".join(str(f) for f in config.get("filters", ())),
                pretrain_epochs=config.get("pretrain_epochs"))
            description = "{} on {}: {}".format(model, _DATASET_NAMES[dataset], summary)
            presets[name] = Preset(
                name=name, model=model, dataset=dataset, description=description, model_config=config,
                **{k: v for k, v in recipe.items() if k not in ("description", "model_config")},
            )
    return presets


PRESETS = _make_presets()


def list_presets():
    return sorted(PRESETS)


def get_preset(name):
    try:
        return PRESETS[name]
    except KeyError:
        raise unknown_name("preset", name, PRESETS) from None


# --- overrides ----------------------------------------------------------------------------------------------


def model_arguments(preset):
    """{argument: value in `preset`} of the model constructor arguments an override may set (Keras loads here)."""
    import importlib

    importlib.import_module("zoo.models")  # registers every family
    from zoo.registry import constructor_arguments

    return {key: preset.model_config.get(key, default) for key, default in constructor_arguments(preset.model).items()
            if key not in _FIXED_ARGUMENTS}


def override_keys(preset):
    """The keys `apply_overrides` accepts for `preset` (a Preset or a name): recipe fields, then model arguments."""
    preset = preset if isinstance(preset, Preset) else get_preset(preset)
    return list(RECIPE_FIELDS) + sorted(model_arguments(preset))


def apply_overrides(preset, overrides, labels=None):
    """`preset` (a Preset or its name) with `overrides` applied, as (a new frozen Preset, {key: value} of the
    fields that now differ from `preset`).

    A key is a recipe field (RECIPE_FIELDS) or a constructor argument of the preset's model (`override_keys`).
    The type a value must have follows the field: int takes int only, float int or float, a tuple a list,
    a bool true/false, and null only where the preset has None. An unknown key (with close matches), a wrong
    type or a recipe value out of range raise ZooError; a value the model itself rejects shows when it is
    built (`build_model`). `labels` names keys in the messages, e.g. {"epochs": "--epochs"}.
    """
    preset = preset if isinstance(preset, Preset) else get_preset(preset)
    overrides, labels = dict(overrides or {}), labels or {}
    # Recipe fields alone need no Keras: the model's arguments are looked up only when another key is given.
    model_keys = model_arguments(preset) if set(overrides) - set(RECIPE_FIELDS) else {}
    recipe, config = {}, {}
    for key, value in overrides.items():
        label = labels.get(key, key)
        if key in RECIPE_FIELDS:
            field = _FIELDS[key]
            recipe[key] = _check_range(key, label, _check_type(label, value, field.type, field.default is None,
                                                               getattr(preset, key)))
        elif key in model_keys:
            current = model_keys[key]
            config[key] = _check_type(label, value, _kind(current), current is None, current)
        else:
            raise _unknown_key(preset, key, model_keys)
    changed = {k: v for k, v in recipe.items() if v != getattr(preset, k)}
    changed.update({k: v for k, v in config.items() if v != model_keys[k]})
    if not changed:
        return preset, {}
    model_changed = {k: v for k, v in changed.items() if k in config}
    description = preset.description
    if model_changed:
        description += " (changed: {})".format(", ".join("{}={}".format(k, _show(v)) for k, v in model_changed.items()))
    return dataclasses.replace(preset, description=description, model_config={**preset.model_config, **model_changed},
                               **{k: v for k, v in changed.items() if k in recipe}), changed


def build_model(preset, changed=None):
    """The untrained Keras model of `preset`, its noise and sampling draws seeded by the recipe's seed.

    A value the model rejects (its ValueError or TypeError) becomes a one-line ZooError that names the
    overridden keys in `changed` (from `apply_overrides`); with no overrides it is a bug and keeps its traceback.
    """
    import zoo
    from zoo.registry import constructor_arguments

    config = dict(preset.model_config)
    if "seed" in constructor_arguments(preset.model):
        config["seed"] = preset.seed
    try:
        return zoo.build(preset.model, **config)
    except (TypeError, ValueError) as exc:
        if not changed:
            raise
        keys = [k for k in changed if k not in RECIPE_FIELDS] or list(changed)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZooError("{} ({}) cannot be built with {}: {}".format(
            preset.name, preset.model, ", ".join("{}={}".format(k, _show(changed[k])) for k in keys), reason)) from None


def as_now(config):
    """(description, overrides) of a run's config (schema.RunConfig) against its preset as the preset is now.

    A run records its preset's description and the --set fields that differed when it was trained. When the
    preset later adopts those values (e.g. a recipe found with `--set convs_per_stage=2` becomes the default),
    the run is a run of the preset as it is now: this gives the preset's description and only the fields that
    still differ. Where the run's model or recipe differs from what its overrides make of the preset now
    (the preset changed in some other way), or the preset is gone, the recorded terms are returned unchanged.
    """
    recorded = (config.description, dict(config.overrides or {}))
    preset = PRESETS.get(config.preset)
    if preset is None or preset.model != config.model:
        return recorded
    try:
        now, changed = apply_overrides(preset, config.overrides or {})
    except ZooError:
        return recorded
    ran = json.loads(json.dumps(config.model_config))
    wants = json.loads(json.dumps(model_arguments(now)))  # the preset's values and the model's own defaults
    same_model = all(ran[k] == v for k, v in wants.items() if k in ran)
    same_recipe = all(config.training.get(k) == getattr(now, k) for k in RECIPE_FIELDS if k in config.training)
    if not (same_model and same_recipe):
        return recorded
    return now.description, {k: v for k, v in (config.overrides or {}).items() if k in changed}


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}


def _kind(value):
    """The type an override of a field now holding `value` must have; None: any (the model judges)."""
    if isinstance(value, (list, tuple)):
        return tuple
    for kind in (bool, int, float, str):  # bool first: it is an int too
        if isinstance(value, kind):
            return kind
    return None


def _check_type(label, value, kind, nullable, example):
    """`value` as `kind` (float from an int, tuple from a list), or ZooError saying what was expected."""
    if value is None and nullable:
        return None
    if kind is None:
        return tuple(value) if isinstance(value, list) else value
    ints = kind is tuple and bool(example) and all(_kind(v) is int for v in example)
    if kind is tuple:
        ok = isinstance(value, (list, tuple)) and (not ints or all(_kind(v) is int for v in value))
    elif kind is float:
        ok = _kind(value) in (int, float)
    else:
        ok = _kind(value) is kind
    if not ok:
        what = "a list of integers" if ints else _KINDS[kind]
        raise ZooError("{} expects {}{}{}; got {}.".format(
            label, what, " or null" if nullable else "", "" if example is None else ", e.g. " + _show(example),
            _show(value)))
    if kind is float:
        return float(value)
    if kind is tuple:
        return tuple(value) if isinstance(example, tuple) or example is None else list(value)
    return value


def _check_range(key, label, value):
    if key in ("epochs", "batch_size", "limit") and value is not None and value < 1:
        raise ZooError("{} must be at least 1; got {}.".format(label, value))
    if key == "learning_rate" and not (math.isfinite(value) and value > 0):
        raise ZooError("{} must be a positive finite number, e.g. 1e-3; got {}.".format(label, value))
    if key == "weight_decay" and not (math.isfinite(value) and value >= 0):
        raise ZooError("{} must be a finite number >= 0, e.g. 0.004; got {}.".format(label, value))
    if key == "seed" and not 0 <= value <= MAX_SEED:
        raise ZooError("{} must be between 0 and {}; got {}.".format(label, MAX_SEED, value))
    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS}.get(key)
    if choices and value.lower() not in choices:
        close = difflib.get_close_matches(value.lower(), choices, n=3, cutoff=0.5)
        raise ZooError("{} must be one of {}; got {!r}.{}".format(
            label, ", ".join(choices), value, " Did you mean: {}?".format(", ".join(close)) if close else ""))
    if choices:
        return value.lower()
    return value


def _unknown_key(preset, key, model_keys):
    if key == "input_shape":
        return ZooError("input_shape is fixed by the dataset ({} images are {}); choose a preset of another dataset."
                        .format(preset.dataset, "x".join(str(d) for d in preset.model_config.get("input_shape", ()))))
    valid = list(RECIPE_FIELDS) + sorted(model_keys)
    close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.6)
    return ZooError("Unknown key {!r} for preset {}.{} Valid keys: recipe {}; model ({}) {}.".format(
        key, preset.name, " Did you mean: {}?".format(", ".join(close)) if close else "", ", ".join(RECIPE_FIELDS),
        preset.model, ", ".join(sorted(model_keys))))


def _show(value):
    """A value as the user would type it after `--set KEY=`: JSON."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
