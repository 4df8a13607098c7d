"""``LoopHooks`` under someone else's trainer: transformers' ``Trainer`` and Lightning.

Each adapter is built on first use, so ``import slimkit`` (and ``slimkit.api``) never imports
transformers or Lightning; without the package, the call says which extra to install.

    hooks = sk.prune_hooks(model, sparsity=0.8, schedule="cubic")     # no optimizer, no step count
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                   callbacks=[sk.integrations.hf_callback(hooks)])
    trainer.train()                     # the callback finishes the hooks at the end of training
    pruned = hooks.result               # stored sparse, history recorded

    pl.Trainer(callbacks=[sk.integrations.lightning_callback(hooks)], ...).fit(module)

The trainer's optimizer steps drive the hooks: ``after_backward`` before each optimizer step
(after gradient clipping under transformers; before it under Lightning, which is where Lightning
calls it), ``after_step`` after it; ``total_steps`` is the trainer's planned optimizer steps.
"""

from __future__ import annotations

from typing import Any

from slimkit.api.hooks import LoopHooks
from slimkit.core.errors import ConfigError


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"this adapter needs {module} ({err}); pip install 'slimkit[{extra}]'") from None


def hf_callback(hooks: LoopHooks) -> Any:
    """A ``transformers.TrainerCallback`` that drives ``hooks`` from the Trainer's steps and
    finishes them when training ends (the finished model is ``hooks.result``)."""
    transformers = _need("transformers", "hf")

    class SlimkitTrainerCallback(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not hooks.state.total_steps:
                hooks.set_total_steps(int(state.max_steps))
            hooks.state.optimizer = kwargs.get("optimizer")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            hooks.after_backward()

        def on_optimizer_step(self, args, state, control, **kwargs):
            hooks.after_step()

        def on_epoch_end(self, args, state, control, **kwargs):
            hooks.end_epoch()

        def on_train_end(self, args, state, control, **kwargs):
            hooks.finish()

    return SlimkitTrainerCallback()


def lightning_callback(hooks: LoopHooks) -> Any:
    """A ``lightning.pytorch.Callback`` that drives ``hooks`` from the Trainer's optimizer steps
    and finishes them when training ends (the finished model is ``hooks.result``)."""
    pl = _need("lightning.pytorch", "lightning")

    class SlimkitLightningCallback(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            if trainer.accumulate_grad_batches != 1:
                raise ConfigError("slimkit's Lightning callback steps once per batch: use accumulate_grad_batches=1")
            if not hooks.state.total_steps:
                hooks.set_total_steps(int(trainer.estimated_stepping_batches))
            hooks.state.optimizer = trainer.optimizers[0] if trainer.optimizers else None

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            hooks.after_backward()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            hooks.after_step()

        def on_train_epoch_end(self, trainer, pl_module):
            hooks.end_epoch()

        def on_train_end(self, trainer, pl_module):
            hooks.finish()

    return SlimkitLightningCallback()
