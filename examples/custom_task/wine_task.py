"""An example of bringing your own model and data to slimkit (see recipe.yaml beside this file).

The data function returns train/val/test pairs of (inputs, targets); the model function returns
any nn.Module whose forward takes the inputs in order.
"""

import numpy as np
import torch.nn as nn


def make_model(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def load_data():
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.2, stratify=y_rest, random_state=0)
    mean, std = x_train.mean(0), x_train.std(0)  # training rows only: held-out rows must not leak in

    def standardise(part):
        return ((part - mean) / std).astype(np.float32)

    return {"train": (standardise(x_train), y_train), "val": (standardise(x_val), y_val),
            "test": (standardise(x_test), y_test)}
