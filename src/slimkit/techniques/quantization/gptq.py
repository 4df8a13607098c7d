"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR 2023): choose a Linear layer's integer codes one input column at a time,
and after each column spread its rounding error over the columns not yet quantized, weighted by
the inverse Hessian of the layer's squared output error, ``H = 2 X^T X`` over calibration inputs.

Written here rather than taken from a library: the maintained implementations (AutoGPTQ,
GPTQModel, llm-compressor) target causal LLMs on CUDA and pull in their own model wrappers; the
algorithm itself is forty lines of linear algebra on one layer, and slimkit needs it on any
``nn.Linear`` and in its own storage format (``weight_only.py``).
"""

from __future__ import annotations

import torch

from slimkit.techniques.quantization.weight_only import WeightOnlySpec, group_qparams, group_size_for, quantize_groups


class HessianAccumulator:
    """Running ``2/n * sum x x^T`` of a layer's inputs (rows of the flattened ``(..., K)`` input)."""

    def __init__(self, in_features: int) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        total = self.n + x.shape[0]
        self.h.mul_(self.n / total).add_(x.T @ x, alpha=2.0 / total)
        self.n = total


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: WeightOnlySpec, *, damp: float = 0.01,
                  block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ codes for a weight ``(N, K)`` given the input Hessian ``(K, K)``.

    Returns unsigned codes ``(N, K)`` and per-group scale and zero point ``(N, G)`` in the layout
    ``WeightOnlyLinear`` stores. A group's (scale, zero point) is set by min-max when the sweep
    reaches its first column, on the weights as updated by the errors of earlier columns (the
    reference implementation's order). Inputs that never vary (zero Hessian diagonal) get their
    weights zeroed, as their contribution is a constant the rest cannot see. ``damp`` is the
    fraction of the mean Hessian diagonal added to it (numerical stability).
    """
    w = weight.detach().double().clone()
    n, k = w.shape
    group = group_size_for(spec, k)
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(k, dtype=h.dtype) * damp * torch.diag(h).mean()
    # the upper Cholesky factor of H^-1: row i holds the error-propagation weights of column i
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros(n, k, dtype=torch.int32)
    n_groups = k // group
    scales = torch.zeros(n, n_groups, dtype=torch.float32)
    zeros = torch.zeros(n, n_groups, dtype=torch.int32)
    block_size = max(block_size // group, 1) * group if group <= block_size else k
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        wb = w[:, b0:b1].clone()
        errors = torch.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            g = col // group
            if col % group == 0:
                s, z = group_qparams(wb[:, i:i + group].float().unsqueeze(1), spec)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            q = quantize_groups(wb[:, i:i + 1].unsqueeze(1), scales[:, g:g + 1], zeros[:, g:g + 1], spec)[:, 0, 0]
            codes[:, col] = q
            deq = (q.double() - zeros[:, g].double()) * scales[:, g].double()
            err = (wb[:, i] - deq) / hb[i, i]
            wb[:, i:] -= err.unsqueeze(1) * hb[i, i:].unsqueeze(0)
            errors[:, i] = err
        w[:, b1:] -= errors @ hinv[b0:b1, b1:]
    return codes, scales, zeros
