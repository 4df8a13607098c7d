"""The shipped sentence corpus, tokenized for MiniLM, with FP32 reference embeddings as targets.

Targets are the unmodified model's embeddings, so quality measures agreement with FP32 and
training against them is embedding distillation. They take a while to compute on 2 cores, so
they are cached (safetensors, keyed by corpus and model hashes) under ``SLIMKIT_CACHE``
(default ``~/.cache/slimkit``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from slimkit.core.io import load_state_dict, save_state_dict
from slimkit.data.base import DataSplits, Split

CORPUS = Path(__file__).parent / "corpus" / "sentences.txt"
SEQ_LEN = 64  # tokens per sentence after padding/truncation (covers the corpus's long sentences)
N_VAL, N_TEST = 500, 1000  # the rest of the corpus is the training split


def load_sentences() -> list[str]:
    lines = CORPUS.read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s]


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def load_minilm_splits() -> DataSplits:
    """Train / val / test splits of the corpus, in file order (the corpus is shuffled once)."""
    from slimkit.zoo.minilm import load_tokenizer, minilm_l6, minilm_path

    sentences = load_sentences()
    tokens = load_tokenizer()(sentences, padding="max_length", truncation=True, max_length=SEQ_LEN,
                              return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    key = hashlib.sha256(CORPUS.read_bytes() + (minilm_path() / "model.safetensors").read_bytes()
                         + str(SEQ_LEN).encode()).hexdigest()[:16]
    cached = cache_dir() / f"minilm-reference-{key}.safetensors"
    if cached.is_file():
        reference = load_state_dict(cached)["embeddings"]
    else:
        reference = _embed(minilm_l6(), ids, mask)
        save_state_dict(cached, {"embeddings": reference})
    n = len(sentences)
    test, val = slice(n - N_TEST, n), slice(n - N_TEST - N_VAL, n - N_TEST)
    train = slice(0, n - N_TEST - N_VAL)
    return DataSplits(*(Split((ids[s], mask[s]), reference[s]) for s in (train, val, test)))


@torch.no_grad()
def _embed(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(ids[i:i + batch], mask[i:i + batch]) for i in range(0, len(ids), batch)])
