"""Layer skipping trained from scratch against static removal trained from scratch (exploratory).

    .venv/bin/python benchmarks/skip_scratch.py gated 0 15 0.67 --per-block
    .venv/bin/python benchmarks/skip_scratch.py static 0 15 --remove 9 10 11

`shapes-cnn` with `cnn_shapes_dws` (`depths: [2, 2, 6]`, residual): the gated network (a gate before
each of its 7 residual blocks, the compute penalty or ConvNet-AIG's per-gate target loss, as
ConvNet-AIG trains ResNets: from scratch, for the whole schedule) or the network with the named
blocks removed, each trained with the task's baseline settings (batch 128, lr 2e-3) for EPOCHS.
The gated network is then calibrated on validation rows to TARGET and +-0.05 of the MACs. Prints
test accuracy and mean MACs per row; one thread.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["gated", "static"])
    parser.add_argument("seed", type=int)
    parser.add_argument("epochs", type=int)
    parser.add_argument("target", type=float, nargs="?", default=0.67)
    parser.add_argument("--per-block", action="store_true")
    parser.add_argument("--remove", nargs="+", default=["9", "10", "11"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    from slimkit.measure.macs import count_macs
    from slimkit.measure.quality import predict
    from slimkit.tasks.base import build_task
    from slimkit.tasks.context import Context
    from slimkit.techniques.dynamic import skipping as sk
    from slimkit.techniques.pruning.blocks import remove_blocks_
    from slimkit.train.config import TrainConfig

    torch.manual_seed(args.seed)
    task = build_task({"name": "shapes-cnn", "model": "cnn_shapes_dws",
                       "model_args": {"depths": [2, 2, 6], "residual": True}})
    model = task.build_model()
    ctx = Context(task=task, seed=args.seed)
    x = tuple(t[:2] for t in task.data.train.inputs)
    cfg = TrainConfig(epochs=args.epochs, lr=2e-3, batch_size=128, keep_best=False)

    def acc(m) -> float:
        m.eval()
        return task.evaluate(predict(m, task.data.test, 256), task.data.test.targets)["quality"]

    started = time.perf_counter()
    if args.mode == "static":
        remove_blocks_(model, args.remove)
        ctx.train(model, cfg, description="static")
        print(f"static, {args.remove} removed: MACs {count_macs(model.eval(), (x[0][:1],)):,}, "
              f"test accuracy {acc(model):.4f} ({time.perf_counter() - started:.0f} s)")
        return
    net = sk.attach_gates(model, x)
    total, blocks, gates = sk.block_macs(net, x)
    backbone, costs = float(total - sum(gates.values())), [float(blocks[n]) for n in net.names]
    gate_macs = float(sum(gates.values()))
    term = sk.SkipPenalty(args.target, backbone, costs, weight=10.0, per_block=args.per_block)
    ctx.train(net, cfg, loss_terms=[term], description="gated")
    for target in (args.target - 0.05, args.target, args.target + 0.05):
        sk.calibrate_threshold_(net, task.data.val.inputs, target, costs, backbone, gate_macs)
        _, ran = sk.execution(net, task.data.test.inputs)
        share = sk.executed_share(ran, costs, backbone, gate_macs)
        print(f"gated, calibrated to {target:.2f}: test MACs share {share:.3f} ({share * backbone:,.0f} per row), "
              f"test accuracy {acc(net):.4f}, block rates {[round(r, 2) for r in ran.float().mean(0).tolist()]}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
