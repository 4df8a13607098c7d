"""Data-parallel fit on 2 gloo processes gives one process's weights; torchrun runs a recipe."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.io import load_state_dict, save_state_dict
from slimkit.data.base import DataSplits, Split
from slimkit.train.config import TrainConfig
from slimkit.train.loop import fit
from slimkit.train.objectives import TaskLoss

# 200 rows at batch 48: the last batch (8 rows) splits evenly, the one before uneven shares do not arise;
# 203 rows: the last batch has 11 rows (5 and 6 per rank: the weighted loss keeps it exact)
ROWS = 203
CFG = dict(epochs=3, batch_size=48, lr=3e-3, accumulate=2, grad_clip=1.0, keep_best=False)


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Dropout(0.0), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, 10, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + 2 * (x[:, 3] > 0).long()
    split = Split((x,), y)
    return model, DataSplits(train=split, val=split, test=split)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, data = _setup()
        result = fit(model, data, TrainConfig(**CFG), loss_terms=[TaskLoss(F.cross_entropy)], seed=3)
        if rank == 0:
            save_state_dict(Path(out), {**model.state_dict(), "loss": torch.tensor(result.history[-1]["loss"])})
        else:  # every rank holds the same weights
            save_state_dict(Path(out).with_suffix(f".rank{rank}"), model.state_dict())
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_the_weights_of_one_process(tmp_path):
    model, data = _setup()
    single = fit(model, data, TrainConfig(**CFG), loss_terms=[TaskLoss(F.cross_entropy)], seed=3)
    out = tmp_path / "ddp.safetensors"
    mp.start_processes(_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    got = load_state_dict(out)
    other = load_state_dict(out.with_suffix(".rank1"))
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(got[name], weight, rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(other[name], got[name], rtol=0, atol=0, msg=name)
    assert float(got["loss"]) == pytest.approx(single.history[-1]["loss"], rel=1e-5)  # the global epoch loss


def test_torchrun_runs_a_recipe_on_two_processes(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: digits-mlp\nbaseline: {train: {epochs: 1}}\n"
                      "steps:\n  - train: {epochs: 1, batch_size: 64}\n")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), "-m", "slimkit", "run", str(recipe), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "results.json").exists()
    assert not list(out.glob("**/.rank*"))
    import json

    results = json.loads((out / "results.json").read_text())
    train = next(s for s in results["steps"] if s["name"].startswith("train"))
    assert train["info"].get("world_size") == 2
