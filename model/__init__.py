"""The VAE: definition, data, checkpoints, training and evaluation."""

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.vae import VAE, DiagonalGaussian, ELBOTerms, VAEConfig

__all__ = ["VAE", "CheckpointError", "DiagonalGaussian", "ELBOTerms", "VAEConfig", "load_checkpoint", "save_checkpoint"]
