"""Multiply-accumulates counted from the executed graph with ``torch.utils.flop_counter``."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """MACs of one forward pass; see ``count_macs_by_module``."""
    return count_macs_by_module(model, example_inputs)[""]


@torch.no_grad()
def count_macs_by_module(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """MACs of one forward pass on ``example_inputs`` (FLOPs of matmuls/convs/attention / 2), in
    total (key ``""``) and inside each submodule that does any (keyed by its path in ``model``).

    Element-wise ops (activations, bias adds, normalisation) are not counted, as in the
    papers' MAC figures. PyTorch's fused multi-head-attention fast path is invisible to the
    counter, and so is the fused CPU kernel of scaled-dot-product attention: both are switched
    to their plain-math forms while counting (same arithmetic, visible matmuls). Recurrent layers
    count per real step: GRU and RNN layers (and any layer on a packed sequence) run as visible
    matmuls, and the fused oneDNN kernel of a CPU LSTM on a padded batch is counted by
    ``_mkldnn_rnn_layer_flops`` (every step of every row it is given).
    """
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    # the counter's module tracker hooks the backward of every tensor that requires grad; a view
    # of a parameter taken under no_grad (DeBERTa's relative-position embeddings) has none and
    # makes it fail, so no parameter requires grad while counting
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
            model(*example_inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        for p in trainable:
            p.requires_grad_(True)
    by_module = {"": int(counter.get_total_flops()) // 2}
    root = type(model).__name__
    for name, flops in counter.get_flop_counts().items():
        if name.startswith(root + "."):  # the counter names modules "<root class>.<path>"
            by_module[name[len(root) + 1:]] = int(sum(flops.values())) // 2
    return by_module


def _mkldnn_rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, **kwargs) -> int:
    """FLOPs of ``aten.mkldnn_rnn_layer`` (one direction of one LSTM layer on CPU, padded input):
    per step and row, the gate matmuls of the input and hidden weights ([4H, in] and [4H, H]).
    Its input is [time, rows, features] or batch-first; either way every position is computed."""
    positions = input_shape[0] * input_shape[1]
    return 2 * positions * (w_ih_shape[0] * w_ih_shape[1] + w_hh_shape[0] * w_hh_shape[1])


_EXTRA_FLOPS = {torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops}  # keyed by overload packet
