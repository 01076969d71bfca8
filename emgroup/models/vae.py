"""Baselines without a pose model: the VAE (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017, ``--beta 4``).

MLP encoder and decoder of the same width and depth as spatial-VAE's. Parameter counts at z_dim 2, hidden 500,
2 layers, Gaussian likelihood: 50x50 images, VAE 3,007,505 vs spatial-VAE 1,759,512; 40x40, 2,106,605 vs
1,309,512 (within a factor 2: the VAE's decoder needs an output unit per pixel, spatial-VAE's generator one).
"""

from dataclasses import dataclass

from emgroup.models import losses
from emgroup.models.base import Model, option
from emgroup.models.mlp import MLPConfig, mlp, noise_log_sigma, sample_gaussian


@dataclass
class VAEConfig(MLPConfig):
    beta: float = option(1.0, "Weight of the KL term (1: VAE; 4: beta-VAE).")


class VAE(Model):
    """q(z|x) = N(mu(x), sigma(x)^2), p(z) = N(0, I), p(x|z) from an MLP decoder; loss = NLL + beta * KL."""

    name = "vae"
    Config = VAEConfig

    def __init__(self, config: VAEConfig, box: int):
        super().__init__(config, box)
        self.encoder = mlp(box * box, config.hidden, config.layers, 2 * config.z_dim)
        self.decoder = mlp(config.z_dim, config.hidden, config.layers, box * box)
        self.log_sigma = noise_log_sigma(config.likelihood)

    def loss(self, batch):
        images = batch["images"]
        mu, logstd = self.encoder(self.encoder_input(images, batch.get("ctf_parameters")).flatten(1)).chunk(2, dim=1)
        output = self.decoder(sample_gaussian(mu, logstd)).view_as(images)
        recon = losses.image_nll(self.config.likelihood, self.observed(output, batch), images, self.log_sigma).mean()
        kl = losses.gaussian_kl(mu, logstd).sum(1).mean()
        return {"loss": recon + self.config.beta * kl, "recon": recon, "kl": kl}

    def encode(self, images, ctf_parameters=None):
        """Posterior means ``z`` and stds ``z_std`` (N, k)."""
        mu, logstd = self.encoder(self.encoder_input(images, ctf_parameters).flatten(1)).chunk(2, dim=1)
        return {"z": mu, "z_std": logstd.exp()}

    def decode(self, latent):
        """Expected images (N, D, D) at ``z`` (no pose: any pose entries are ignored)."""
        z = latent["z"]
        return losses.mean_image(self.config.likelihood, self.decoder(z).view(len(z), self.box, self.box))
