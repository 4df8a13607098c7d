"""Early exits: thresholds at infinity are the backbone bit for bit; an exit taken returns exactly
that head's output; rows leave the batch and the rest continue; a batch-1 row that exits computes
nothing after its exit; calibration keeps validation accuracy within its budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from slimkit.measure.macs import count_macs
from slimkit.techniques.dynamic.exits import (EarlyExitNetwork, ExitLoss, attach_exits, calibrate, confidence,
                                              exit_scores, exits_taken)
from slimkit.train.objectives import Batch


def _backbone():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 5)).eval()


def test_thresholds_at_infinity_are_the_backbone_bit_for_bit():
    model = _backbone()
    x = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    net = attach_exits(model, (x[:1],), 5, after=["1", "3"]).eval()
    assert net.points == [1, 3]
    with torch.no_grad():
        assert torch.equal(net(x), expected)
    assert net.last_exits.tolist() == [2] * 7  # every row took the final exit
    assert count_macs(net, (x[:1],)) == count_macs(model, (x[:1],))  # and no head ran


def test_an_exit_taken_returns_exactly_that_heads_output_and_the_rest_continue():
    model = _backbone()
    x = torch.randn(64, 3, 16, 16)
    net = attach_exits(model, (x[:1],), 5, after=["1", "3"]).eval()
    with torch.no_grad():
        every = net.exit_logits(x)
        scores = [confidence(o, "confidence") for o in every[:2]]
        t0, t1 = float(scores[0].median()), float(scores[1].quantile(0.25))  # one threshold per exit
        net.thresholds.copy_(torch.tensor([t0, t1]))
        out = net(x)
    taken = net.last_exits
    first = scores[0] >= t0
    second = ~first & (scores[1] >= t1)
    assert torch.equal(taken == 0, first) and torch.equal(taken == 1, second)
    assert 0 < int(first.sum()) < 64 and int((taken == 2).sum()) > 0
    assert torch.equal(out[first], every[0][first])
    # rows that continued were computed on a smaller batch: the same values up to kernel rounding
    assert torch.allclose(out[second], every[1][second], atol=1e-5)
    assert torch.allclose(out[taken == 2], every[2][taken == 2], atol=1e-5)


def test_a_row_that_exits_first_computes_nothing_after_its_exit():
    model = _backbone()
    x = torch.randn(1, 3, 16, 16)
    net = attach_exits(model, (x,), 5, after=["1"], head="pool").eval()
    full = count_macs(net, (x,))
    net.thresholds.fill_(0.0)  # every row is confident enough at the first exit
    early = count_macs(net, (x,))
    with torch.no_grad():
        features = model[:2](x)
    assert early == count_macs(model[:2], (x,)) + count_macs(net.heads["1"], (features,))
    assert early < 0.4 * full


def _thresholds_splitting(net, x):
    """Thresholds at which some rows leave at each exit and some reach the final one."""
    with torch.no_grad():
        every = net.exit_logits(x)
    scores = [confidence(o, "confidence") for o in every[:-1]]
    net.thresholds.copy_(torch.tensor([float(scores[0].quantile(0.6)), float(scores[1].quantile(0.5))]))


def test_the_export_graph_gives_run_stages_outputs_row_by_row_and_batch_one_stops():
    model = _backbone()
    x = torch.randn(48, 3, 16, 16)
    net = attach_exits(model, (x[:1],), 5, after=["1", "3"]).eval()
    _thresholds_splitting(net, x)
    graph = net.export_graph().eval()
    with torch.no_grad():
        staged = net(x)
        taken = net.last_exits.clone()
        assert set(taken.tolist()) == {0, 1, 2}
        assert torch.allclose(graph(x), staged, atol=1e-5)
        rows = [net(x[i:i + 1]) for i in range(len(x))]  # the batch-1 fast path
        assert torch.allclose(torch.cat(rows), staged, atol=1e-5)
    net.thresholds.fill_(math.inf)  # no exit: the graph is the backbone, bit for bit
    with torch.no_grad():
        assert torch.equal(net.export_graph().eval()(x), model(x))


def test_onnx_runtime_runs_batch_one_as_one_graph_with_if_nodes_and_batches_stage_by_stage(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from slimkit.backends.onnxruntime import OnnxRuntimeBackend

    model = _backbone()
    x = torch.randn(32, 3, 16, 16)
    net = attach_exits(model, (x[:1],), 5, after=["1", "3"]).eval()
    _thresholds_splitting(net, x)
    compiled = OnnxRuntimeBackend.compile(net, (x[:1],), threads=1, workdir=tmp_path)
    assert compiled.info["batch1"] == "one graph with If nodes"
    graph = onnx.load(str(tmp_path / "graph" / "model.onnx"))
    assert [n.op_type for n in graph.graph.node].count("If") == 1  # the second If sits in the first's branch
    with torch.no_grad():
        expected = net(x)
        taken = net.last_exits.clone()
        assert torch.allclose(compiled(x), expected, atol=1e-4)  # stage graphs, rows leaving
        assert torch.equal(net.last_exits, taken)
        one = torch.cat([compiled(x[i:i + 1]) for i in range(len(x))])  # the one graph
    assert torch.allclose(one, expected, atol=1e-4)
    # the graph stops: ONNX Runtime's profile of a row leaving at the first exit runs fewer convs
    assert _convs_run(tmp_path / "graph" / "model.onnx", x[int((taken == 0).nonzero()[0])]) \
        < _convs_run(tmp_path / "graph" / "model.onnx", x[int((taken == 2).nonzero()[0])])


def _convs_run(path, row: torch.Tensor) -> int:
    """Convolutions ONNX Runtime ran for one row (its profiler's node events, fused ones too)."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_name(f"profile-{id(row)}"))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: row[None].numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    return sum(1 for e in events if e.get("cat") == "Node" and e.get("args", {}).get("op_name") in ("Conv", "FusedConv")
               and e["name"].endswith("_kernel_time"))


def test_convolutions_inside_the_exit_branches_get_onnx_runtimes_nchwc_kernels(tmp_path):
    """Each branch holds its own weights, so ONNX Runtime's layout pass converts its convolutions
    as it does the main graph's (with outer-scope weights they ran the plain, ~3x slower kernel)."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from slimkit.backends.onnx_graph import localize_subgraph_initializers
    from slimkit.backends.onnxruntime import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)).eval()
    x = torch.randn(1, 3, 16, 16)
    net = attach_exits(model, (x,), 5, after=["3"], head="pool").eval()
    net.thresholds.fill_(1.5)  # the head runs and never stops a row: the branch always runs
    path = export_onnx(net.export_graph().eval(), (x,), tmp_path / "graph.onnx")
    exported = onnx.load(str(path))
    branches = [a.g for n in exported.graph.node if n.op_type == "If" for a in n.attribute if a.HasField("g")]
    branch_convs = [n for b in branches for n in b.node if n.op_type == "Conv"]
    assert branch_convs and all(w in {i.name for b in branches for i in b.initializer}
                                for n in branch_convs for w in n.input[1:])
    assert localize_subgraph_initializers(exported.graph) == 0  # nothing left to move

    def branch_conv_domains(model_path):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(model_path.with_suffix(".opt.onnx"))
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        opt = onnx.load(options.optimized_model_filepath)
        subs = [a.g for n in opt.graph.node if n.op_type == "If" for a in n.attribute if a.HasField("g")]
        return [n.domain for s in subs for n in s.node if n.op_type in ("Conv", "FusedConv")]

    assert branch_conv_domains(path) and set(branch_conv_domains(path)) == {"com.microsoft.nchwc"}
    # the control: the same file with the weights moved back to the main graph runs the plain kernel
    for b in branches:
        exported.graph.initializer.extend(b.initializer)
        del b.initializer[:]
    onnx.save(exported, str(tmp_path / "outer.onnx"))
    assert "com.microsoft.nchwc" not in set(branch_conv_domains(tmp_path / "outer.onnx"))
    with torch.no_grad():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert torch.allclose(torch.from_numpy(out), net(x), atol=1e-4)


def test_default_exits_split_the_macs_and_the_loss_trains_every_head():
    model = _backbone()
    x = torch.randn(4, 3, 16, 16)
    net = attach_exits(model, (x[:1],), 5, exits=2)
    assert len(net.points) == 2 and net.points[0] < net.points[1] < len(net.segments) - 1
    net.train()
    final = net(x)
    assert len(net.exit_outputs) == 2
    targets = torch.tensor([0, 1, 2, 3])
    loss = ExitLoss([1.0, 1.0], distill=0.5)(Batch(net, (x,), targets, final))
    loss.backward()
    assert all(h[-1].weight.grad is not None and h[-1].weight.grad.abs().sum() > 0 for h in net.heads.values())
    with pytest.raises(ValueError, match="last child"):
        attach_exits(model, (x[:1],), 5, after=["8"])
    with pytest.raises(ValueError, match="nn.Sequential"):
        attach_exits(nn.ModuleList([nn.Linear(2, 2)]), (x[:1],), 5)


def test_calibration_keeps_accuracy_within_the_budget_and_exits_more_with_a_larger_one():
    torch.manual_seed(0)
    targets = torch.randint(0, 5, (400,))
    final = nn.functional.one_hot(targets, 5).float() * 4  # the final exit is always right
    noisy = torch.randn(400, 5) * 2 + nn.functional.one_hot(targets, 5).float() * 3  # the early one often
    net = EarlyExitNetwork([nn.Identity(), nn.Identity()], {0: nn.Identity()})
    tight = calibrate(net, [noisy, final], targets, budget=0.0)
    assert tight.quality == 1.0 and net.thresholds.item() == tight.threshold
    loose = calibrate(net, [noisy, final], targets, budget=0.05)
    assert 0.95 <= loose.quality < 1.0 and loose.exit_shares[0] > tight.exit_shares[0]
    assert sum(loose.exit_shares) == pytest.approx(1.0)
    assert math.isfinite(loose.threshold)


def test_exit_costs_count_each_exit_with_the_heads_before_it_and_restore_the_thresholds():
    from slimkit.techniques.dynamic.exits import exit_costs

    net = EarlyExitNetwork([nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)],
                           {0: nn.Linear(16, 4), 1: nn.Linear(16, 4)}).eval()
    net.thresholds.copy_(torch.tensor([0.7, 0.6]))
    # exit 0: segment 0 and head 0; exit 1: that, segment 1 and head 1; final: every layer
    assert exit_costs(net, (torch.randn(1, 8),)) == [128 + 64, 128 + 64 + 256 + 64, 128 + 64 + 256 + 64 + 64]
    assert net.thresholds.tolist() == pytest.approx([0.7, 0.6]) and not net.training


def test_per_exit_thresholds_save_more_than_a_shared_one_within_the_same_budget():
    torch.manual_seed(0)
    n = 1000
    targets = torch.randint(0, 4, (n,))
    onehot = nn.functional.one_hot(targets, 4).float()
    final = onehot * 5
    # exit 0: cheap, and confidently wrong on a fifth of the rows; exit 1: nearly final, softer but right
    wrong = nn.functional.one_hot((targets + 1) % 4, 4).float()
    liar = torch.rand(n) < 0.2
    early = torch.where(liar[:, None], wrong, onehot) * 6 + torch.randn(n, 4) * 0.5
    late = onehot * 1.5 + torch.randn(n, 4) * 0.3
    net = EarlyExitNetwork([nn.Identity()] * 3, {0: nn.Identity(), 1: nn.Identity()})
    logits, costs = [early, late, final], [1.0, 3.0, 4.0]
    shared = calibrate(net, logits, targets, budget=0.02, costs=None)
    assert shared.cost is None and shared.thresholds == [shared.threshold] * 2
    per_exit = calibrate(net, logits, targets, budget=0.02, costs=costs)  # writes the per-exit thresholds
    assert net.thresholds.tolist() == pytest.approx(per_exit.thresholds)
    taken = exits_taken(exit_scores(logits[:-1], "confidence"), per_exit.thresholds)
    weights = torch.tensor(costs) / 4
    assert per_exit.cost == pytest.approx(float(weights[taken].mean()))
    assert per_exit.quality >= per_exit.full_quality - 0.02
    accuracy = float((torch.stack(logits).argmax(-1)[taken, torch.arange(n)] == targets).float().mean())
    assert per_exit.quality == pytest.approx(accuracy)
    # the shared threshold is held back by exit 0's confident mistakes; exit 1 alone could take most rows
    shared_taken = exits_taken(exit_scores(logits[:-1], "confidence"), [shared.threshold] * 2)
    assert per_exit.cost < float(weights[shared_taken].mean()) - 0.1
    assert per_exit.thresholds[0] > per_exit.thresholds[1]
    with pytest.raises(ValueError, match="one positive cost per exit"):
        calibrate(net, logits, targets, 0.02, costs=[1.0, 3.0])
    # a zero budget on rows every exit gets right lets everyone out at exit 0
    assert calibrate(net, [final, final, final], targets, 0.0, costs=costs).exit_shares[0] == 1.0


def test_auto_criterion_keeps_the_cheapest_calibration_on_the_validation_rows():
    """Two heads confidently wrong on the hard rows (each a different wrong class) and right but
    unsure on the easy ones: no confidence or entropy threshold lets an easy row out before the
    hard ones, while patience (the heads agree only on easy rows) lets the easy rows out at the
    second head. ``auto`` keeps patience, with its thresholds written into the network."""
    from slimkit.techniques.dynamic.exit_step import CRITERIA, _calibrate

    torch.manual_seed(0)
    n = 600
    targets = torch.randint(0, 4, (n,))
    hot = lambda t, scale: nn.functional.one_hot(t % 4, 4).float() * scale  # noqa: E731
    hard = (torch.rand(n) < 0.3)[:, None]
    e0 = torch.where(hard, hot(targets + 1, 8.0), hot(targets, 0.5))
    e1 = torch.where(hard, hot(targets + 2, 8.0), hot(targets, 0.5))
    logits, costs = [e0, e1, hot(targets, 5.0)], [1, 2, 4]
    net = EarlyExitNetwork([nn.Identity()] * 3, {0: nn.Identity(), 1: nn.Identity()})
    for per_exit in (True, False):
        chosen, tried = _calibrate(net, list(CRITERIA), logits, targets, 0.0, costs, per_exit)
        assert list(tried) == list(CRITERIA) and net.criterion == "patience"
        assert tried["confidence"]["val_cost"] == pytest.approx(1.0) and tried["entropy"]["val_cost"] == pytest.approx(1.0)
        easy = 1 - float(hard.float().mean())
        assert tried["patience"]["val_cost"] == pytest.approx(1 - easy * 0.5)  # easy rows leave at cost 2 of 4
        assert net.thresholds.tolist() == pytest.approx(tried["patience"]["thresholds"]) == chosen.thresholds
        assert chosen.quality == 1.0
    # one criterion: calibrated as asked, whatever it costs
    chosen, tried = _calibrate(net, ["confidence"], logits, targets, 0.0, None, False)
    assert net.criterion == "confidence" and list(tried) == ["confidence"] and tried["confidence"]["val_cost"] is None


def test_heads_only_training_keeps_its_last_epoch():
    """Validation scores the final exit, which a frozen backbone never changes: keep_best would
    restore the first epoch's heads, so heads-only training keeps the last and refuses keep_best."""
    from slimkit.core.config import parse_config
    from slimkit.core.errors import ConfigError
    from slimkit.techniques.dynamic.exit_step import EarlyExitConfig

    assert parse_config(EarlyExitConfig, {"train": "heads"}, "early_exit").finetune.keep_best is False
    assert parse_config(EarlyExitConfig, {"train": "heads", "finetune": {"epochs": 2}}, "early_exit").finetune.epochs == 2
    assert parse_config(EarlyExitConfig, {}, "early_exit").finetune.keep_best is True  # joint: the final exit moves
    with pytest.raises(ConfigError, match="keep_best with train: heads"):
        parse_config(EarlyExitConfig, {"train": "heads", "finetune": {"keep_best": True}}, "early_exit")


MEASURE = {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": False, "per_row": 16}


def test_step_calibrates_exits_within_budget_rebuilds_and_heads_mode_keeps_the_backbone(tmp_path, rebuild_run_step):
    from slimkit.recipes.runner import run_recipe

    def run(cfg: dict, name: str):
        recipe = {"task": "digits-cnn", "seed": 0, "baseline": {"train": {"epochs": 8}}, "measure": MEASURE,
                  "steps": [{"early_exit": cfg}]}
        return run_recipe(recipe, tmp_path / name).results["steps"]

    base, joint = run({"budget": 0.02, "finetune": {"epochs": 4}}, "joint")
    info = joint["info"]
    assert info["val_quality"] >= info["val_full_quality"] - 0.02
    assert len(info["val_exit_shares"]) == 3 and sum(info["val_exit_shares"]) == pytest.approx(1.0)
    assert joint["metrics"]["macs_per_row"]["rows"] == 16
    if 0.0 < info["val_exit_shares"][-1] < 1.0:  # rows leave at different exits: their costs differ
        assert joint["metrics"]["macs_per_row"]["min"] < joint["metrics"]["macs_per_row"]["max"]
    net, quality = rebuild_run_step(tmp_path / "joint", "digits-cnn", 1, joint)
    assert isinstance(net, EarlyExitNetwork) and net.thresholds.tolist() == [info["threshold"]] * 2
    assert quality == pytest.approx(joint["metrics"]["quality"], abs=1e-9)
    # heads only: the backbone (and so the final exit) is exactly the incoming model; per-exit
    # thresholds from each exit's counted MACs, recorded and restored as written
    heads_base, heads = run({"train": "heads", "thresholds": "per_exit", "budget": 0.0, "criterion": "auto",
                             "finetune": {"epochs": 2}}, "heads")
    hinfo = heads["info"]
    costs = {c: t["val_cost"] for c, t in hinfo["criteria"].items()}  # auto: the cheapest on validation kept
    assert sorted(costs) == ["confidence", "entropy", "patience"] and costs[hinfo["criterion"]] == min(costs.values())
    assert len(hinfo["exit_macs"]) == 3 and hinfo["exit_macs"][0] < hinfo["exit_macs"][1] < hinfo["exit_macs"][2]
    assert hinfo["val_quality"] >= hinfo["val_full_quality"] and 0 < hinfo["val_cost"] <= 1
    before, _ = rebuild_run_step(tmp_path / "heads", "digits-cnn", 0, heads_base)
    after, _ = rebuild_run_step(tmp_path / "heads", "digits-cnn", 1, heads)
    assert after.thresholds.tolist() == pytest.approx(hinfo["thresholds"]) and after.criterion == hinfo["criterion"]
    after.thresholds.fill_(math.inf)
    from slimkit.tasks.base import build_task

    x = build_task("digits-cnn").data.test.inputs[0][:32]
    with torch.no_grad():
        assert torch.equal(after.eval()(x), before.eval()(x))


def _tiny_bert_classifier():
    from transformers import BertConfig, BertModel

    from slimkit.zoo.minilm import SentenceClassifier

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0), add_pooling_layer=False)
    return SentenceClassifier(encoder, 3).eval()


def _token_rows(rows: int = 16):
    torch.manual_seed(1)
    ids = torch.randint(1, 100, (rows, 12))
    mask = torch.ones_like(ids)
    mask[rows // 2:, 8:] = 0  # half the rows padded
    return ids, mask


def test_hooked_exits_on_a_transformer_encoder_stop_and_return_the_heads_logits():
    pytest.importorskip("transformers")
    from slimkit.techniques.dynamic.exit_step import EarlyExitStructure, HeadRecord, restore_early_exit
    from slimkit.techniques.dynamic.exits import HookedExitNetwork, attach_hooked_exits, layer_list

    model = _tiny_bert_classifier()
    ids, mask = _token_rows()
    layers = layer_list(model)
    assert layers == [f"encoder.encoder.layer.{i}" for i in range(4)]
    net = attach_hooked_exits(model, (ids[:2], mask[:2]), 3, exits=3, mask_input=1).eval()
    assert net.points == layers[:3]  # never after the last layer: the classifier is right behind it
    with torch.no_grad():
        expected = model(ids, mask)
        assert torch.equal(net(ids, mask), expected)  # no threshold: the model, bit for bit
        every = net.exit_logits(ids, mask)
        net.thresholds.copy_(torch.tensor([float(confidence(every[0], "confidence").median()), math.inf, math.inf]))
        out = net(ids, mask)
    taken = net.last_exits
    first, final = taken == 0, taken == 3
    assert 0 < int(first.sum()) < len(ids) and bool(final.any())
    assert torch.equal(out[first], every[0][first])
    assert torch.equal(out[final], expected[final])
    # padding does not move a row's head: its logits alone equal its logits in the padded batch
    row = int((first & (mask.sum(1) < 12)).nonzero()[0])
    with torch.no_grad():
        alone = net(ids[row:row + 1, :8], mask[row:row + 1, :8])
    assert torch.allclose(alone, every[0][row:row + 1], atol=1e-5)
    # a batch-1 row leaving at the first exit runs no later layer
    assert count_macs(net, (ids[row:row + 1], mask[row:row + 1])) < 0.5 * count_macs(model, (ids[row:row + 1],
                                                                                            mask[row:row + 1]))
    # training mode: every head's logits for the loss, the model's output returned
    net.train()
    assert torch.allclose(net(ids, mask), expected, atol=1e-6) and len(net.exit_outputs) == 3
    net.eval()
    # the structure rebuilds the same network around a fresh model
    structure = EarlyExitStructure(criterion="confidence", hooked=True, mask_input=1, heads=[
        HeadRecord(after=0, module=n, kind="pooler", features=32, classes=3) for n in net.points])
    rebuilt = restore_early_exit(_tiny_bert_classifier(), structure)
    assert isinstance(rebuilt, HookedExitNetwork)
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(ids, mask), out)


def test_hooked_exits_refuse_export_rather_than_bake_one_path():
    pytest.importorskip("transformers")
    from slimkit.core.errors import UnsupportedModelError
    from slimkit.techniques.dynamic.exits import attach_hooked_exits

    ids, mask = _token_rows(4)
    net = attach_hooked_exits(_tiny_bert_classifier(), (ids[:2], mask[:2]), 3, exits=1, mask_input=1).eval()
    with pytest.raises(UnsupportedModelError, match="eager PyTorch only"):
        net.export_graph()


def test_patience_counts_agreeing_exits_and_every_route_takes_the_same_exits(tmp_path):
    from slimkit.techniques.dynamic.exits import exit_scores

    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # predictions per exit: 0, 0, 1, 1, 1 -> agreeing run lengths 0, 1, 0, 1, 2
    assert [float(s) for s in exit_scores([a, a, b, b, b], "patience")] == [0, 1, 0, 1, 2]
    model = _backbone()
    x = torch.randn(64, 3, 16, 16)
    net = attach_exits(model, (x[:1],), 5, after=["1", "3", "5"], criterion="patience").eval()
    with torch.no_grad():
        every = net.exit_logits(x)
        net.thresholds.fill_(1.0)  # leave once two exits in a row agree
        out = net(x)
        taken = net.last_exits.clone()
        scores = exit_scores(every[:-1], "patience")
        expected = torch.full((64,), 3)
        for k in reversed(range(3)):
            expected = torch.where(scores[k] >= 1, torch.full_like(expected, k), expected)
        assert torch.equal(taken, expected) and len(set(taken.tolist())) > 1
        assert 0 not in taken.tolist()  # the first exit has nothing to agree with
        rows = torch.cat([net(x[i:i + 1]) for i in range(64)])
        graph = net.export_graph().eval()(x)
    for o in (out, rows, graph):
        assert torch.allclose(o, torch.stack(every)[taken, torch.arange(64)], atol=1e-5)
    result = calibrate(net, every, every[-1].argmax(-1), budget=0.0)
    assert result.threshold in (1.0, 2.0, math.inf)


class _FoldsRows(nn.Module):
    """Its longest layer list runs on rows folded with patches (as MobileViT's transformer does)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(4)])
        self.row_layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, 4)  # [rows x 2, 4]
        for layer in self.patch_layers:
            h = torch.relu(layer(h))
        h = h.reshape(x.shape[0], 8)
        for layer in self.row_layers:
            h = torch.relu(layer(h))
        return self.head(h)


def test_hooked_exits_go_on_a_layer_list_with_one_output_row_per_input_row():
    from slimkit.techniques.dynamic.exits import attach_hooked_exits

    torch.manual_seed(0)
    x = torch.randn(2, 8)
    net = attach_hooked_exits(_FoldsRows().eval(), (x,), 3, exits=1)
    assert net.points == ["row_layers.0"] or net.points == ["row_layers.1"]
    with pytest.raises(ValueError, match="not one per input row"):
        attach_hooked_exits(_FoldsRows().eval(), (x,), 3, after=["patch_layers.1"])
