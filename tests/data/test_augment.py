"""Augmentation on training batches: kornia's operations in the data's value range, mixup and
CutMix with their loss, seeded."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("kornia")

from slimkit.core.errors import ConfigError  # noqa: E402
from slimkit.data.augment import AugmentConfig, Augmenter, mix_batch, mixed_soft_targets  # noqa: E402
from slimkit.data.base import DataSplits, Split  # noqa: E402
from slimkit.train.config import TrainConfig  # noqa: E402
from slimkit.train.loop import fit  # noqa: E402
from slimkit.train.objectives import Batch, TaskLoss  # noqa: E402


def _constant_images(n=6, size=8):
    """Image i is the constant 10 * i (1 channel), so a mixed pixel names its sources."""
    return (torch.arange(n, dtype=torch.float32) * 10).reshape(n, 1, 1, 1).expand(n, 1, size, size).clone()


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mix_weights_are_the_first_labels_share_of_the_pixels(kind):
    torch.manual_seed(0)
    x, y = _constant_images(), torch.arange(6)
    mixed, second, weight = mix_batch(AugmentConfig(mix=kind), x, y)
    for i in range(6):
        a, b, w = 10.0 * i, 10.0 * float(second[i]), float(weight[i])
        if kind == "mixup":
            torch.testing.assert_close(mixed[i], torch.full_like(mixed[i], w * a + (1 - w) * b))
        elif a != b:
            share_a = float((mixed[i] == a).float().mean())
            assert share_a == pytest.approx(w, abs=1e-6)
    assert ((weight > 0) & (weight < 1)).any()


def test_mixed_soft_targets_give_the_weighted_cross_entropy():
    logits = torch.randn(5, 4)
    y, y2, w = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 3, 0, 2]), torch.rand(5)
    soft = mixed_soft_targets(y, y2, w, 4)
    expected = (w * F.cross_entropy(logits, y, reduction="none") + (1 - w) * F.cross_entropy(logits, y2, reduction="none")).mean()
    torch.testing.assert_close(F.cross_entropy(logits, soft), expected)
    batch = Batch(model=nn.Identity(), inputs=(), targets=y, outputs=logits, extras={"mix_targets": y2, "mix_weight": w})
    torch.testing.assert_close(TaskLoss(F.cross_entropy)(batch), expected)


def test_operations_run_in_the_datas_range_and_repeat_with_the_seed():
    # standardised images (background -0.42, as MNIST here): a padded crop must pad with background
    x = torch.full((8, 1, 12, 12), -0.42)
    x[:, :, 4:8, 4:8] = 2.8
    cfg = AugmentConfig(crop=4, rotate=15, p=1.0)
    runs = []
    for _ in range(2):
        out, targets, extras = Augmenter(cfg)((x,), torch.zeros(8, dtype=torch.long), {}, torch.Generator().manual_seed(3))
        runs.append(out[0])
    torch.testing.assert_close(runs[0], runs[1])  # seeded
    assert not torch.allclose(runs[0], x)  # not a no-op
    assert float(runs[0].min()) >= -0.42 - 1e-5 and float(runs[0].max()) <= 2.8 + 1e-5
    assert float((runs[0] - (-0.42)).abs().lt(1e-4).float().mean()) > 0.5  # mostly background, not zeros
    other = Augmenter(cfg)((x,), torch.zeros(8, dtype=torch.long), {}, torch.Generator().manual_seed(4))[0][0]
    assert not torch.allclose(other, runs[0])


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="image batches"):
        Augmenter(AugmentConfig(flip=True))((torch.randint(0, 9, (4, 7)),), torch.zeros(4, dtype=torch.long), {},
                                           torch.Generator())
    with pytest.raises(ConfigError, match="integer class labels"):
        Augmenter(AugmentConfig(mix="mixup"))((torch.rand(4, 1, 8, 8),), torch.rand(4, 3), {}, torch.Generator())
    with pytest.raises(ValueError, match="value_range"):
        AugmentConfig(value_range=[1.0, 0.0])


@pytest.mark.parametrize("augment", [{"crop": 2, "p": 1.0, "mix": "cutmix"}, {"policy": "trivialaugment"}])
def test_fit_trains_on_augmented_batches_only(augment):
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 3, (64,))
    data = DataSplits(train=Split((x,), y), val=Split((x,), y), test=Split((x,), y))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append((m.training, a[0].clone())))
    fit(model, data, TrainConfig(epochs=1, batch_size=64, augment=augment, keep_best=False),
        loss_terms=[TaskLoss(F.cross_entropy)], validate=lambda m: float(m.eval()(x).argmax(1).eq(y).float().mean()))
    trained = [a for training, a in seen if training]
    evaluated = [a for training, a in seen if not training]
    assert trained and not any(torch.equal(a, x) for a in trained)  # augmented in training
    assert evaluated and torch.equal(evaluated[0], x)  # not at validation
