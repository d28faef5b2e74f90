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
    noisy_psnr, denoised_psnr = psnr_db(x, noisy), psnr_db(x, denoised)
    return {"noisy_psnr_db": noisy_psnr, "denoised_psnr_db": denoised_psnr, "psnr_gain_db": denoised_psnr - noisy_psnr}
