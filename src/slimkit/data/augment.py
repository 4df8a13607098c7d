"""Data augmentation on tensors, per training batch (``finetune: {augment: ...}``).

The image operations are kornia's (0.9: batched, on any device, differentiable): flips, padded
random crops, affine (rotation, translation, scale), brightness and contrast, cutout (random
erasing), and the RandAugment / TrivialAugment policies. slimkit adds what a training loop needs
around them:

- **Value range.** kornia's photometric operations assume images in [0, 1] and its geometric ones
  fill with 0. Tasks normalise differently (MNIST here is standardised: background -0.42), so
  every batch is mapped to [0, 1] with the training data's range (taken from the first batch, or
  ``value_range``), augmented, and mapped back: padding is background and brightness keeps its
  meaning.
- **Mixup and CutMix** with their loss handling: the batch carries, per row, the second label and
  the weight of the first (``mix_targets``, ``mix_weight`` in ``Batch.extras``); the task loss
  becomes ``w * loss(out, y_a) + (1 - w) * loss(out, y_b)`` row by row through soft targets
  (``mixed_soft_targets``). kornia's two operations state their lambda with opposite meanings
  (MixUp: the share of the second image; CutMix with ``use_correct_lambda``: the share of the
  first); both are turned into the first label's weight here (tested against the pixels).
- **Seeded, training only.** Random draws come from the fit's generator (the same batches on every
  run and on every torchrun rank); ``transform_batch`` is never called for validation.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from slimkit.core.config import Config
from slimkit.core.errors import ConfigError


class AugmentConfig(Config):
    flip: bool = Field(False, description="random horizontal flips (not for digits or text)")
    crop: int = Field(0, ge=0, description="random crops after padding each side by this many pixels")
    rotate: float = Field(0.0, ge=0, le=180, description="random rotation up to +-degrees")
    translate: float = Field(0.0, ge=0, le=0.5, description="random translation up to this fraction of the size")
    scale: float = Field(0.0, ge=0, lt=1, description="random zoom by up to +-this fraction")
    brightness: float = Field(0.0, ge=0, le=1, description="random brightness shift up to +-this")
    contrast: float = Field(0.0, ge=0, le=1, description="random contrast factor in 1 +- this")
    cutout: float = Field(0.0, ge=0, lt=1, description="erase a random rectangle of up to this area fraction")
    p: float = Field(0.5, gt=0, le=1, description="probability of each operation above")
    policy: Literal["randaugment", "trivialaugment"] | None = Field(
        None, description="an automatic policy, applied after the operations above")
    policy_ops: int = Field(2, ge=1, le=5, description="RandAugment: operations per image (N)")
    policy_magnitude: int = Field(9, ge=0, le=30, description="RandAugment: magnitude (M, of 30)")
    mix: Literal["mixup", "cutmix"] | None = Field(None, description="mix pairs of images and their labels")
    mix_alpha: float = Field(1.0, gt=0, description="cutmix: Beta(alpha, alpha) for the pasted area (mixup draws "
                                                     "its weight uniformly: Beta(1, 1), the paper's alpha = 1)")
    mix_p: float = Field(1.0, gt=0, le=1, description="probability that a batch is mixed")
    value_range: list[float] | None = Field(
        None, min_length=2, max_length=2,
        description="the inputs' [low, high] (default: the first training batch's minimum and maximum)")

    @model_validator(mode="after")
    def _range_ordered(self) -> "AugmentConfig":
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"value_range: low must be below high, got {list(self.value_range)}")
        return self

    def is_empty(self) -> bool:
        return not self.pipeline_ops() and self.policy is None and self.mix is None

    def pipeline_ops(self) -> list[str]:
        return [name for name, on in (("flip", self.flip), ("crop", self.crop), ("affine", self.rotate or
                                      self.translate or self.scale), ("brightness", self.brightness),
                                      ("contrast", self.contrast), ("cutout", self.cutout)) if on]


def build_pipeline(cfg: AugmentConfig, size: tuple[int, int]) -> nn.Module | None:
    """The kornia operations of ``cfg`` for images of ``size`` (H, W) in [0, 1], or None."""
    import kornia.augmentation as K

    ops: list[nn.Module] = []
    if cfg.flip:
        ops.append(K.RandomHorizontalFlip(p=cfg.p))
    if cfg.crop:
        ops.append(K.RandomCrop(size, padding=cfg.crop, p=cfg.p))
    if cfg.rotate or cfg.translate or cfg.scale:
        ops.append(K.RandomAffine(degrees=cfg.rotate, translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                                  scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None, p=cfg.p))
    if cfg.brightness:
        ops.append(K.RandomBrightness(brightness=(1 - cfg.brightness, 1 + cfg.brightness), p=cfg.p))
    if cfg.contrast:
        ops.append(K.RandomContrast(contrast=(1 - cfg.contrast, 1 + cfg.contrast), p=cfg.p))
    if cfg.cutout:
        ops.append(K.RandomErasing(scale=(0.02, cfg.cutout), p=cfg.p))
    if cfg.policy is not None:
        from kornia.augmentation.auto import RandAugment, TrivialAugment

        ops.append(RandAugment(n=cfg.policy_ops, m=cfg.policy_magnitude) if cfg.policy == "randaugment"
                   else TrivialAugment())
    return nn.Sequential(*ops) if ops else None


def mix_batch(cfg: AugmentConfig, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of a batch: (mixed images, the second label of each row, the first label's
    weight per row)."""
    import kornia.augmentation as K

    if cfg.mix == "mixup":
        op = K.RandomMixUpV2(lambda_val=(0.0, 1.0), p=cfg.mix_p, data_keys=["input", "class"])  # Beta(1, 1)
        mixed, labels = op(x, y)
        return mixed, labels[:, 1].long(), 1.0 - labels[:, 2]  # kornia's lambda: the second image's share
    op = K.RandomCutMixV2(beta=cfg.mix_alpha, p=cfg.mix_p, data_keys=["input", "class"], use_correct_lambda=True)
    mixed, labels = op(x, y)
    labels = labels[0]
    return mixed, labels[:, 1].long(), labels[:, 2]  # here the lambda is the first image's share


def mixed_soft_targets(targets: torch.Tensor, second: torch.Tensor, weight: torch.Tensor, classes: int) -> torch.Tensor:
    """Per row ``weight * onehot(targets) + (1 - weight) * onehot(second)``: with cross-entropy
    this is exactly ``w * CE(y_a) + (1 - w) * CE(y_b)``."""
    eye = torch.eye(classes, device=targets.device, dtype=torch.float32)
    w = weight.to(eye.device, torch.float32)[:, None]
    return w * eye[targets] + (1 - w) * eye[second]


class Augmenter:
    """Applies ``cfg`` to training batches (the ``Augmentation`` callback calls it)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self.pipeline: nn.Module | None = None
        self.range: tuple[float, float] | None = tuple(cfg.value_range) if cfg.value_range else None
        self._ready = False

    def _prepare(self, x: torch.Tensor) -> None:
        try:
            import kornia  # noqa: F401
        except ImportError:
            raise ConfigError("augment needs kornia: pip install 'slimkit[augment]'") from None
        if not x.is_floating_point() or x.dim() != 4:
            raise ConfigError(f"augment: works on image batches [batch, channels, height, width] of floats; this "
                              f"task's first input is {tuple(x.shape)} {x.dtype}")
        if self.cfg.policy is not None and x.shape[1] not in (1, 3):
            raise ConfigError(f"augment.policy: {self.cfg.policy} needs 1 or 3 channels, got {x.shape[1]}")
        if self.range is None:
            lo, hi = float(x.min()), float(x.max())
            self.range = (min(lo, 0.0), max(hi, 1.0)) if lo >= -1e-6 and hi <= 1 + 1e-6 else (lo, hi)
        self.pipeline = build_pipeline(self.cfg, (x.shape[2], x.shape[3]))
        if self.pipeline is not None:
            self.pipeline.to(x.device)
        self._ready = True

    def __call__(self, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor, extras: dict[str, Any],
                 generator: torch.Generator):
        x = inputs[0]
        if not self._ready:
            self._prepare(x)
        if self.cfg.mix is not None and (targets.dtype != torch.int64 or targets.dim() != 1):
            raise ConfigError("augment.mix: mixup and cutmix need integer class labels")
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        lo, hi = self.range
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(seed)
            z = ((x - lo) / (hi - lo)).clamp(0, 1)
            if self.pipeline is not None:
                z = self.pipeline(z)
            if self.cfg.mix is not None:
                z, second, weight = mix_batch(self.cfg, z, targets)
                extras = {**extras, "mix_targets": second.to(targets.device), "mix_weight": weight.to(z.device)}
            x = z * (hi - lo) + lo
        return (x.to(inputs[0].dtype), *inputs[1:]), targets, extras
