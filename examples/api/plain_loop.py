"""A plain PyTorch training loop, with slimkit's gradual pruning and then QAT in it.

    python examples/api/plain_loop.py            # full size (about a minute on 2 cores)

The model is a zoo CNN on scikit-learn's digits; the loop is the user's own. slimkit
contributes the pruning masks and schedule (``prune_hooks``), the fake-quantized layers
(``prepare_qat`` / ``convert_qat``) and the measurement. The recipe doing the same in
slimkit's loop is ``examples/api/plain_loop.yaml``; tests/api/test_examples.py runs both and
compares them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import slimkit.api as sk
from slimkit.data.digits import load_digits_splits
from slimkit.zoo import create_model


def loaders(batch_size: int = 32):
    splits = load_digits_splits(image=True)
    make = lambda split, shuffle: DataLoader(TensorDataset(*split.inputs, split.targets),  # noqa: E731
                                             batch_size=batch_size, shuffle=shuffle,
                                             generator=torch.Generator().manual_seed(0))
    return make(splits.train, True), make(splits.val, False), make(splits.test, False)


def train(model, loader, epochs: int, lr: float, hooks=None) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if hooks is not None:
        hooks.state.optimizer = optimizer
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if hooks is not None:
                hooks.after_backward()
            optimizer.step()
            if hooks is not None:
                hooks.after_step()
    model.eval()


def main(epochs: int = 10, prune_epochs: int = 6, qat_epochs: int = 2, sparsity: float = 0.8) -> dict[str, dict]:
    torch.manual_seed(0)
    train_loader, _, test_loader = loaders()
    model = create_model("cnn_digits", num_classes=10)
    train(model, train_loader, epochs, lr=3e-3)
    figures = {"baseline": sk.measure(model, test_loader)}

    # gradual pruning inside the same loop: the cubic schedule raises sparsity step by step
    hooks = sk.prune_hooks(model, total_steps=prune_epochs * len(train_loader), sparsity=sparsity, schedule="cubic")
    train(model, train_loader, prune_epochs, lr=1e-3, hooks=hooks)
    pruned = hooks.finish()
    figures["pruned"] = sk.measure(pruned, test_loader)

    # QAT on the pruned model (its zeros stay zeros), then integer layers
    qmodel = sk.prepare_qat(pruned, train_loader, weight_bits=8, calibration_samples=256)
    train(qmodel, train_loader, qat_epochs, lr=1e-4)
    q = sk.convert_qat(qmodel)
    figures["pruned + qat"] = sk.measure(q, test_loader)
    # eager simulates int8 in float; an int8 runtime runs it for real
    x = next(iter(test_loader))[0]
    figures["pruned + qat, onnxruntime"] = {**figures["pruned + qat"],
                                           **sk.measure(sk.deploy(q, x[:1], backend="onnxruntime"), test_loader)}
    return figures


def _table(figures: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "accuracy", "bytes", "MACs", "b1 ms", "runs on")
    for name, m in figures.items():
        table.add_row(name, f"{m['quality']:.3f}", f"{m['size_bytes']:,}", f"{m['macs']:,}", f"{m['latency_ms_b1']:.3f}",
                      m.get("backend", "eager"))
    Console().print(table)


if __name__ == "__main__":
    _table(main())
