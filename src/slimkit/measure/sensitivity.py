"""How far an integer model's outputs move under input noise far below one quantization step.

Two correct implementations of an integer model (eager's float simulation, a runtime's int8
kernels, an exported graph running its float ops in another order) round a few values
differently, and a network amplifies such flips. ``rounding_sensitivity`` measures how far: the
tolerance a runtime's or graph's difference from eager is judged against (the conformance
matrix, ``slimkit.recipes.compat``; the ``deploy`` step's graph check).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from slimkit.core.outputs import primary_output

ROUNDING_NOISE = 1e-4  # of each input's largest magnitude: about 1/40 of a uint8 step
FLOAT_NOISE = 1e-6  # a few float32 ulps: what another order of float ops amounts to
SENSITIVITY_DRAWS = 8


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@dataclass(frozen=True)
class Sensitivity:
    """How far an integer model's outputs move when its float inputs move by far less than one
    quantization step: ``output``, the largest relative change of the primary output; ``agreement``,
    the lowest fraction of top-1 predictions (argmax over the last axis) left unchanged."""

    output: float
    agreement: float


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def rounding_sensitivity(model: nn.Module, inputs: tuple[torch.Tensor, ...], *, noise: float = ROUNDING_NOISE,
                         draws: int = SENSITIVITY_DRAWS, seed: int = 0) -> Sensitivity:
    """Move each float input of ``inputs`` by Gaussian noise of ``noise`` times its largest magnitude,
    ``draws`` times, and record the worst change. For an integer model this is how far two correct
    implementations that round a few values differently can drift apart. Integer inputs (token ids)
    cannot move: for them the noise goes on the outputs of the model's embedding tables, the first
    float values of a token model (none: ``Sensitivity(0, 1)``)."""
    embeddings = [] if any(t.is_floating_point() for t in inputs) else \
        [m for m in model.modules() if isinstance(m, nn.Embedding) or type(m).__name__.endswith("Embedding")]
    if not any(t.is_floating_point() for t in inputs) and not embeddings:
        return Sensitivity(0.0, 1.0)
    generator = torch.Generator().manual_seed(seed)

    def jitter(t: torch.Tensor) -> torch.Tensor:
        return t + noise * t.abs().max() * torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)

    output, agreement = 0.0, 1.0
    with torch.no_grad():
        reference = primary_output(model(*inputs))
        for _ in range(draws):
            if embeddings:
                hooks = [m.register_forward_hook(lambda mod, args, out: jitter(out) if isinstance(out, torch.Tensor)
                                                 and out.is_floating_point() else out) for m in embeddings]
                try:
                    out = primary_output(model(*inputs))
                finally:
                    for h in hooks:
                        h.remove()
            else:
                out = primary_output(model(*tuple(jitter(t) if t.is_floating_point() else t for t in inputs)))
            output, agreement = max(output, rel_diff(out, reference)), min(agreement, top1_agreement(out, reference))
    return Sensitivity(output, agreement)
