"""scikit-learn's bundled 8x8 digits (1,797 images), scaled to [0, 1]."""

from __future__ import annotations

import numpy as np

from slimkit.data.base import DataSplits, Split, stratified_split

DATA_SEED = 0  # the split is part of the task definition: fixed, independent of the run seed


def load_digits_splits(image: bool) -> DataSplits:
    """Stratified 60/20/20 split. ``image`` gives [N, 1, 8, 8] in [0, 1]; otherwise flat [N, 64]
    features standardised with the training split's per-pixel mean and std (what an MLP wants)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    x = x[:, None, :, :] if image else x.reshape(len(x), -1)
    splits = stratified_split(x, bunch.target, val=0.2, test=0.2, seed=DATA_SEED)
    if image:
        return splits
    train = splits.train.inputs[0]
    mean, std = train.mean(0), train.std(0).clamp_min(0.1)  # constant border pixels: no blow-up
    return DataSplits(*(Split(((s.inputs[0] - mean) / std,), s.targets) for s in (splits.train, splits.val, splits.test)))


def load_digits_rgb_splits(size: int = 32) -> DataSplits:
    """The digits as [N, 3, size, size] RGB images (bilinear upsampling, grey in every channel):
    the input a vision model from another library expects."""
    import torch.nn.functional as F

    splits = load_digits_splits(image=True)

    def rgb(s: Split) -> Split:
        x = F.interpolate(s.inputs[0], size=(size, size), mode="bilinear", align_corners=False)
        return Split((x.expand(-1, 3, -1, -1).contiguous(),), s.targets)

    return DataSplits(rgb(splits.train), rgb(splits.val), rgb(splits.test))
