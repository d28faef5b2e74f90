"""Contractive autoencoder (Rifai et al., ICML 2011): penalize the encoder's Jacobian."""

from keras import ops

from zoo.models.ae import AE
from zoo.registry import register


def _activation_derivative(activation, h):
    """ds/da written in terms of the output h = s(a), for the activations whose form allows it."""
    if activation == "sigmoid":
        return h * (1.0 - h)
    if activation == "tanh":
        return 1.0 - ops.square(h)
    if activation == "relu":
        return ops.cast(h > 0, h.dtype)
    return ops.ones_like(h)  # linear


@register("contractive_ae", "Contractive autoencoder: penalty on the Frobenius norm of the encoder's Jacobian.")
class ContractiveAE(AE):
    regularizer_terms = ("contractive_loss",)
    supported_activations = ("sigmoid", "tanh", "relu", "linear", None)

    def __init__(self, contractive_weight=0.5, activation="sigmoid", **kwargs):
        if activation not in self.supported_activations:
            raise ValueError("contractive_ae computes its Jacobian in closed form for activations {}; got {!r}."
                             .format(self.supported_activations, activation))
        super().__init__(activation=activation, **kwargs)
        self.contractive_weight = float(contractive_weight)

    def regularizers(self, x, code, training):
        # For h = s(Wx + b): ||J||_F^2 = sum_j s'(a_j)^2 * ||W[:, j]||^2 (Rifai et al., eq. 2).
        kernel = ops.cast(self.encoder.get_layer("code").kernel, "float32")
        h = ops.cast(code, "float32")
        ds = _activation_derivative(self.activation, h)
        frobenius_sq = ops.sum(ops.square(ds) * ops.sum(ops.square(kernel), axis=0), axis=-1)
        return {"contractive_loss": self.contractive_weight * ops.mean(frobenius_sq)}

    def get_config(self):
        return {**super().get_config(), "contractive_weight": self.contractive_weight}
