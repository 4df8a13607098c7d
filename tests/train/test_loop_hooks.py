"""The loop's extension points: batch transforms, gradient accumulation, loss scaling, several
forward passes per step. Each test fails if the loop ignores its point."""

import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import SlimkitError
from slimkit.data.base import DataSplits, Split
from slimkit.train.callbacks import Callback
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit
from slimkit.train.objectives import TaskLoss


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long()
    split = Split((x,), y)
    return DataSplits(split, split.head(64), split.head(64))


def _model(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _fit(model, data, callbacks=(), validate=None, seed=5, **cfg):
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 16, "optimizer": "sgd", "momentum": 0.0, "lr": 0.1,
                         "keep_best": False, **cfg})
    return fit(model, data, cfg, loss_terms=[TaskLoss(F.cross_entropy)], callbacks=callbacks, validate=validate,
               seed=seed)


class RandomSignFlip(Callback):
    """Flips the sign of a random half of the rows: a stand-in for augmentation."""

    def __init__(self):
        self.calls = 0

    def transform_batch(self, state, inputs, targets, extras):
        self.calls += 1
        flip = torch.rand(len(targets), generator=state.generator) < 0.5
        return (torch.where(flip[:, None], -inputs[0], inputs[0]),), targets, extras


def test_batch_transform_is_what_terms_train_on_and_validation_is_untouched():
    data = _data()
    negate = type("Negate", (Callback,), {"transform_batch": lambda self, s, i, t, e: ((-i[0],), t, e)})()
    seen_train, seen_val = [], []

    class Recording(TaskLoss):
        def __call__(self, batch):
            seen_train.append(batch.inputs[0])
            return super().__call__(batch)

    def validate(model):
        seen_val.append(data.val.inputs[0])
        return float((model(data.val.inputs[0]).argmax(-1) == data.val.targets).float().mean())

    model = _model()
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.1)
    fit(model, data, cfg, loss_terms=[Recording(F.cross_entropy)], callbacks=[negate], validate=validate, seed=5)
    raw = [x for (x,), _, _ in data.train.loader(64, shuffle=True, seed=5)]
    assert len(seen_train) == len(raw) and all(torch.equal(s, -r) for s, r in zip(seen_train, raw))

    flipped = _model()  # the same training on negated data gives the same weights
    negated = Split((-data.train.inputs[0],), data.train.targets)
    fit(flipped, DataSplits(negated, data.val, data.test), cfg, loss_terms=[TaskLoss(F.cross_entropy)], seed=5)
    assert torch.equal(_weights(model), _weights(flipped))


def test_random_batch_transform_is_deterministic_for_the_seed_and_skips_validation():
    data = _data()
    runs = {}
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        flip, model = RandomSignFlip(), _model()
        _fit(model, data, callbacks=[flip], validate=lambda m: 0.0, seed=seed)
        runs[name] = _weights(model)
        assert flip.calls == 2 * 256 // 16  # training batches only
    assert torch.equal(runs["a"], runs["b"]) and not torch.equal(runs["a"], runs["c"])
    plain = _model()
    _fit(plain, data, seed=5)
    assert not torch.allclose(runs["a"], _weights(plain))


class CountSteps(Callback):
    def __init__(self):
        self.optimizer_steps = 0

    def on_fit_start(self, state):
        state.optimizer.register_step_post_hook(lambda *a: setattr(self, "optimizer_steps", self.optimizer_steps + 1))


@pytest.mark.parametrize("clip", [None, 0.05])
def test_accumulating_k_batches_equals_one_batch_k_times_larger(clip):
    data = _data()
    small, big = _model(), _model()
    counter = CountSteps()
    result = _fit(small, data, callbacks=[counter], batch_size=16, accumulate=4, grad_clip=clip, schedule="cosine")
    reference = _fit(big, data, batch_size=64, grad_clip=clip, schedule="cosine")
    assert result.steps == reference.steps == counter.optimizer_steps == 2 * 256 // 64
    assert torch.allclose(_weights(small), _weights(big), atol=1e-6)
    unaccumulated = _model()
    _fit(unaccumulated, data, batch_size=16, grad_clip=clip, schedule="cosine")
    assert not torch.allclose(_weights(unaccumulated), _weights(big), atol=1e-3)


def test_accumulation_steps_at_the_end_of_an_epoch_with_a_short_group():
    counter = CountSteps()
    result = _fit(_model(), _data(n=80), callbacks=[counter], batch_size=16, accumulate=3)  # 5 batches: 3 + 2
    assert result.steps == counter.optimizer_steps == 2 * 2


class StaticLossScale(Callback):
    """Multiplies the loss by ``scale``; divides the gradients back before anything reads them."""

    def __init__(self, scale):
        self.scale, self.grad_norms = scale, []

    def scale_loss(self, state, loss):
        return loss * self.scale

    def unscale_gradients_(self, state):
        for p in state.model.parameters():
            p.grad.div_(self.scale)
        return True


class GradNorm(Callback):
    def __init__(self):
        self.norms = []

    def after_backward(self, state):
        self.norms.append(float(torch.cat([p.grad.flatten() for p in state.model.parameters()]).norm()))


def test_loss_scale_is_undone_before_clipping_and_the_step():
    data = _data()
    scaled, plain = _model(), _model()
    seen_scaled, seen_plain = GradNorm(), GradNorm()
    _fit(scaled, data, callbacks=[StaticLossScale(1024.0), seen_scaled], grad_clip=0.05, accumulate=2)
    _fit(plain, data, callbacks=[seen_plain], grad_clip=0.05, accumulate=2)
    assert seen_scaled.norms == pytest.approx(seen_plain.norms, rel=1e-5)  # after_backward sees true units
    assert torch.allclose(_weights(scaled), _weights(plain), atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # no step was ever taken
def test_a_callback_can_skip_an_optimizer_step():
    skip = type("SkipAll", (Callback,), {"unscale_gradients_": lambda self, state: False})()
    counter, model = CountSteps(), _model()
    before = _weights(model).clone()
    result = _fit(model, _data(), callbacks=[skip, counter])
    assert counter.optimizer_steps == 0 and result.steps == 2 * 256 // 16
    assert torch.equal(_weights(model), before)


class Scaled(nn.Module):
    """A linear layer whose output is multiplied by ``factor``: two 'configurations' of one net."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.linear, self.factor = nn.Linear(4, 2), 1.0

    def forward(self, x):
        return self.linear(x) * self.factor


class Sandwich(Callback):
    def __init__(self, factors):
        self.factors = factors

    def forward_passes(self, state):
        return [self._config(state.model, f) for f in self.factors]

    @staticmethod
    @contextlib.contextmanager
    def _config(model, factor):
        model.factor = factor
        try:
            yield
        finally:
            model.factor = 1.0


def test_several_forward_passes_sum_their_gradients_into_one_step():
    data = _data(n=32)
    model, passes = Scaled(), []

    class Recording(TaskLoss):
        def __call__(self, batch):
            passes.append((batch.pass_index, batch.model.factor, batch.outputs.detach()))
            return super().__call__(batch)

    reference = Scaled()
    x, y = data.train.inputs[0], data.train.targets
    grads = [torch.zeros_like(p) for p in reference.parameters()]
    for factor in (1.0, 0.25):
        reference.factor = factor
        loss = F.cross_entropy(reference(x), y)
        for g, dg in zip(grads, torch.autograd.grad(loss, list(reference.parameters()))):
            g += dg
    expected = [p.detach() - 0.1 * g for p, g in zip(reference.parameters(), grads)]

    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", momentum=0.0, lr=0.1, schedule="constant")
    result = fit(model, data, cfg, loss_terms=[Recording(F.cross_entropy)], callbacks=[Sandwich([1.0, 0.25])])
    assert result.steps == 1 and [(i, f) for i, f, _ in passes] == [(0, 1.0), (1, 0.25)]
    assert torch.allclose(passes[1][2], passes[0][2] * 0.25, atol=1e-6)  # the terms see each pass's outputs
    assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip(model.parameters(), expected))


def test_two_callbacks_defining_passes_is_an_error():
    with pytest.raises(SlimkitError, match="only one callback"):
        _fit(Scaled(), _data(n=32), callbacks=[Sandwich([1.0]), Sandwich([0.5])])
