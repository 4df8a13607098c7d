"""slimkit's pruning hooks under transformers' Trainer and Lightning (skipped without them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import slimkit.api as sk
from slimkit.encoding import is_encoded



def _accuracy(model, split) -> float:
    with torch.no_grad():
        return float((model.eval()(split.inputs[0]).argmax(-1) == split.targets).float().mean())


def _example():
    """The transformers-style wrapper and dataset of examples/api/hf_trainer_distill.py."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "api" / "hf_trainer_distill.py"
    spec = importlib.util.spec_from_file_location("example_hf_trainer_distill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    example = _example()
    trainer = transformers.Trainer(model=example.Classifier(model), args=args,
                                   train_dataset=example.Rows(task.data.train),
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
