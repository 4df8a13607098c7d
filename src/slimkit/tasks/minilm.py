"""The ``minilm`` task's data: the shipped corpus tokenized for MiniLM, with FP32 reference
embeddings as targets.

Targets are the unmodified model's embeddings, so quality measures agreement with FP32 and
training against them is embedding distillation. They take a while to compute on 2 cores, so
they are cached (safetensors, keyed by corpus and model hashes) under ``SLIMKIT_CACHE``
(default ``~/.cache/slimkit``).
"""

from __future__ import annotations

import hashlib

import torch

from slimkit.core.io import cache_dir, load_state_dict, save_state_dict
from slimkit.data.base import DataSplits, Split
from slimkit.data.text import CORPUS, load_sentences
from slimkit.measure.quality import predict

SEQ_LEN = 64  # tokens per sentence after padding/truncation (covers the corpus's long sentences)
N_VAL, N_TEST = 500, 1000  # the rest of the corpus is the training split


def load_minilm_splits() -> DataSplits:
    """Train / val / test splits of the corpus, in file order (the corpus is shuffled once)."""
    from slimkit.zoo.minilm import load_tokenizer, minilm_l6, minilm_path

    sentences = load_sentences()
    tokens = load_tokenizer()(sentences, padding="max_length", truncation=True, max_length=SEQ_LEN,
                              return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    n = len(sentences)
    test, val, train = slice(n - N_TEST, n), slice(n - N_TEST - N_VAL, n - N_TEST), slice(0, n - N_TEST - N_VAL)
    key = hashlib.sha256(CORPUS.read_bytes() + (minilm_path() / "model.safetensors").read_bytes()
                         + str(SEQ_LEN).encode()).hexdigest()[:16]
    cached = cache_dir() / f"minilm-reference-{key}.safetensors"
    if cached.is_file():
        reference = load_state_dict(cached)["embeddings"]
    else:
        order = mask.sum(1).argsort()  # similar lengths together: little padding computed
        embedded = predict(minilm_l6(), Split((ids[order], mask[order]), order, mask_input=1), 64)
        reference = torch.empty_like(embedded)
        reference[order] = embedded
        save_state_dict(cached, {"embeddings": reference})
    return DataSplits(*(_by_length(ids[s], mask[s], reference[s]) for s in (train, val, test)))


def _by_length(ids: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> Split:
    """A split sorted by sentence length, so in-order evaluation batches carry little padding."""
    order = mask.sum(1).argsort(stable=True)
    return Split((ids[order], mask[order]), reference[order], mask_input=1)


def load_corpus_cls_splits() -> DataSplits:
    """The ``corpus-cls`` rows (``data.text.corpus_classification``) tokenized for MiniLM."""
    from slimkit.data.text import corpus_classification
    from slimkit.zoo.minilm import load_tokenizer

    tokenizer = load_tokenizer()

    def split(texts: list[str], labels: list[int]) -> Split:
        tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
        ids, mask, targets = tokens["input_ids"], tokens["attention_mask"], torch.tensor(labels)
        order = mask.sum(1).argsort(stable=True)
        return Split((ids[order], mask[order]), targets[order], mask_input=1)

    rows = corpus_classification()
    return DataSplits(*(split(*rows[name]) for name in ("train", "val", "test")))
