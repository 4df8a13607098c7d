"""The LeNets of the classic compression papers (Han et al. 2015/2016, Louizos et al. 2017)."""

from __future__ import annotations

import torch.nn as nn

from slimkit.core.registry import MODELS


@MODELS.register("lenet_300_100")
def lenet_300_100(num_classes: int = 10, in_features: int = 784) -> nn.Module:
    """LeNet-300-100: a 784-300-100-10 MLP with ReLU (266,610 parameters on MNIST)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register("lenet5")
def lenet5(num_classes: int = 10, in_chans: int = 1, widths: tuple[int, int, int] = (20, 50, 500)) -> nn.Module:
    """Caffe's LeNet-5 (conv20-pool-conv50-pool-fc500-fc10; 431,080 parameters on MNIST).
    ``widths`` sets the two conv widths and the hidden layer: (6, 16, 120) is LeCun et al.'s 1998
    layout at 34,622 parameters, the small student of the distillation benchmark."""
    c1, c2, hidden = widths
    return nn.Sequential(
        nn.Conv2d(in_chans, c1, 5), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
