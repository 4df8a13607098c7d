"""Distillation loss terms: each equals a hand computation on a tiny example, gradients reach
the student and never the teacher, learned adapters train in the one loop, and layers whose
shapes cannot be compared get an error naming them."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.data.base import DataSplits, Split
from slimkit.techniques.distillation.losses import (AttentionRelationDistillation, AttentionTransfer,
                                                    EmbeddingDistillation, FeatureDistillation, LogitDistillation,
                                                    attention_map, attention_relation, soft_target_loss)
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit
from slimkit.train.objectives import Batch, TaskLoss


def batch_of(model: nn.Module, *inputs: torch.Tensor) -> Batch:
    return Batch(model, inputs, torch.zeros(len(inputs[0]), dtype=torch.long), model(*inputs))


def test_soft_target_loss_is_t_squared_kl_of_the_softened_distributions():
    s, t, temp = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), 2.0
    p_s = [math.exp(v / temp) for v in (1, 2, 3)]
    p_t = [math.exp(v / temp) for v in (3, 2, 1)]
    p_s = [v / sum(p_s) for v in p_s]
    p_t = [v / sum(p_t) for v in p_t]
    expected = temp ** 2 * sum(pt * (math.log(pt) - math.log(ps)) for ps, pt in zip(p_s, p_t))
    assert float(soft_target_loss(s, t, temp)) == pytest.approx(expected, rel=1e-6)
    assert float(soft_target_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-7)
    # batchmean: two copies of the example give the same value
    assert float(soft_target_loss(s.repeat(2, 1), t.repeat(2, 1), temp)) == pytest.approx(expected, rel=1e-6)


def test_logit_distillation_trains_the_student_and_never_the_teacher():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    before = copy.deepcopy(teacher.state_dict())
    term = LogitDistillation(teacher, temperature=3.0)
    x = torch.randn(8, 4)
    loss = term(batch_of(student, x))
    with torch.no_grad():
        expected = soft_target_loss(student(x), before_teacher(before)(x), 3.0)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    with pytest.raises(ConfigError, match="temperature"):
        LogitDistillation(teacher, temperature=0)


def before_teacher(state) -> nn.Module:
    model = nn.Linear(4, 3)
    model.load_state_dict(state)
    return model


def test_embedding_distillation_is_one_minus_cosine_or_the_mse():
    teacher = nn.Identity()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = torch.tensor([[1.0, 1.0], [0.0, 3.0]], requires_grad=True)
    batch = Batch(nn.Identity(), (x,), torch.zeros(2), out)
    cosine = EmbeddingDistillation(teacher)(batch)
    assert float(cosine.detach()) == pytest.approx(((1 - 1 / math.sqrt(2)) + 0.0) / 2)
    mse = EmbeddingDistillation(teacher, loss="mse")(batch)
    assert float(mse.detach()) == pytest.approx((0 + 1 + 0 + 1) / 4)
    with pytest.raises(ConfigError, match="differ in shape"):
        EmbeddingDistillation(teacher)(Batch(nn.Identity(), (x,), torch.zeros(2), out[:, :1]))


def test_attention_map_and_attention_transfer_match_a_hand_computation():
    f = torch.tensor([[[[1.0, -2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]])  # (1, 2, 2, 2)
    squares = [(1 + 1) / 2, (4 + 0) / 2, (0 + 4) / 2, (1 + 1) / 2]  # mean over channels of F^2
    norm = math.sqrt(sum(v * v for v in squares))
    assert attention_map(f)[0].tolist() == pytest.approx([v / norm for v in squares])

    student = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    teacher = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 1))
    term = AttentionTransfer(student, teacher, {"1": "1"})
    x = torch.randn(2, 1, 6, 6)
    value = term(batch_of(student, x))
    expected = (attention_map(student[1](student[0](x))) - attention_map(teacher[1](teacher[0](x)))).norm(dim=1).mean()
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    small = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU())
    with pytest.raises(ConfigError, match="'1'.*'1'"):
        AttentionTransfer(small, teacher, {"1": "1"})(batch_of(small, x))


def test_feature_distillation_adapts_widths_refuses_other_shapes_and_its_adapters_train():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    teacher = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(64, 2)
    term = FeatureDistillation(student, teacher, {"1": "1"}, (x[:2],))
    adapter = term.adapters["1"]
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (8, 16)
    value = term(batch_of(student, x))
    expected = F.mse_loss(adapter(torch.relu(student[0](x))), torch.relu(teacher[0](x)))
    assert float(value) == pytest.approx(float(expected), rel=1e-6)

    y = (x[:, 0] > 0).long()
    split = Split((x,), y)
    start = adapter.weight.detach().clone()
    teacher_start = copy.deepcopy(teacher.state_dict())
    fit(student, DataSplits(split, split, split), TrainConfig(epochs=2, batch_size=16),
        loss_terms=[TaskLoss(F.cross_entropy), term])
    assert not torch.equal(adapter.weight, start)  # the loop's optimizer holds the adapter
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_start.items())

    conv_student = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1))
    conv_teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1))
    with pytest.raises(ConfigError, match=r"student layer '0' gives \(2, 4, 4, 4\).*teacher layer '0' gives"):
        FeatureDistillation(conv_student, conv_teacher, {"0": "0"}, (torch.randn(2, 1, 8, 8),))
    with pytest.raises(ConfigError, match="student has no module named"):
        FeatureDistillation(student, teacher, {"9": "1"}, (x[:2],))
    with pytest.raises(ConfigError, match="teacher has no module named"):
        FeatureDistillation(student, teacher, {"1": "missing"}, (x[:2],))


class _Tokens(nn.Module):
    """(ids, mask) -> per-token features (N, L, C), like an encoder layer's hidden states."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed, self.body = nn.Embedding(10, width), nn.Linear(width, width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.body(self.embed(ids)).mean(1)


def test_feature_distillation_without_adapter_compares_hidden_states_of_real_tokens_only():
    torch.manual_seed(0)
    student, teacher = _Tokens(4), _Tokens(4)
    ids = torch.randint(0, 10, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    term = FeatureDistillation(student, teacher, {"body": "body"}, (ids[:2], mask[:2]), adapter="none",
                               mask_input=1)
    assert isinstance(term.adapters["body"], nn.Identity) and term.trainable_parameters() == []
    value = term(batch_of(student, ids, mask))
    fs, ft = student.body(student.embed(ids)), teacher.body(teacher.embed(ids))
    real = mask.bool()
    assert float(value) == pytest.approx(float(((fs - ft)[real] ** 2).mean()), rel=1e-6)
    assert float(value) != pytest.approx(float(F.mse_loss(fs, ft)), rel=1e-3)  # padding would count otherwise
    # padding tokens' features do not move the term
    other = ids.clone()
    other[2, 1:] = (other[2, 1:] + 1) % 10
    assert float(term(batch_of(student, other, mask))) == pytest.approx(float(value), rel=1e-6)

    unmasked = FeatureDistillation(student, teacher, {"body": "body"}, (ids[:2], mask[:2]), adapter="none")
    assert float(unmasked(batch_of(student, ids, mask))) == pytest.approx(float(F.mse_loss(fs, ft)), rel=1e-6)
    with pytest.raises(ConfigError, match=r"adapter 'none'.*\(2, 5, 4\).*\(2, 5, 8\).*adapter: linear"):
        FeatureDistillation(student, _Tokens(8), {"body": "body"}, (ids[:2], mask[:2]), adapter="none")
    with pytest.raises(ConfigError, match="adapter must be"):
        FeatureDistillation(student, teacher, {"body": "body"}, (ids[:2], mask[:2]), adapter="conv")


def test_attention_relation_matches_a_hand_computation_and_keeps_padding_out():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (1, 3, 2), the third token is padding
    mask = torch.tensor([[1, 1, 0]])
    rel = attention_relation(x, heads=1, mask=mask).exp()
    # row 0: scores x0.x0/sqrt(2) = 1/sqrt(2), x0.x1 = 0; the padded key gets no weight
    a = math.exp(1 / math.sqrt(2))
    assert rel[0, 0, 0].tolist() == pytest.approx([a / (a + 1), 1 / (a + 1), 0.0], abs=1e-6)
    with pytest.raises(ConfigError, match="relation heads"):
        attention_relation(torch.zeros(1, 2, 5), heads=2)


def tiny_bert(hidden: int, heads: int):
    transformers = pytest.importorskip("transformers")
    from slimkit.zoo.minilm import SentenceEncoder

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                                  intermediate_size=2 * hidden, max_position_embeddings=16)
    torch.manual_seed(hidden)
    return SentenceEncoder(transformers.BertModel(cfg, add_pooling_layer=False))


def test_attention_relation_distillation_between_transformers_of_different_widths():
    teacher, student = tiny_bert(32, 4), tiny_bert(16, 2)
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    layer = "encoder.encoder.layer.{}.attention.self"
    term = AttentionRelationDistillation(student, teacher, {layer.format(1): layer.format(1)}, relation_heads=2)
    value = term(batch_of(student.train(), ids, mask))
    assert float(value) > 0
    value.backward()
    assert student.encoder.encoder.layer[1].attention.self.query.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # a student identical to the teacher has nothing to learn
    twin = copy.deepcopy(teacher)
    same = AttentionRelationDistillation(twin, teacher, {layer.format(0): layer.format(0)}, relation_heads=4)
    assert float(same(batch_of(twin.eval(), ids, mask))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="not attention modules"):
        AttentionRelationDistillation(student, teacher, {"encoder": layer.format(0)})
