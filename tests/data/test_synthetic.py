"""DeepInversion: inputs whose BatchNorm statistics match the teacher's, classified as asked."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.data.synthetic import deep_inversion
from slimkit.tasks import build_task
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit
from slimkit.train.objectives import TaskLoss


@pytest.fixture(scope="module")
def teacher():
    task = build_task("digits-cnn")
    torch.manual_seed(0)
    model = task.build_model()
    fit(model, task.data, TrainConfig(epochs=4, batch_size=32, lr=3e-3, keep_best=False),
        loss_terms=[TaskLoss(task.loss)])
    return model.eval()


def _bn_gap(model, x):
    gaps = []

    def hook(m, a, o):
        v = a[0]
        gaps.append(float((v.mean((0, 2, 3)) - m.running_mean).norm() + (v.var((0, 2, 3), unbiased=False) - m.running_var).norm()))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return sum(gaps)


def test_inverted_inputs_match_the_teachers_statistics_and_classes(teacher):
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    split, report = deep_inversion(teacher, (1, 8, 8), 96, 10, steps=100, batch_size=48, bn_weight=1.0,
                                   value_range=(0.0, 1.0))
    x = split.inputs[0]
    assert x.shape == (96, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    counts = torch.bincount(split.targets, minlength=10)
    assert int(counts.max() - counts.min()) <= 1  # classes balanced
    noise = torch.rand(96, 1, 8, 8)
    assert _bn_gap(teacher, x) < 0.5 * _bn_gap(teacher, noise)  # statistics matched far better than noise
    assert report.teacher_agreement >= 0.9
    with torch.no_grad():
        assert float((teacher(x).argmax(1) == split.targets).float().mean()) == pytest.approx(report.teacher_agreement)
    for k, v in teacher.state_dict().items():  # the teacher is untouched (eval mode: running stats kept)
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.requires_grad for p in teacher.parameters())


def test_a_teacher_without_batchnorm_is_refused():
    with pytest.raises(ConfigError, match="no BatchNorm"):
        deep_inversion(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8), 8, 10, steps=1)


def test_a_student_distilled_without_data_learns_the_task(teacher):
    task = build_task("digits-cnn")
    split, _ = deep_inversion(teacher, (1, 8, 8), 256, 10, steps=100, batch_size=256, value_range=(0.0, 1.0))
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        soft = teacher(split.inputs[0])
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    for _ in range(40):
        for i in range(0, 256, 64):
            loss = F.kl_div(F.log_softmax(student(split.inputs[0][i:i + 64]), 1), F.softmax(soft[i:i + 64], 1),
                            reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = task.data.test
    with torch.no_grad():
        accuracy = float((student(test.inputs[0]).argmax(1) == test.targets).float().mean())
    assert accuracy > 0.6  # chance is 0.1; no training row was used
