"""Training hyper-parameters, shared by baseline training and every step that trains."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slimkit.core.config import Config


class TrainConfig(Config):
    epochs: int = Field(10, ge=0, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="examples per forward pass")
    accumulate: int = Field(1, ge=1, description="batches whose gradients are summed per optimizer step "
                                                 "(effective batch: batch_size * accumulate)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    weight_decay: float = Field(0.0, ge=0, description="L2 / decoupled weight decay")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule over all steps")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    keep_best: bool = Field(True, description="restore the weights of the epoch with the best validation quality")
