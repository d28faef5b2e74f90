"""Every autoencoder family, one module each; importing this package registers them all."""

from zoo.models.ae import AE, LinearAE
from zoo.models.base import Autoencoder, reconstruction_error
from zoo.models.contractive_ae import ContractiveAE
from zoo.models.conv_ae import ConvAE
from zoo.models.dae import ConvDenoisingAE, Corruption, DenoisingAE, apply_noise
from zoo.models.deep_ae import DeepAE
from zoo.models.semantic_hash import SemanticHash
from zoo.models.sparse_ae import SparseAE
from zoo.models.stacked_ae import StackedAE
from zoo.models.vae import VAE, ConvVAE, Sampler
from zoo.models.vq_vae import VQVAE, VectorQuantizer

__all__ = [
    "AE", "Autoencoder", "ContractiveAE", "ConvAE", "ConvDenoisingAE", "ConvVAE", "Corruption", "DeepAE",
    "DenoisingAE", "LinearAE", "Sampler", "SemanticHash", "SparseAE", "StackedAE", "VAE", "VQVAE", "VectorQuantizer",
    "apply_noise", "reconstruction_error",
]
