import math

import pytest
import torch

from model import VAE, VAEConfig
from model.vae import DiagonalGaussian


def test_shapes(vae: VAE, images: torch.Tensor) -> None:
    posterior = vae.encode(images)
    for t in (posterior.mean, posterior.variance, posterior.log_variance):
        assert t.shape == (6, 4)
    assert torch.allclose(posterior.variance, posterior.log_variance.exp())
    assert posterior.sample().shape == (6, 4)
    assert posterior.kl().shape == (6,)
    z = torch.randn(6, 4)
    assert vae.decode_logits(z).shape == (6, 1, 28, 28)
    pixels = vae.decode(z)
    assert pixels.shape == (6, 1, 28, 28) and pixels.min() >= 0 and pixels.max() <= 1
    assert torch.allclose(pixels, torch.sigmoid(vae.decode_logits(z)))


def test_config_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        VAEConfig(height=30)
    with pytest.raises(ValueError, match="latent_dim"):
        VAEConfig(latent_dim=0)


def test_analytic_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    q = DiagonalGaussian(torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g))
    z = q.mean + q.std * torch.randn(200_000, 3, 5, generator=g)
    prior = -0.5 * (math.log(2 * math.pi) + z.pow(2)).sum(-1)
    mc = (q.log_prob(z) - prior).mean(0)
    assert (q.kl() >= 0).all()
    assert torch.allclose(q.kl(), mc, atol=0.05)


def test_kl_is_zero_for_the_prior() -> None:
    q = DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.equal(q.kl(), torch.zeros(2))


def test_elbo_terms(vae: VAE, images: torch.Tensor) -> None:
    terms = vae.elbo(images, generator=torch.Generator().manual_seed(0))
    assert (terms.reconstruction >= 0).all() and (terms.kl >= 0).all()
    assert torch.allclose(terms.elbo, -(terms.reconstruction + terms.kl))


@torch.no_grad()
def test_elbo_below_iwae_bound_which_rises_with_k(vae: VAE, images: torch.Tensor) -> None:
    # A posterior that is off the true one (narrow, shifted) leaves room for the IWAE bound to tighten.
    vae.encoder.out.bias.data = torch.tensor([1.0] * 4 + [-2.0] * 4)
    def mean_bound(k: int) -> float:
        g = torch.Generator().manual_seed(0)
        return torch.stack([vae.iwae(images, k, generator=g) for _ in range(5)]).mean().item()

    elbo = torch.stack([vae.elbo(images, generator=torch.Generator().manual_seed(s)).elbo for s in range(20)]).mean()
    b1, b10, b100 = mean_bound(1), mean_bound(10), mean_bound(100)
    assert abs(b1 - elbo.item()) < 0.5  # L_1 is the ELBO (Burda et al., eq. 8)
    assert elbo.item() < b10 < b100


@torch.no_grad()
def test_iwae_chunking_does_not_change_the_bound(vae: VAE, images: torch.Tensor) -> None:
    # Chunks draw their noise in other shapes, so the two are different estimates of one bound.
    whole = vae.iwae(images, 64, generator=torch.Generator().manual_seed(3))
    chunked = vae.iwae(images, 64, generator=torch.Generator().manual_seed(3), max_elements=6 * 784 * 5)
    again = vae.iwae(images, 64, generator=torch.Generator().manual_seed(3), max_elements=6 * 784 * 5)
    assert torch.equal(chunked, again)
    assert torch.allclose(whole, chunked, atol=0.3)


def test_same_generator_seed_gives_identical_samples(vae: VAE) -> None:
    a = vae.sample(5, generator=torch.Generator().manual_seed(7))
    b = vae.sample(5, generator=torch.Generator().manual_seed(7))
    c = vae.sample(5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_conditional_vae_needs_valid_labels(cvae: VAE, images: torch.Tensor) -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert cvae.encode(images, labels).mean.shape == (6, 4)
    assert cvae.label_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="needs labels"):
        cvae.encode(images)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cvae.decode(torch.zeros(1, 4), torch.tensor([3]))
    # The label changes what is decoded from the same latent.
    z = torch.zeros(1, 4)
    assert not torch.equal(cvae.decode(z, torch.tensor([0])), cvae.decode(z, torch.tensor([1])))


def test_unconditional_vae_rejects_labels(vae: VAE, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unconditional"):
        vae.encode(images, torch.zeros(6))
