"""Sparse autoencoder: a penalty keeps the code units mostly inactive.

The KL penalty is the sum over units of KL(rho || rho_hat_j), rho_hat_j the unit's mean activation over the batch,
in nats per image beside a reconstruction loss summed over the pixels. It is a soft penalty: the mean activation
settles where its gradient balances the reconstruction's, so reaching `sparsity_target` takes a weight that grows
with the reconstruction loss's scale (BCE about 3x squared error) and with fewer units (zoo.presets has the
measurements).
"""

from keras import ops

from zoo.models.ae import AE
from zoo.registry import register

SPARSITY_KINDS = ("kl", "l1")


@register("sparse_ae", "Sparse autoencoder: one hidden layer with an L1 activity or KL(rho || rho_hat) penalty.")
class SparseAE(AE):
    regularizer_terms = ("sparsity_loss",)

    def __init__(self, latent_dim=64, sparsity="kl", sparsity_weight=1.0, sparsity_target=0.05,
                 activation="sigmoid", **kwargs):
        if sparsity not in SPARSITY_KINDS:
            raise ValueError("sparsity must be one of {}; got {!r}.".format(SPARSITY_KINDS, sparsity))
        if sparsity == "kl" and activation != "sigmoid":
            raise ValueError("sparsity='kl' treats code units as firing probabilities and needs "
                             "activation='sigmoid'; got {!r}. Use sparsity='l1' for other activations."
                             .format(activation))
        if not 0 < sparsity_target < 1:
            raise ValueError("sparsity_target (rho) must be in (0, 1); got {!r}.".format(sparsity_target))
        super().__init__(latent_dim=latent_dim, activation=activation, **kwargs)
        self.sparsity = sparsity
        self.sparsity_weight = float(sparsity_weight)
        self.sparsity_target = float(sparsity_target)

    def regularizers(self, x, code, training):
        code = ops.cast(code, "float32")
        if self.sparsity == "l1":
            penalty = ops.mean(ops.sum(ops.abs(code), axis=-1))
        else:
            rho = self.sparsity_target
            rho_hat = ops.clip(ops.mean(code, axis=0), 1e-6, 1.0 - 1e-6)
            penalty = ops.sum(rho * ops.log(rho / rho_hat) + (1.0 - rho) * ops.log((1.0 - rho) / (1.0 - rho_hat)))
        return {"sparsity_loss": self.sparsity_weight * penalty}

    def get_config(self):
        return {**super().get_config(), "sparsity": self.sparsity, "sparsity_weight": self.sparsity_weight,
                "sparsity_target": self.sparsity_target}
