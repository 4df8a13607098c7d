"""scikit-learn's bundled 8x8 digits (1,797 images), scaled to [0, 1]."""

from __future__ import annotations

import numpy as np

from slimkit.data.base import DataSplits, stratified_split

DATA_SEED = 0  # the split is part of the task definition: fixed, independent of the run seed


def load_digits_splits(image: bool) -> DataSplits:
    """Stratified 60/20/20 split; ``image`` gives [N, 1, 8, 8], else flat [N, 64]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    x = x[:, None, :, :] if image else x.reshape(len(x), -1)
    return stratified_split(x, bunch.target, val=0.2, test=0.2, seed=DATA_SEED)
