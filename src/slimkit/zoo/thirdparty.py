"""Third-party architectures, built tiny from ``transformers`` config classes (random weights, no
download), wrapped to take one tensor and return logits: what a user pointing slimkit at a Hugging
Face model builds in three lines. The conformance suite runs every step over these families
(``tests/techniques/test_thirdparty.py``) and ``benchmarks/thirdparty.py`` prints which step x
family x runtime works; a user's recipe may name one as a custom task's model
(``model: slimkit.zoo.thirdparty:make_model``, ``model_args: {family: vit}``).

``transformers`` is imported only when a family is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError

IMAGE_SIZE = 32  # vision families take [N, 3, 32, 32]
VOCAB, TOKENS = 64, 16  # text families take [N, 16] token ids below 64


class Logits(nn.Module):
    """A ``transformers`` model called with one tensor (``pixel_values`` or ``input_ids``), returning
    its ``logits`` tensor: the three lines a user writes around a Hugging Face model."""

    def __init__(self, model: nn.Module, input_name: str) -> None:
        super().__init__()
        self.hf = model
        self.input_name = input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(**{self.input_name: x}).logits


@dataclass(frozen=True)
class Family:
    name: str
    modality: Literal["image", "tokens"]
    config: str  # the transformers config class ("" for a hand-written module)
    model: str  # the transformers model class, or the hand-written module's class here
    fields: dict[str, Any]
    note: str = ""  # what is odd about it (grouped convs, relative positions, ...)
    wrapped: bool = True  # False: the transformers model as it comes (it returns a ModelOutput)

    def build(self, num_classes: int = 10, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        if not self.config:
            return globals()[self.model](num_classes=num_classes, **self.fields).eval()
        import transformers

        config = getattr(transformers, self.config)(num_labels=num_classes, **self.fields)
        model = getattr(transformers, self.model)(config).eval()
        return Logits(model, "pixel_values" if self.modality == "image" else "input_ids") if self.wrapped else model

    def example(self, n: int = 2, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if self.modality == "image":
            return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        return torch.randint(0, VOCAB, (n, TOKENS), generator=g)


_VIT = dict(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64)
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=TOKENS + 4)
_CNN = dict(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("vit", "image", "ViTConfig", "ViTForImageClassification", _VIT),
    Family("deit", "image", "DeiTConfig", "DeiTForImageClassification", _VIT,
           "its forward reads projection.weight.dtype"),
    Family("beit", "image", "BeitConfig", "BeitForImageClassification",
           {**_VIT, "use_relative_position_bias": True}, "relative position bias"),
    Family("dinov2", "image", "Dinov2Config", "Dinov2ForImageClassification", {**_VIT, "mlp_ratio": 2}),
    Family("swin", "image", "SwinConfig", "SwinForImageClassification",
           dict(image_size=IMAGE_SIZE, patch_size=2, num_channels=3, embed_dim=16, depths=[1, 1],
                num_heads=[2, 2], window_size=4, mlp_ratio=4.0), "shifted windows (non-contiguous views)"),
    Family("convnext", "image", "ConvNextConfig", "ConvNextForImageClassification",
           dict(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=4), "depthwise 7x7, LayerNorm"),
    Family("regnet", "image", "RegNetConfig", "RegNetForImageClassification",
           dict(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
           "grouped convolutions, squeeze-excitation"),
    Family("resnet", "image", "ResNetConfig", "ResNetForImageClassification", _CNN),
    Family("mobilenet_v2", "image", "MobileNetV2Config", "MobileNetV2ForImageClassification",
           dict(num_channels=3, image_size=IMAGE_SIZE, depth_multiplier=0.25, min_depth=4, finegrained_output=False),
           "depthwise separable, ReLU6"),
    Family("mobilevit", "image", "MobileViTConfig", "MobileViTForImageClassification",
           dict(num_channels=3, image_size=IMAGE_SIZE, patch_size=2, hidden_sizes=[16, 24, 32],
                neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], num_attention_heads=2), "convolutions and attention"),
    Family("efficientnet", "image", "EfficientNetConfig", "EfficientNetForImageClassification",
           dict(num_channels=3, image_size=IMAGE_SIZE, width_coefficient=0.25, depth_coefficient=0.25,
                hidden_dim=320), "depthwise, squeeze-excitation, SiLU"),
    Family("bert", "tokens", "BertConfig", "BertForSequenceClassification", _TEXT),
    Family("distilbert", "tokens", "DistilBertConfig", "DistilBertForSequenceClassification",
           dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=TOKENS + 4)),
    Family("roberta", "tokens", "RobertaConfig", "RobertaForSequenceClassification",
           {**_TEXT, "max_position_embeddings": TOKENS + 6}, "position ids from the padding index"),
    Family("albert", "tokens", "AlbertConfig", "AlbertForSequenceClassification",
           {**_TEXT, "embedding_size": 16}, "one layer's weights shared by every layer"),
    Family("deberta_v2", "tokens", "DebertaV2Config", "DebertaV2ForSequenceClassification",
           {**_TEXT, "relative_attention": True, "position_buckets": 8, "pos_att_type": ["p2c", "c2p"]},
           "disentangled relative-position attention"),
]}


class SharedTwice(nn.Module):
    """One Linear applied twice (tied weights): a step must treat it as one layer."""

    def __init__(self, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.inp = nn.Linear(8 * 16 * 16, hidden)
        self.shared = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(torch.relu(self.stem(x)).flatten(1)))
        h = torch.relu(self.shared(h))
        return self.head(torch.relu(self.shared(h)) + h)


class FunctionalConv(nn.Module):
    """Convolution weights held as bare parameters and applied with ``F.conv2d``: no module to swap."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 3, 3, 3) * 0.2)
        self.b1 = nn.Parameter(torch.zeros(16))
        self.conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.conv2d(x, self.w1, self.b1, stride=2, padding=1).relu()
        return self.head(self.conv(h).relu().mean((2, 3)))


class InPlace(nn.Module):
    """In-place activations and an in-place residual add."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).relu_()
        y = self.bn(self.body(h))
        y += h
        return self.head(y.relu_().mean((2, 3)))


class DictOutput(nn.Module):
    """Returns ``{"logits": ..., "features": ...}``: slimkit trains, scores and exports the logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.fc(torch.relu(self.stem(x)).mean((2, 3))))
        return {"features": features, "logits": self.head(features)}


FAMILIES.update({f.name: f for f in [
    Family("vit_unwrapped", "image", "ViTConfig", "ViTForImageClassification", _VIT,
           "the transformers model as it comes: returns a ModelOutput", wrapped=False),
    Family("shared_twice", "image", "", "SharedTwice", {}, "one Linear used twice"),
    Family("functional_conv", "image", "", "FunctionalConv", {}, "F.conv2d on bare parameters"),
    Family("in_place", "image", "", "InPlace", {}, "in-place activations and residual add"),
    Family("dict_output", "image", "", "DictOutput", {}, "returns a dict"),
]})


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown third-party family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def make_model(name: str = "vit", num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A custom task's model factory: ``model: slimkit.zoo.thirdparty:make_model``,
    ``model_args: {name: vit}``."""
    return family(name).build(num_classes=num_classes, seed=seed)
