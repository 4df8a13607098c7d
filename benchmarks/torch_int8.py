"""PyTorch's own CPU int8 kernels against float, on one transformer-sized linear: why slimkit's
int8 models run on ONNX Runtime / OpenVINO and not on them.

    .venv/bin/python benchmarks/torch_int8.py [--m 128] [--k 384] [--n 1536] [--threads 1] [--rounds 15]

- `torch._int_mm` (int8 x int8 -> int32 matmul) against a float32 matmul of the same shape;
- `torch.ao.quantization.quantize_dynamic` (fbgemm/x86 dynamic int8 linear: per-tensor 7-bit
  activations) against the float `nn.Linear`.

All in one process (one runtime: PyTorch), interleaved in rotated order over rounds; medians of
per-round medians. Writes OUT/torch_int8.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_atomic  # noqa: E402


def per_call_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=128, help="rows (tokens)")
    parser.add_argument("--k", type=int, default=384, help="input features")
    parser.add_argument("--n", type=int, default=1536, help="output features")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a8 = torch.randint(-127, 128, (args.m, args.k), dtype=torch.int8)
    b8 = torch.randint(-63, 64, (args.k, args.n), dtype=torch.int8)
    af, bf = a8.float(), b8.float()
    linear = torch.nn.Linear(args.k, args.n).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        dynamic = quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(args.m, args.k)
    exact = torch.equal(torch._int_mm(a8, b8), a8.int() @ b8.int())
    cases = {"torch._int_mm (int8)": (lambda: torch._int_mm(a8, b8), 2),
             "float32 matmul": (lambda: af @ bf, 50),
             "torch.ao dynamic int8 Linear": (lambda: dynamic(x), 50),
             "float32 Linear": (lambda: linear(x), 50)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    with torch.inference_mode():
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, repeats = cases[name]
                times[name].append(per_call_ms(fn, repeats))
    med = {name: statistics.median(t) for name, t in times.items()}
    command = (f"python benchmarks/torch_int8.py --m {args.m} --k {args.k} --n {args.n} --threads {args.threads} "
               f"--rounds {args.rounds}")
    lines = ["# PyTorch's own CPU int8 kernels vs float", "",
             f"Command: `{command}`; {platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}, {args.threads} thread(s), {args.rounds} rounds (medians).", "",
             f"Shape: ({args.m} x {args.k}) @ ({args.k} x {args.n}). `torch._int_mm` equals the int32 reference: {exact}.",
             "", "| kernel | ms | float / this |", "|---|---|---|"]
    pairs = {"torch._int_mm (int8)": "float32 matmul", "float32 matmul": "float32 matmul",
             "torch.ao dynamic int8 Linear": "float32 Linear", "float32 Linear": "float32 Linear"}
    for name in names:
        lines.append(f"| {name} | {med[name]:.3f} | {med[pairs[name]] / med[name]:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_atomic(args.out, {"torch_int8.md": text,
                            "torch_int8.json": json.dumps({"command": command, "median_ms": med, "exact": exact,
                                                           "per_round_ms": times}, indent=2) + "\n"})


if __name__ == "__main__":
    main()
