"""The class-conditional VAE: trained with the one loop, its rows teach a classifier the real
classes (train on synthetic, test on real), and the task's ``synthetic:`` field adds or replaces
training rows."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from slimkit.core.errors import ConfigError
from slimkit.data.base import Split
from slimkit.tasks import build_task
from slimkit.train.generative import SyntheticConfig, synthesise, train_generator
from slimkit.zoo.generators import ConditionalVAE


def _real_test_accuracy(train: Split, test: Split) -> float:
    clf = LogisticRegression(max_iter=500).fit(train.inputs[0].reshape(len(train), -1).numpy(), train.targets.numpy())
    return clf.score(test.inputs[0].reshape(len(test), -1).numpy(), test.targets.numpy())


@pytest.fixture(scope="module")
def digits():
    return build_task("digits-cnn").data


@pytest.fixture(scope="module")
def trained(digits):
    return train_generator(digits.train, 10, SyntheticConfig(steps=300, hidden=128), progress=False)


def test_train_on_synthetic_test_on_real(digits, trained):
    generator, report = trained
    assert report.rows == len(digits.train) and report.steps >= 300
    synthetic = synthesise(generator, 50, seed=1)
    assert synthetic.inputs[0].shape == (500, 1, 8, 8)
    assert torch.bincount(synthetic.targets).tolist() == [50] * 10
    # rows stay in the data's range (the decoder's output is clamped to what training saw)
    assert float(synthetic.inputs[0].min()) >= 0.0 and float(synthetic.inputs[0].max()) <= 1.0
    assert _real_test_accuracy(synthetic, digits.test) >= 0.75  # measured 0.87; real rows give 0.96
    # the control: the same generator untrained draws rows that teach nothing
    untrained = ConditionalVAE((1, 8, 8), 10, hidden=128)
    untrained.fit_normalisation(digits.train.inputs[0])
    assert _real_test_accuracy(synthesise(untrained, 50, seed=1), digits.test) <= 0.3


def test_samples_follow_the_label(trained):
    generator, _ = trained
    g = torch.Generator().manual_seed(0)
    zeros = generator.sample(torch.zeros(64, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    ones = generator.sample(torch.ones(64, dtype=torch.long), generator=g)
    # same latent codes, different class: the rows differ (the decoder reads the label)
    assert (zeros - ones).abs().mean() > 0.05
    assert synthesise(generator, 3, seed=5).inputs[0].equal(synthesise(generator, 3, seed=5).inputs[0])


def test_conv_body_and_shape_errors(digits):
    vae = ConditionalVAE((1, 8, 8), 10, arch="conv", hidden=64)
    vae.fit_normalisation(digits.train.inputs[0][:64])
    out = vae(digits.train.inputs[0][:4], digits.train.targets[:4])
    assert out.shape == (4, 64) and vae.posterior[0].shape == (4, 16)
    with pytest.raises(ConfigError, match="divisible by 4"):
        ConditionalVAE((1, 10, 10), 10, arch="conv")
    with pytest.raises(ConfigError, match="out of range"):
        vae(digits.train.inputs[0][:2], torch.tensor([0, 10]))


def test_task_field_adds_or_replaces_rows():
    quick = {"per_class": 20, "steps": 20, "hidden": 32}
    few = build_task({"name": "digits-cnn", "labels_per_class": 5, "synthetic": quick})
    assert len(few.data.train) == 50 + 200
    assert few.info["synthetic"]["rows"] == 50 and few.info["synthetic"]["synthetic_rows"] == 200
    shared = build_task({"name": "digits-cnn", "labels_per_class": 5, "synthetic": {**quick, "fit_on": "all"}})
    assert len(shared.data.train) == 250 and shared.info["synthetic"]["rows"] == 1077
    assert len(shared.data.val) == 360  # validation and test stay real
    only = build_task({"name": "digits-cnn", "synthetic": {**quick, "mode": "replace"}})
    assert len(only.data.train) == 200


def test_bad_requests_are_named():
    with pytest.raises(ConfigError, match="synthetic"):
        build_task({"name": "minilm", "synthetic": {}})
    with pytest.raises(ConfigError, match="per_clas"):
        build_task({"name": "digits-cnn", "synthetic": {"per_clas": 3}})
    tokens = Split((torch.zeros(4, 3, dtype=torch.long),), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="float input"):
        train_generator(tokens, 2, progress=False)
    unlabelled = Split((torch.rand(4, 3),), torch.tensor([0, -1, -1, -1]))
    with pytest.raises(ConfigError, match="at least 2"):
        train_generator(unlabelled, 2, progress=False)
