"""slimkit's pruning hooks under transformers' Trainer and Lightning (skipped without them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit.api as sk
from slimkit.encoding import is_encoded
from slimkit.tasks import build_task
from slimkit.tasks.context import Context
from slimkit.train.config import TrainConfig


@pytest.fixture(scope="module")
def trained():
    task = build_task("digits-cnn")
    model = task.build_model()
    Context(task=task).train(model, TrainConfig(epochs=3))
    return task, model.eval()


def _accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model.eval()(split.inputs[0]).argmax(-1) == split.targets).float().mean())


class _HFStyle(nn.Module):
    """What transformers' Trainer expects: keyword inputs, a dict with the loss when labels come."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)
        return {"logits": logits, **({"loss": F.cross_entropy(logits, labels)} if labels is not None else {})}


class _Rows(torch.utils.data.Dataset):
    def __init__(self, split) -> None:
        self.x, self.y = split.inputs[0], split.targets

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def test_pruning_under_the_transformers_trainer(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    task, base = trained
    import copy

    model = copy.deepcopy(base)
    hooks = sk.prune_hooks(model, sparsity=0.7, schedule="cubic")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=32,
                                          learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
                                          disable_tqdm=True, use_cpu=True, seed=0)
    trainer = transformers.Trainer(model=_HFStyle(model), args=args, train_dataset=_Rows(task.data.train),
                                   callbacks=[sk.integrations.hf_callback(hooks)])
    trainer.train()
    pruned = hooks.result
    assert hooks.state.total_steps == trainer.state.max_steps and hooks.state.step == trainer.state.max_steps
    assert sk.history(pruned)[0]["info"]["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert is_encoded(pruned, ("sparse",)) and pruned is model  # the Trainer's model, pruned in place
    assert _accuracy(pruned, task.data.test) >= _accuracy(base, task.data.test) - 0.05


def test_pruning_under_lightning(trained):
    pl = pytest.importorskip("lightning.pytorch")
    task, base = trained
    import copy

    model = copy.deepcopy(base)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    train = task.data.train
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.inputs[0], train.targets),
                                         batch_size=32, shuffle=True)
    hooks = sk.prune_hooks(model, sparsity=0.7, schedule="cubic")
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[sk.integrations.lightning_callback(hooks)])
    trainer.fit(Module(), loader)
    pruned = hooks.result
    assert hooks.state.total_steps == 3 * len(loader) and hooks.state.step == 3 * len(loader)
    assert sk.history(pruned)[0]["info"]["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert _accuracy(pruned, task.data.test) >= _accuracy(base, task.data.test) - 0.05


def test_the_adapters_import_their_frameworks_only_when_used():
    code = ("import sys, slimkit.api; "
            "print(any(m.split('.')[0] in ('transformers', 'lightning', 'pytorch_lightning') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
