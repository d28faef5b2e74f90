"""Reconstruction metrics in named units, computed in numpy on float32 images in [0, 1]."""

import numpy as np

UNITS = {
    "sq_error_per_image": "sum over pixels of (x - x_hat)^2, mean over test images (Hinton & Salakhutdinov 2006)",
    "mse_per_pixel": "mean of (x - x_hat)^2 over pixels and images",
    "bce_per_pixel": "binary cross-entropy in nats per pixel, mean over pixels and images",
    "psnr_db": "10 log10(1 / MSE) per image with peak 1.0, mean over images, in dB",
    "noisy_psnr_db": "PSNR of the corrupted input against the clean image, dB",
    "denoised_psnr_db": "PSNR of the model's output on the corrupted input against the clean image, dB",
    "psnr_gain_db": "denoised_psnr_db - noisy_psnr_db, dB",
    "denoised_sq_error_per_image": "sq_error_per_image of the model's output on the corrupted input (the clean "
                                   "input's is sq_error_per_image)",
    "denoised_bce_per_pixel": "bce_per_pixel of the model's output on the corrupted input (the clean input's is "
                              "bce_per_pixel)",
}
_EPS = 1e-7


def _per_image(x):
    return x.reshape(len(x), -1)


def sq_error_per_image(x, x_hat):
    return float(np.mean(np.sum(np.square(_per_image(x) - _per_image(x_hat)), axis=1)))


def mse_per_pixel(x, x_hat):
    return float(np.mean(np.square(x - x_hat)))


def bce_per_pixel(x, x_hat):
    p = np.clip(x_hat, _EPS, 1 - _EPS)
    return float(np.mean(-(x * np.log(p) + (1 - x) * np.log(1 - p))))


def psnr_db(x, x_hat):
    mse = np.mean(np.square(_per_image(x) - _per_image(x_hat)), axis=1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def reconstruction_metrics(x, x_hat):
    x = np.asarray(x, np.float64)
    x_hat = np.asarray(x_hat, np.float64)
    return {
        "sq_error_per_image": sq_error_per_image(x, x_hat),
        "mse_per_pixel": mse_per_pixel(x, x_hat),
        "bce_per_pixel": bce_per_pixel(x, x_hat),
        "psnr_db": psnr_db(x, x_hat),
    }


def denoising_metrics(x, noisy, denoised):
    """PSNR of the noisy input and of the output on it, and the output's errors in the units of
    reconstruction_metrics, to set beside those of the clean input: a denoiser should not reconstruct
    corrupted images better than clean ones."""
    x = np.asarray(x, np.float64)
    denoised = np.asarray(denoised, np.float64)
    noisy_psnr, denoised_psnr = psnr_db(x, noisy), psnr_db(x, denoised)
    return {"noisy_psnr_db": noisy_psnr, "denoised_psnr_db": denoised_psnr, "psnr_gain_db": denoised_psnr - noisy_psnr,
            "denoised_sq_error_per_image": sq_error_per_image(x, denoised),
            "denoised_bce_per_pixel": bce_per_pixel(x, denoised)}


# --- code health ------------------------------------------------------------------------------------------
# A unit that does not vary over the data carries no information; one stuck at the end of its range varies only
# on a few images and passes no gradient on the others. The thresholds, in the unit of the code:
DEAD_STD = 1e-3  # dead: standard deviation over the training codes below this
SATURATION_MARGIN = 0.01  # saturated: within this of an end of the activation's range ...
SATURATION_FRACTION = 0.99  # ... (the same end) on more than this fraction of the training codes
ACTIVE_VARIANCE = 0.01  # a Gaussian latent dimension is active when Var_x(E[z|x]) exceeds this (Burda et al. 2016)
HEALTH_WARNING_FRACTION = 0.1  # training warns when more than this fraction of the code is unusable
HEALTH_IMAGES = 10000  # training images the health check encodes
#: The ends a unit of each code activation can get stuck at.
_RANGE_ENDS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "relu": (0.0,), "softplus": (0.0,)}

HEALTH_UNITS = {
    "code": "the code's kind: the activation of the code layer, or 'gaussian' for a variational latent",
    "units": "code units (latent dimensions)",
    "images": "training images the codes were computed on",
    "dead": "units whose standard deviation over the codes is below {:g}".format(DEAD_STD),
    "saturated": "units within {:g} of the same end of their range ({}) on more than {:g}% of the codes (a nearly "
                 "binary unit that takes both ends is not saturated)".format(
                     SATURATION_MARGIN, "sigmoid 0 or 1, tanh -1 or 1, relu 0", 100 * SATURATION_FRACTION),
    "dead_or_saturated": "units that are dead, saturated or both",
    "active_dimensions": "latent dimensions with Var_x(E[z|x]) > {:g}, the activity of Burda et al. 2016 (IWAE, "
                         "section 5.2), over the posterior means".format(ACTIVE_VARIANCE),
    "kl_nats_per_dimension": "KL(q(z_j|x) || N(0, 1)) in nats, mean over the codes, per latent dimension",
    "codebook_size": "entries in a VQ-VAE's codebook",
    "codebook_used": "codebook entries chosen by at least one token of the codes",
    "perplexity": "exp of the entropy of the codebook entries' frequencies over all tokens: the number of "
                  "equally used entries with the same entropy (van den Oord et al. 2017)",
}


def code_health(codes, kind):
    """How many code units are usable, from the codes of (training) images.

    `kind` is the code layer's activation ("sigmoid", "tanh", "relu", "linear", ...), or "gaussian" for a
    variational latent, whose `codes` are then the posterior means or the pair (z_mean, z_log_var). Returns a
    dict of counts (see HEALTH_UNITS): `dead` and `saturated` units for a deterministic code, `active_dimensions`
    for a Gaussian one."""
    if kind == "vq":
        return _codebook_health(*codes)
    log_var = None
    if kind == "gaussian" and isinstance(codes, (tuple, list)):
        codes, log_var = codes
    codes = np.asarray(codes, np.float64)
    if codes.ndim != 2 or not len(codes):
        raise ValueError("codes must be a non-empty (images, units) array; got shape {}".format(codes.shape))
    health = {"code": str(kind), "units": int(codes.shape[1]), "images": int(codes.shape[0])}
    if kind == "gaussian":
        health["active_dimensions"] = int(np.sum(np.var(codes, axis=0) > ACTIVE_VARIANCE))
        if log_var is not None:
            log_var = np.asarray(log_var, np.float64)
            kl = -0.5 * np.mean(1.0 + log_var - np.square(codes) - np.exp(log_var), axis=0)
            health["kl_nats_per_dimension"] = [round(float(v), 4) for v in kl]
        return health
    dead = np.std(codes, axis=0) < DEAD_STD
    saturated = np.zeros(codes.shape[1], bool)
    for end in _RANGE_ENDS.get(kind, ()):
        saturated |= np.mean(np.abs(codes - end) <= SATURATION_MARGIN, axis=0) > SATURATION_FRACTION
    health.update(dead=int(dead.sum()), saturated=int(saturated.sum()), dead_or_saturated=int((dead | saturated).sum()))
    return health


def _codebook_health(latents, indices, codebook_size):
    """A VQ-VAE's code health: how many of its codebook entries the tokens use, and how evenly."""
    indices = np.asarray(indices).reshape(-1)
    latents = np.asarray(latents)
    if latents.ndim != 2 or not len(latents):
        raise ValueError("codes must be a non-empty (images, units) array; got shape {}".format(latents.shape))
    counts = np.bincount(indices, minlength=int(codebook_size))
    frequency = counts[counts > 0] / counts.sum()
    return {"code": "vq", "units": int(latents.shape[1]), "images": int(latents.shape[0]),
            "codebook_size": int(codebook_size), "codebook_used": int(np.sum(counts > 0)),
            "perplexity": round(float(np.exp(-np.sum(frequency * np.log(frequency)))), 2)}


def unusable_units(health):
    """Units a health record counts as carrying (almost) no information: dead or saturated, or inactive; for a
    VQ-VAE, the codebook entries no token uses."""
    if "codebook_size" in health:
        return health["codebook_size"] - health["codebook_used"]
    if "active_dimensions" in health:
        return health["units"] - health["active_dimensions"]
    return health["dead_or_saturated"]


def health_line(health):
    """One sentence for logs and model cards."""
    if "codebook_size" in health:
        return "Codebook: {} of {} entries used, perplexity {:.1f}".format(
            health["codebook_used"], health["codebook_size"], health["perplexity"])
    if "active_dimensions" in health:
        return "VAE active dimensions: {} of {}".format(health["active_dimensions"], health["units"])
    return "Code health: {} of {} units dead or saturated ({} dead, {} saturated)".format(
        health["dead_or_saturated"], health["units"], health["dead"], health["saturated"])


def health_warning(health):
    """The warning text when more than HEALTH_WARNING_FRACTION of the code is unusable, else None."""
    bad = unusable_units(health)
    if bad <= HEALTH_WARNING_FRACTION * health.get("codebook_size", health["units"]):
        return None
    if "codebook_size" in health:
        return "only {} of {} codebook entries are used (perplexity {:.1f}): the discrete code carries less than " \
               "its size suggests; try a smaller num_embeddings".format(
                   health["codebook_used"], health["codebook_size"], health["perplexity"])
    if "active_dimensions" in health:
        return "only {} of {} latent dimensions are active (posterior collapse in the others; try kl_warmup_epochs " \
               "or free_bits)".format(health["active_dimensions"], health["units"])
    return "{} of {} code units are dead or saturated ({} dead, {} saturated): the code carries less than its " \
           "size suggests".format(bad, health["units"], health["dead"], health["saturated"])


def model_code_health(model, images, limit=HEALTH_IMAGES):
    """code_health of `model` (a zoo Autoencoder) on the first `limit` of `images` (float in [0, 1])."""
    images = images[:limit]
    kind = model.code_kind
    if kind == "vq":
        return code_health(model.encode_with_indices(images) + (model.num_embeddings,), kind)
    codes = model.encode_distribution(images) if kind == "gaussian" else model.encode(images)
    return code_health(codes, kind)
