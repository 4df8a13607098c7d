"""A small conditional generator: a class-conditional variational autoencoder (Kingma & Welling
2014; conditional as in Sohn et al. 2015), the synthetic-data source every step can train on.

``ConditionalVAE(input_shape, num_classes)`` encodes an input and its one-hot class into a
Gaussian posterior over ``latent`` dimensions and decodes a latent code and a class back into an
input. New rows of a chosen class are decoded from ``z ~ N(0, I)``. Two bodies:

- ``mlp`` (any input shape: flattened), two hidden layers each way;
- ``conv`` (images ``C x H x W`` with H and W divisible by 4): two stride-2 convolutions down,
  two transposed convolutions up.

Inputs are modelled standardised (per-feature mean and standard deviation of the training rows,
fitted by ``fit_normalisation``), and decoded rows are clamped to the per-feature range seen in
training, so generated rows live in the same value range as real ones whatever the task's
normalisation. ``forward(x, y)`` returns the reconstruction in the standardised space and keeps
the posterior of that call in ``self.posterior`` for the training objective
(``slimkit.train.generative.ELBOLoss``), which reads it there: the one training loop sees a single
output tensor.

Written here, not taken from a library: a conditional VAE is forty lines of torch, and the
packages that ship one (pythae, PyTorch-VAE) are research collections with pinned old torch.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError


class ConditionalVAE(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, *, latent: int = 16, hidden: int = 512,
                 arch: Literal["mlp", "conv"] = "mlp") -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes, self.latent, self.arch = int(num_classes), int(latent), arch
        if num_classes < 1 or latent < 1 or hidden < 1:
            raise ConfigError(f"ConditionalVAE: num_classes, latent and hidden must be >= 1 "
                              f"(got {num_classes}, {latent}, {hidden})")
        features = math.prod(self.input_shape)
        if arch == "mlp":
            self.encoder = nn.Sequential(nn.Linear(features + num_classes, hidden), nn.SiLU(),
                                         nn.Linear(hidden, hidden), nn.SiLU())
            self.decoder = nn.Sequential(nn.Linear(latent + num_classes, hidden), nn.SiLU(),
                                         nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, features))
            code = hidden
        elif arch == "conv":
            if len(self.input_shape) != 3 or self.input_shape[1] % 4 or self.input_shape[2] % 4:
                raise ConfigError(f"ConditionalVAE arch 'conv' needs images C x H x W with H and W divisible by 4, "
                                  f"got {self.input_shape} (use arch 'mlp')")
            c, h, w = self.input_shape
            width = max(32, hidden // 16)
            self._grid = (2 * width, h // 4, w // 4)
            code = 2 * width * (h // 4) * (w // 4)
            # the class enters the encoder as constant extra channels, the decoder as part of its input code
            self.encoder = nn.Sequential(nn.Conv2d(c + num_classes, width, 4, 2, 1), nn.SiLU(),
                                         nn.Conv2d(width, 2 * width, 4, 2, 1), nn.SiLU(), nn.Flatten())
            self.decoder = nn.Sequential(nn.Linear(latent + num_classes, code), nn.SiLU(),
                                         nn.Unflatten(1, self._grid),
                                         nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.SiLU(),
                                         nn.ConvTranspose2d(width, c, 4, 2, 1), nn.Flatten())
        else:
            raise ConfigError(f"ConditionalVAE: arch must be 'mlp' or 'conv', got {arch!r}")
        self.to_mean = nn.Linear(code, latent)
        self.to_logvar = nn.Linear(code, latent)
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_std", torch.ones(features))
        self.register_buffer("feature_min", torch.full((features,), -math.inf))
        self.register_buffer("feature_max", torch.full((features,), math.inf))
        self.posterior: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def fit_normalisation(self, x: torch.Tensor) -> None:
        """Per-feature mean, standard deviation (floored: constant pixels) and range of ``x``."""
        flat = x.reshape(len(x), -1).float()
        if flat.shape[1] != self.feature_mean.numel():
            raise ConfigError(f"ConditionalVAE: rows of shape {tuple(x.shape[1:])}, expected {self.input_shape}")
        std = flat.std(0)
        self.feature_mean.copy_(flat.mean(0))
        self.feature_std.copy_(std.clamp_min(max(float(std.mean()) * 0.05, 1e-6)))
        self.feature_min.copy_(flat.amin(0))
        self.feature_max.copy_(flat.amax(0))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1).float() - self.feature_mean) / self.feature_std

    def _one_hot(self, y: torch.Tensor) -> torch.Tensor:
        if y.dtype.is_floating_point or y.dim() != 1:
            raise ConfigError(f"ConditionalVAE: classes must be one integer per row, got {tuple(y.shape)} {y.dtype}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ConfigError(f"ConditionalVAE: class out of range [0, {self.num_classes}) "
                              f"(got {int(y.min())}..{int(y.max())}; unlabelled rows cannot train a conditional generator)")
        return F.one_hot(y.long(), self.num_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and log-variance for rows ``x`` of classes ``y``."""
        onehot = self._one_hot(y)
        z = self.standardise(x)
        if self.arch == "conv":
            image = z.reshape(len(x), *self.input_shape)
            planes = onehot[:, :, None, None].expand(-1, -1, *self.input_shape[1:])
            code = self.encoder(torch.cat([image, planes], 1))
        else:
            code = self.encoder(torch.cat([z, onehot], 1))
        return self.to_mean(code), self.to_logvar(code).clamp(-12, 8)

    def decode_standardised(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, self._one_hot(y)], 1))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Rows in the data's own scale and range, shaped like the inputs."""
        flat = self.decode_standardised(z, y) * self.feature_std + self.feature_mean
        flat = torch.maximum(torch.minimum(flat, self.feature_max), self.feature_min)
        return flat.reshape(len(z), *self.input_shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The standardised reconstruction of ``x`` (a sample of the posterior when training, its
        mean otherwise); the posterior is kept in ``self.posterior``."""
        mean, logvar = self.encode(x, y)
        self.posterior = (mean, logvar)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        return self.decode_standardised(z, y)

    @torch.no_grad()
    def sample(self, classes: torch.Tensor, *, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """One new row per entry of ``classes``, decoded from ``z ~ N(0, temperature^2 I)``."""
        was = self.training
        self.eval()
        z = torch.randn((len(classes), self.latent), generator=generator) * temperature
        device = self.feature_mean.device
        out = self.decode(z.to(device), classes.to(device))
        self.train(was)
        return out
