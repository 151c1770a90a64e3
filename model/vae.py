"""A convolutional Variational Autoencoder (Kingma & Welling, arXiv 1312.6114).

Reads top to bottom: the config, the diagonal-Gaussian posterior, the encoder and
decoder blocks, then the VAE with its bounds (ELBO and the IWAE bound of Burda et al.,
arXiv 1509.00519). Likelihood p(x|z) is an independent Bernoulli per pixel.
Passing `num_classes > 0` makes it a conditional VAE (Sohn et al. 2015; Doersch §3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig:
    channels: int = 1
    height: int = 28
    width: int = 28
    latent_dim: int = 32
    conv_channels: int = 32  # width of the first conv; the second has twice as many
    hidden: int = 512  # width of the dense layer between convs and latents
    num_classes: int = 0  # 0: unconditional; > 0: conditional on a class label

    def __post_init__(self) -> None:
        if self.height % 4 or self.width % 4:
            raise ValueError(f"height and width must be multiples of 4, got {self.height}x{self.width}")
        for name in ("channels", "latent_dim", "conv_channels", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def pixels(self) -> int:
        return self.channels * self.height * self.width

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(variance)), as in diffusers' DiagonalGaussianDistribution."""

    def __init__(self, mean: torch.Tensor, log_variance: torch.Tensor) -> None:
        self.mean = mean
        # The clamp keeps exp() finite for inputs far off the training data.
        self.log_variance = log_variance.clamp(-30.0, 20.0)
        self.variance = self.log_variance.exp()
        self.std = (0.5 * self.log_variance).exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw z = mean + std * eps (Kingma & Welling, eq. 10)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def draws(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """k reparameterised draws of every row, [k, *mean.shape]: the IWAE's samples."""
        eps = torch.randn((k, *self.mean.shape), generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """Analytic KL(q || N(0, I)) per row, in nats (Kingma & Welling, appendix B)."""
        return 0.5 * (self.mean.pow(2) + self.variance - 1.0 - self.log_variance).sum(dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over latent dims; z may carry extra leading sample dims."""
        return -0.5 * (LOG_2PI + self.log_variance + (z - self.mean).pow(2) / self.variance).sum(dim=-1)


class ELBOTerms(NamedTuple):
    reconstruction: torch.Tensor  # -E_q[log p(x|z)] per row, nats (>= 0)
    kl: torch.Tensor  # KL(q(z|x) || p(z)) per row, nats (>= 0)
    elbo: torch.Tensor  # -(reconstruction + kl) per row, nats


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + z.pow(2)).sum(dim=-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) summed over pixels. Grey levels x in [0, 1] are Bernoulli means, so this
    is the expected log-likelihood over binarisations of x (exact for binary x)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(-3).sum(-1)


def seeded(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator: same seed and device, same draws. The service gives each request its
    own, so what a request draws never depends on what it was batched with."""
    return torch.Generator(device=device).manual_seed(seed)


def elbo_terms(log_likelihood: torch.Tensor, posterior: DiagonalGaussian) -> ELBOTerms:
    """The ELBO's terms from log p(x|z) at one posterior draw per row (Kingma & Welling, eq. 7)."""
    reconstruction = -log_likelihood
    kl = posterior.kl()
    return ELBOTerms(reconstruction, kl, -(reconstruction + kl))


def log_importance_weights(log_likelihood: torch.Tensor, z: torch.Tensor, posterior: DiagonalGaussian) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) per sample: the IWAE's log-weights (Burda et al., eq. 8)."""
    return log_likelihood + standard_normal_log_prob(z) - posterior.log_prob(z)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_i w_i over the k samples of dim 0 (Burda et al., eq. 8), in nats."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config.conv_channels
        self.convs = nn.Sequential(
            nn.Conv2d(config.channels, c, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Flatten(),
        )
        features = 2 * c * (config.height // 4) * (config.width // 4)
        self.dense = nn.Sequential(nn.Linear(features + config.num_classes, config.hidden), nn.GELU())
        self.out = nn.Linear(config.hidden, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(x)
        if onehot is not None:
            h = torch.cat([h, onehot], dim=1)
        mean, log_variance = self.out(self.dense(h)).chunk(2, dim=1)
        return mean, log_variance


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config.conv_channels
        self.grid = (2 * c, config.height // 4, config.width // 4)
        self.dense = nn.Sequential(
            nn.Linear(config.latent_dim + config.num_classes, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, math.prod(self.grid)),
            nn.GELU(),
        )
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(c, config.channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        return self.deconvs(self.dense(z).view(-1, *self.grid))


class VAE(nn.Module):
    def __init__(self, config: VAEConfig, label_names: list[str] | None = None) -> None:
        super().__init__()
        self.config = config
        if config.num_classes and label_names is None:
            label_names = [str(i) for i in range(config.num_classes)]
        if len(label_names or []) != config.num_classes:
            raise ValueError(f"{len(label_names or [])} label names given for num_classes={config.num_classes}")
        self.label_names: list[str] = list(label_names or [])
        self.metadata: dict = {}  # what a checkpoint recorded about training and evaluation
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def _onehot(self, labels: torch.Tensor | None, rows: int) -> torch.Tensor | None:
        if not self.config.num_classes:
            if labels is not None:
                raise ValueError("labels given to an unconditional VAE")
            return None
        if labels is None:
            raise ValueError("a conditional VAE needs labels")
        labels = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        if labels.numel() != rows:
            raise ValueError(f"{labels.numel()} labels for {rows} rows")
        if labels.min() < 0 or labels.max() >= self.config.num_classes:
            raise ValueError(f"labels must lie in [0, {self.config.num_classes})")
        return F.one_hot(labels, self.config.num_classes).to(self.dtype)

    @property
    def device(self) -> torch.device:
        return self.decoder.deconvs[-1].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.deconvs[-1].weight.dtype

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        """q(z|x) for x of shape [B, C, H, W] with values in [0, 1]."""
        mean, log_variance = self.encoder(x, self._onehot(labels, x.shape[0]))
        return DiagonalGaussian(mean, log_variance)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli logits of p(x|z), shape [B, C, H, W]."""
        return self.decoder(z, self._onehot(labels, z.shape[0]))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel means E[x|z] in [0, 1]: what an image of z shows."""
        return torch.sigmoid(self.decode_logits(z, labels))

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z) per row, nats: row i of x (with its label) under latent z[i]."""
        return bernoulli_log_likelihood(self.decode_logits(z, labels), x)

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z) = N(0, I), [n, latent_dim]."""
        return torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)

    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Pixel means of n draws z ~ N(0, temperature^2 I)."""
        return self.decode(temperature * self.prior(n, generator), labels)

    def elbo(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> ELBOTerms:
        """Per-row ELBO = E_q[log p(x|z)] - KL(q || p) (Kingma & Welling, eq. 7), one-sample estimate."""
        posterior = self.encode(x, labels)
        return elbo_terms(self.log_likelihood(posterior.sample(generator), x, labels), posterior)

    def iwae(
        self,
        x: torch.Tensor,
        k: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        max_elements: int = 1 << 24,
    ) -> torch.Tensor:
        """Per-row IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i|x) (Burda et al., eq. 8), in nats.

        Samples are decoded in chunks of at most `max_elements` pixels, so memory stays bounded
        for any k; only the [k, rows] log-weights are kept whole.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        rows = x.shape[0]
        posterior = self.encode(x, labels)
        chunk = max(1, min(k, max_elements // max(1, rows * self.config.pixels)))
        log_weights = []
        for start in range(0, k, chunk):
            s = min(chunk, k - start)
            z = posterior.draws(s, generator)  # [s, rows, latent]
            repeated = None if labels is None else torch.as_tensor(labels, device=x.device).repeat(s)
            log_likelihood = self.log_likelihood(z.flatten(0, 1), x.repeat(s, 1, 1, 1), repeated).view(s, rows)
            log_weights.append(log_importance_weights(log_likelihood, z, posterior))
        return iwae_bound(torch.cat(log_weights))
