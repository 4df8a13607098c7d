"""What a student trains on besides the labelled split: inputs the teacher labels.

Unlabelled inputs come from the task (a few-label task keeps the rest of its training split
back); generated ones come from ``slimkit.data.generate`` (mixup, splice: a teacher's function is
best transferred on inputs that cover more of the input space than the labelled few) or, with no
data at all, from ``slimkit.data.synthetic.deep_inversion`` (inputs synthesised from the
teacher's BatchNorm statistics). The teacher's outputs on all of them are computed once, in eval
mode, and cached on disk keyed by the teacher's weights and the inputs, so repeated runs and
every epoch reuse them.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from slimkit.core.errors import CheckpointError
from slimkit.data.base import Split
from slimkit.data.generate import concat, generate  # noqa: F401 - where the distill step finds them


def _key(model: nn.Module, split: Split) -> str:
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
                      else t.detach().float().cpu().numpy().tobytes())
    for t in split.inputs:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.contiguous().numpy().tobytes())
    digest.update(type(model).__name__.encode())
    return digest.hexdigest()[:20]


@torch.no_grad()
def teacher_outputs(model: nn.Module, split: Split, device: torch.device | str, use_disk: bool,
                    batch_size: int = 256) -> tuple[torch.Tensor, str]:
    """The teacher's outputs on every row of ``split`` (eval mode), with how they were obtained:
    ``hit`` (read from the cache), ``stored`` (computed and cached) or ``computed``. A cache file
    that cannot be read is computed again and replaced."""
    from slimkit.core.io import load_state_dict, save_state_dict
    from slimkit.core.io import cache_dir
    from slimkit.measure.quality import predict

    path = cache_dir() / f"distill-teacher-{_key(model, split)}.safetensors" if use_disk else None
    if path is not None and path.is_file():
        try:
            cached = load_state_dict(path)["outputs"]
            if len(cached) == len(split):
                return cached, "hit"
        except (CheckpointError, KeyError):
            pass
    outputs = predict(model.eval(), split, batch_size, device)
    if path is None:
        return outputs, "computed"
    save_state_dict(path, {"outputs": outputs})
    return outputs, "stored"
