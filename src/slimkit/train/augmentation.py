"""The ``augment:`` field of a training config as a loop callback (``data.augment`` holds the
operations): each training batch is augmented after it is drawn, with the fit's generator."""

from __future__ import annotations

from slimkit.data.augment import AugmentConfig, Augmenter
from slimkit.train.callbacks import Callback, FitState


class Augmentation(Callback):
    def __init__(self, cfg: AugmentConfig) -> None:
        self.augmenter = Augmenter(cfg)

    def transform_batch(self, state: FitState, inputs, targets, extras):
        return self.augmenter(inputs, targets, extras, state.generator)
