"""Vector-quantised variational autoencoder (VQ-VAE; van den Oord, Vinyals & Kavukcuoglu, NeurIPS 2017).

The encoder's continuous output z_e is cut into `latent_dim / embedding_dim` tokens of `embedding_dim` values; each
token is replaced by its nearest entry of a learnt codebook of `num_embeddings` vectors. The decoder reads the
quantised code z_q. The nearest-neighbour step has no gradient, so the decoder's gradient is copied to z_e
(straight-through: z_e + stop_gradient(z_q - z_e)), and two terms train the rest (the paper's equation 3):

    codebook_loss   = || stop_gradient(z_e) - z_q ||^2        moves the codebook entries to the encoder's outputs
    commitment_loss = beta || z_e - stop_gradient(z_q) ||^2   keeps the encoder near the entries it chose

each summed over the code and averaged over the batch, like the reconstruction error. The encoder has two
outputs, and so has the exported encoder: `latent`, the quantised code (what `encode` returns and the decoder
reads), and `indices`, the codebook entry of each token (int32, shape (batch, tokens)): the discrete code, of
tokens x log2(num_embeddings) bits. `decode_indices` turns indices back into images.

The paper quantises a spatial grid of a convolutional encoder's features; here the tokens come from a Dense code
layer on top of a Dense stack (`trunk="dense"`) or of conv_ae's strided convolutions (`trunk="conv"`), so that
the code is a flat vector of `latent_dim` values like every other family's, comparable at the same size.
"""

import keras
import numpy as np
from keras import layers, ops

from zoo.models.base import Autoencoder, check_batch
from zoo.models.blocks import conv_decoder, conv_encoder, dense_decoder, dense_encoder
from zoo.registry import register

TRUNKS = ("dense", "conv")


@keras.saving.register_keras_serializable(package="aezoo")
class VectorQuantizer(layers.Layer):
    """z_e (batch, tokens * embedding_dim) -> [z_q with a straight-through gradient, indices (batch, tokens)].

    Adds the codebook and commitment losses (in that order) with add_loss on every call. Outside training z_q is
    exactly made of codebook entries."""

    def __init__(self, num_embeddings, embedding_dim, beta=0.25, **kwargs):
        super().__init__(**kwargs)
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.beta = float(beta)

    def build(self, input_shape):
        # Entries drawn like the code layer's outputs at the start (about unit scale), so that every entry is
        # near some encoder output and gets chosen (a codebook far from them leaves most entries unused).
        self.codebook = self.add_weight(shape=(self.num_embeddings, self.embedding_dim), name="codebook",
                                        initializer=keras.initializers.RandomUniform(-1.0, 1.0))

    def nearest(self, z_e):
        """(z_q, indices, codebook_loss, commitment_loss) of z_e; z_q without the straight-through gradient."""
        z_e = ops.cast(z_e, "float32")
        tokens = ops.reshape(z_e, (-1, self.embedding_dim))
        # The nearest entry e to a token t minimises ||t - e||^2 = ||t||^2 - 2 t.e + ||e||^2, i.e. maximises
        # t.e - ||e||^2 / 2 (||t||^2 is the same for every entry): one matrix product plus a constant row, which
        # the exported graph runs as a single Gemm. (The whole distance took four more passes over the
        # tokens x entries matrix: 42% of the int8 encoder's time at batch 1024.)
        scores = ops.matmul(tokens, ops.transpose(self.codebook)) + (
            -0.5 * ops.sum(ops.square(self.codebook), axis=1))[None, :]
        # top_k rather than argmax: Keras' TensorFlow argmax adds Bitcast ops (for negative zeros) that ONNX lacks.
        indices = ops.cast(ops.top_k(scores, k=1)[1][:, 0], "int32")
        z_q = ops.reshape(ops.take(self.codebook, indices, axis=0), ops.shape(z_e))
        codebook_loss = ops.mean(ops.sum(ops.square(ops.stop_gradient(z_e) - z_q), axis=-1))
        commitment_loss = self.beta * ops.mean(ops.sum(ops.square(z_e - ops.stop_gradient(z_q)), axis=-1))
        return z_q, ops.reshape(indices, (-1, z_e.shape[-1] // self.embedding_dim)), codebook_loss, commitment_loss

    def call(self, z_e, training=False):
        z_q, indices, codebook_loss, commitment_loss = self.nearest(z_e)
        self.add_loss(codebook_loss)
        self.add_loss(commitment_loss)
        if training:  # the value of z_q, the gradient of z_e (in float arithmetic, z_q to within rounding)
            z_q = z_e + ops.stop_gradient(z_q - z_e)
        return [z_q, indices]

    def lookup(self, indices):
        """The quantised code (batch, tokens * embedding_dim) of codebook indices (batch, tokens)."""
        z_q = ops.take(self.codebook, ops.reshape(ops.cast(indices, "int32"), (-1,)), axis=0)
        return ops.reshape(z_q, (-1, indices.shape[-1] * self.embedding_dim))

    def compute_output_spec(self, z_e, training=False):
        tokens = z_e.shape[-1] // self.embedding_dim
        return [keras.KerasTensor(z_e.shape, dtype="float32"), keras.KerasTensor((z_e.shape[0], tokens), dtype="int32")]

    def get_config(self):
        return {**super().get_config(), "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "beta": self.beta}


def check_tokens(latent_dim, embedding_dim, num_embeddings):
    if embedding_dim < 1 or latent_dim % embedding_dim:
        raise ValueError("latent_dim ({}) must be a multiple of embedding_dim ({}): the code is cut into tokens of "
                         "embedding_dim values, e.g. latent_dim=64 with embedding_dim=4 (16 tokens).".format(
                             latent_dim, embedding_dim))
    if num_embeddings < 2:
        raise ValueError("num_embeddings (the codebook size) must be at least 2; got {}.".format(num_embeddings))


#: Token rows one nearest-entry search scores at once, as FAISS blocks the queries of its exhaustive search
#: (faiss::distance_compute_blas_query_bs, 4096), so that the score matrix (rows x num_embeddings floats) stays in
#: the caches. The preset's encoder (16 tokens, 512 entries) at batch 4096 on a 2-core CPU, int8: 110-123k
#: images/s in calls of 1024 images, 149-163k in calls of 256.
SEARCH_BLOCK_TOKENS = 4096


@register("vq_vae", "VQ-VAE: the code is cut into tokens, each replaced by its nearest codebook entry (straight-"
                    "through gradient, commitment loss); the encoder also gives the discrete indices.")
class VQVAE(Autoencoder):
    regularizer_terms = ("codebook_loss", "commitment_loss")
    encoder_outputs = ("latent", "indices")

    def __init__(self, input_shape=(28, 28, 1), latent_dim=64, embedding_dim=4, num_embeddings=512, beta=0.25,
                 trunk="dense", hidden_units=(512, 256), filters=(32, 64), kernel_size=3, activation="relu",
                 output_activation="sigmoid", reconstruction_loss="bce", **kwargs):
        latent_dim, embedding_dim, num_embeddings = int(latent_dim), int(embedding_dim), int(num_embeddings)
        check_tokens(latent_dim, embedding_dim, num_embeddings)
        if trunk not in TRUNKS:
            raise ValueError("trunk must be one of {}; got {!r}.".format(", ".join(TRUNKS), trunk))
        hidden_units = tuple(int(u) for u in hidden_units)
        filters = tuple(int(f) for f in filters)
        # === Layers ===
        if trunk == "dense":
            pre = dense_encoder(input_shape, hidden_units, latent_dim, activation, name="pre_quantization")
            decoder = dense_decoder(input_shape, tuple(reversed(hidden_units)), latent_dim, activation,
                                    output_activation)
        else:
            pre = conv_encoder(input_shape, filters, latent_dim, activation, kernel_size=kernel_size,
                               name="pre_quantization")
            decoder = conv_decoder(input_shape, filters, latent_dim, activation, output_activation,
                                   kernel_size=kernel_size)
        quantizer = VectorQuantizer(num_embeddings, embedding_dim, beta, name="quantizer")
        encoder = keras.Model(pre.input, quantizer(pre.output), name="encoder")
        # === Graph ===
        super().__init__(encoder, decoder, input_shape=input_shape, latent_dim=latent_dim,
                         reconstruction_loss=reconstruction_loss, **kwargs)
        # === Config ===
        self.quantizer = quantizer
        self.embedding_dim = embedding_dim
        self.num_embeddings = num_embeddings
        self.tokens = latent_dim // embedding_dim
        self.beta = float(beta)
        self.trunk = trunk
        self.hidden_units = hidden_units
        self.filters = filters
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.output_activation = output_activation

    @property
    def code_kind(self):
        return "vq"

    def pre_quantization(self):
        """image -> z_e, a keras.Model over the encoder's own layers (built on each call, not tracked)."""
        return keras.Model(self.encoder.input, self.encoder.get_layer("code").output, name="pre_quantization")

    def compute_loss_terms(self, x, training=False):
        z_e = self.pre_quantization()(x, training=training)
        z_q, _, codebook_loss, commitment_loss = self.quantizer.nearest(z_e)
        x_hat = self.decoder(z_q, training=training)
        return {"reconstruction_loss": self.reconstruction_error(x, x_hat), "codebook_loss": codebook_loss,
                "commitment_loss": commitment_loss}

    def encode(self, images, batch_size=256):
        """The quantised codes (batch, latent_dim), float32."""
        return self.encode_with_indices(images, batch_size)[0]

    def encode_indices(self, images, batch_size=256):
        """The codebook index of each token (batch, tokens), int32: the discrete code."""
        return self.encode_with_indices(images, batch_size)[1]

    def encode_with_indices(self, images, batch_size=256):
        latent, indices = super().encode(images, batch_size)
        return np.asarray(latent), np.asarray(indices, np.int32)

    def decode_indices(self, indices, batch_size=256):
        """Images decoded from codebook indices (batch, tokens)."""
        indices = np.asarray(indices)
        check_batch(indices, (self.tokens,), "indices")
        if not np.issubdtype(indices.dtype, np.integer) or indices.size and (
                indices.min() < 0 or indices.max() >= self.num_embeddings):
            raise ValueError("indices must be integers in [0, {}); got {} values in [{}, {}].".format(
                self.num_embeddings, indices.dtype, indices.min() if indices.size else "", indices.max()
                if indices.size else ""))
        return self.decode(ops.convert_to_numpy(self.quantizer.lookup(indices)), batch_size)

    def rows_per_call(self, role):
        """The encoder and the autoencoder search the codebook: SEARCH_BLOCK_TOKENS tokens a call."""
        return None if role == "decoder" else max(1, SEARCH_BLOCK_TOKENS // self.tokens)

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim, "num_embeddings": self.num_embeddings,
                "beta": self.beta, "trunk": self.trunk, "hidden_units": list(self.hidden_units),
                "filters": list(self.filters), "kernel_size": self.kernel_size, "activation": self.activation,
                "output_activation": self.output_activation}
