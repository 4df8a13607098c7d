"""Model families registered by name (timm style): ``create_model(name, num_classes=...)``."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from slimkit.core.registry import MODELS

# Importing the family modules registers them. Keep these imports light (torch only).
from slimkit.zoo import (  # noqa: F401  (registration side effects)
    arch, efficientnet, isotropic, lenet, minilm, mobilenet, recurrent, resnet, shufflenet, small, squeezenet,
)


def list_models() -> list[str]:
    """Names of every registered model."""
    return MODELS.names()


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names get a did-you-mean error."""
    return MODELS.get(name)(**kwargs)


__all__ = ["create_model", "list_models"]
