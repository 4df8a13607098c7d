"""What a student trains on besides the labelled split: few-label tasks, generated inputs, the
teacher's cached outputs and the one teacher forward per batch that all terms share."""

import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import ConfigError
from slimkit.data.base import DataSplits, Split
from slimkit.techniques.distillation import losses as L
from slimkit.techniques.distillation.data import concat, generate, teacher_outputs
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit


def _classes(n_per_class: int = 20, classes: int = 4) -> DataSplits:
    targets = torch.arange(classes).repeat_interleave(n_per_class)
    split = Split((torch.randn(len(targets), 6),), targets)
    return DataSplits(split, split.head(8), split.head(8))


def test_few_labels_keeps_that_many_per_class_and_hides_the_other_labels():
    splits = _classes()
    few = splits.few_labels(3, seed=1)
    assert torch.bincount(few.train.targets).tolist() == [3, 3, 3, 3]
    assert len(few.unlabelled) == 80 - 12 and bool((few.unlabelled.targets == -1).all())
    # every training row is in exactly one of the two, with its inputs
    rows = torch.cat([few.train.inputs[0], few.unlabelled.inputs[0]])
    assert torch.equal(rows[rows[:, 0].argsort()], splits.train.inputs[0][splits.train.inputs[0][:, 0].argsort()])
    assert torch.equal(splits.few_labels(3, seed=1).train.inputs[0], few.train.inputs[0])
    assert not torch.equal(splits.few_labels(3, seed=2).train.inputs[0], few.train.inputs[0])
    with pytest.raises(ConfigError, match="class 0 has only 20"):
        splits.few_labels(21, seed=0)


def test_a_few_label_task_trains_its_baseline_on_the_labelled_rows_only():
    from slimkit.tasks import build_task

    task = build_task({"name": "digits-mlp", "labels_per_class": 5, "labels_seed": 3})
    assert len(task.data.train) == 50 and len(task.data.unlabelled) > 900
    assert task.data.sizes()["unlabelled"] == len(task.data.unlabelled)
    with pytest.raises(ConfigError, match="labels_per_class"):
        build_task({"name": "minilm", "labels_per_class": 5})


def test_mixup_rows_are_convex_mixes_of_two_training_rows():
    pool = Split((torch.eye(10),), torch.arange(10))
    mixed = generate(pool, "mixup", 200, alpha=0.5, seed=0)
    x = mixed.inputs[0]
    assert x.shape == (200, 10) and bool((mixed.targets == -1).all())
    assert bool((x >= 0).all()) and torch.allclose(x.sum(1), torch.ones(200))
    assert bool(((x > 0).sum(1) <= 2).all()) and bool(((x > 0).sum(1) == 2).float().mean() > 0.9)
    assert torch.equal(generate(pool, "mixup", 200, alpha=0.5, seed=0).inputs[0], x)
    with pytest.raises(ConfigError, match="use splice"):
        generate(Split((torch.arange(10)[:, None],), torch.arange(10)), "mixup", 5)


def test_splice_joins_a_head_and_a_tail_and_marks_the_new_length():
    cls, sep, width = 101, 102, 12
    ids = torch.zeros(6, width, dtype=torch.long)
    mask = torch.zeros(6, width, dtype=torch.long)
    for row in range(6):
        length = 4 + row
        ids[row, :length] = torch.tensor([cls, *range(1000 * (row + 1), 1000 * (row + 1) + length - 2), sep])
        mask[row, :length] = 1
    pool = Split((ids, mask), torch.zeros(6, 3), mask_input=1)
    out = generate(pool, "splice", 50, seed=0)
    new_ids, new_mask = out.inputs
    for row in range(50):
        n = int(new_mask[row].sum())
        assert bool(new_mask[row, :n].all()) and not bool(new_mask[row, n:].any()) and n <= width
        tokens = new_ids[row, :n].tolist()
        assert tokens[0] == cls and tokens[-1] == sep and not any(new_ids[row, n:].tolist())
        sources = {t // 1000 for t in tokens[1:-1]}
        assert 1 <= len(sources) <= 2 and len(tokens) >= 3  # a head of one sentence, a tail of another
    with pytest.raises(ConfigError, match="use mixup"):
        generate(Split((torch.randn(4, 3),), torch.zeros(4)), "splice", 3)


def test_teacher_outputs_are_cached_keyed_by_weights_and_a_broken_cache_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    teacher = nn.Linear(6, 3)
    split = _classes().train
    first, how = teacher_outputs(teacher, split, "cpu", use_disk=True)
    assert how == "stored" and torch.allclose(first, teacher(split.inputs[0]).detach())
    again, how = teacher_outputs(teacher, split, "cpu", use_disk=True)
    assert how == "hit" and torch.equal(again, first)
    (cached,) = tmp_path.glob("distill-teacher-*.safetensors")
    cached.write_bytes(b"not a safetensors file")
    repaired, how = teacher_outputs(teacher, split, "cpu", use_disk=True)
    assert how == "stored" and torch.equal(repaired, first)
    with torch.no_grad():
        teacher.weight.add_(1.0)
    _, how = teacher_outputs(teacher, split, "cpu", use_disk=True)
    assert how == "stored" and len(list(tmp_path.glob("distill-teacher-*.safetensors"))) == 2
    assert teacher_outputs(teacher, split, "cpu", use_disk=False)[1] == "computed"


def test_concat_refuses_inputs_of_different_shapes():
    with pytest.raises(ConfigError, match="different shapes"):
        concat([Split((torch.zeros(2, 3),), torch.zeros(2)), Split((torch.zeros(2, 4),), torch.zeros(2))])


class _Net(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(hidden * 16, 3))

    def forward(self, x):
        return self.head(self.body(x))


def test_all_terms_share_one_teacher_forward_per_batch_and_cached_outputs_need_none():
    torch.manual_seed(0)
    split = Split((torch.randn(40, 1, 4, 4),), torch.randint(3, (40,)))
    data = DataSplits(split, split, split)
    teacher, student = _Net(8).eval(), _Net(4)
    frozen = L.Teacher(teacher)
    terms = [L.LogitDistillation(frozen), L.AttentionTransfer(student, frozen, {"body": "body"}),
             L.FeatureDistillation(student, frozen, {"body": "body"}, (split.inputs[0][:2],))]
    frozen.forwards = 0
    result = fit(student, data, TrainConfig(epochs=2, batch_size=10), loss_terms=terms)
    assert result.steps == 8 and frozen.forwards == 8
    # with the teacher's outputs carried by the split, a logits-only term never runs it
    cached = L.Teacher(teacher)
    outputs = teacher(split.inputs[0]).detach()
    with_outputs = DataSplits(split.with_extras(teacher_outputs=outputs), split, split)
    fit(student, with_outputs, TrainConfig(epochs=1, batch_size=10), loss_terms=[L.LogitDistillation(cached)])
    assert cached.forwards == 0
    # and the cached outputs give the same loss as running the teacher (cached from a batch of the
    # same rows: a convolution's result may differ in the last bits between batch sizes)
    with torch.no_grad():
        same_rows = teacher(split.inputs[0][:5])
    batch = L.Batch(student, (split.inputs[0][:5],), split.targets[:5], student(split.inputs[0][:5]),
                    {L.TEACHER_OUTPUTS: same_rows})
    live = L.Batch(student, batch.inputs, batch.targets, batch.outputs)
    assert float(L.LogitDistillation(teacher)(batch)) == pytest.approx(float(L.LogitDistillation(teacher)(live)),
                                                                       rel=1e-6)


def test_a_custom_task_may_return_unlabelled_inputs():
    from slimkit.tasks.custom import as_splits

    x, y = torch.randn(10, 3), torch.randint(2, (10,))
    splits = as_splits({"train": (x, y), "val": (x, y), "test": (x, y), "unlabelled": torch.randn(7, 3)}, "here")
    assert len(splits.unlabelled) == 7 and splits.unlabelled.inputs[0].shape == (7, 3)
    with pytest.raises(ConfigError, match="optionally 'unlabelled'"):
        as_splits({"train": (x, y), "val": (x, y), "test": (x, y), "extra": x}, "here")
