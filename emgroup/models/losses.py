"""Loss terms shared by the models: Gaussian KL divergences and per-image log-likelihoods.

Every function returns per-element or per-image values (no batch reduction), so models can weight them.
"""

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu, logstd, prior_mu=0.0, prior_std=1.0):
    """KL( N(mu, exp(logstd)^2) || N(prior_mu, prior_std^2) ), elementwise."""
    var_ratio = torch.exp(2 * logstd) / prior_std**2
    return 0.5 * (var_ratio + (mu - prior_mu) ** 2 / prior_std**2 - 1) - logstd + math.log(prior_std)


def angle_kl_without_mean(logstd, prior_std: float):
    """spatial-VAE's modified KL for an angle with no preferred value (Bepler et al. 2019, eq. 3):
    the Gaussian KL to N(., prior_std^2) with the mean term dropped, elementwise."""
    return 0.5 * (torch.exp(2 * logstd) / prior_std**2 - 1) - logstd + math.log(prior_std)


def bernoulli_nll(logits, images):
    """-log p(images | logits) per image, summed over pixels: (N, ...) -> (N,). Images in [0, 1]."""
    nll = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
    return nll.flatten(1).sum(1)


def gaussian_nll(mean, images, log_sigma):
    """-log N(images | mean, sigma^2) per image, summed over pixels: (N, ...) -> (N,). ``log_sigma`` scalar."""
    sq = ((images - mean) ** 2).flatten(1)
    return 0.5 * sq.sum(1) * torch.exp(-2 * log_sigma) + sq.shape[1] * (log_sigma + 0.5 * LOG_2PI)


def image_nll(likelihood: str, output, images, log_sigma=None):
    """Per-image negative log-likelihood for ``likelihood`` in {"bernoulli", "gaussian"}."""
    if likelihood == "bernoulli":
        return bernoulli_nll(output, images)
    return gaussian_nll(output, images, log_sigma)


def mean_image(likelihood: str, output):
    """The expected image from a generator's raw output (sigmoid of logits for Bernoulli)."""
    return torch.sigmoid(output) if likelihood == "bernoulli" else output
