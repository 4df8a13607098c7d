"""Atomic file writes and safe (pickle-free) tensor serialization.

Every file slimkit writes goes to a temporary sibling first and is renamed into place, so a
killed run never leaves a half-written artifact. Tensors are stored with safetensors; nothing
here unpickles data.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from slimkit.core.errors import CheckpointError

_UMASK = os.umask(0)  # read once, at import (setting it back at once): the process's file-creation mask
os.umask(_UMASK)


def cache_dir() -> Path:
    """Where slimkit caches what is slow to recompute (reference outputs, teacher outputs):
    ``SLIMKIT_CACHE``, default ``~/.cache/slimkit``."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a written file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def tensors_for_saving(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies, with tensors that share storage (tied weights) stored once.

    safetensors refuses aliased tensors; a tied weight is saved under its first name and
    restored through ``load_state_dict`` of the model that ties it again.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() > 0 and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def state_dict_bytes(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors serialization of a state dict: the bytes a user would ship, the same
    bytes for the same tensors and metadata whatever order their keys came in."""
    from safetensors.torch import save

    return _canonical_header(save(tensors_for_saving(state), metadata=dict(metadata) if metadata else None))


def _canonical_header(data: bytes) -> bytes:
    """``data`` with its safetensors header rewritten in a fixed order: metadata keys sorted,
    tensors in data order. safetensors writes the metadata from a hash map, in a different order
    from one call to the next; the tensor data itself is already ordered by dtype and name."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__").items()))} if "__metadata__" in header else {}
    ordered.update(sorted(header.items(), key=lambda item: item[1]["data_offsets"]))
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def save_state_dict(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor],
                    metadata: Mapping[str, str] | None = None) -> Path:
    return atomic_write_bytes(path, state_dict_bytes(state, metadata))


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or foreign file is a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint ({err})") from None


def load_into_(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Load ``state`` into ``model`` strictly; mismatched names or shapes name the first culprits."""
    problem = weights_mismatch(model, {k: tuple(t.shape) for k, t in state.items()})
    if problem:
        raise CheckpointError(f"{source}: does not fit the model: {problem}")
    model.load_state_dict(dict(state), strict=False)
    return model


def weights_mismatch(model: torch.nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """What keeps tensors of these names and shapes from loading into ``model`` ('' if nothing);
    a tied weight saved under its other name is not missing."""
    own = model.state_dict(keep_vars=True)
    storage = {k: v.untyped_storage().data_ptr() for k, v in own.items()}
    missing = [k for k in own if k not in shapes
               and not any(o in shapes for o in own if o != k and storage[o] == storage[k])]
    unexpected = [k for k in shapes if k not in own]
    bad_shape = [k for k in own if k in shapes and tuple(shapes[k]) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}")
    if bad_shape:
        k = bad_shape[0]
        problems.append(f"shape of {k!r} is {tuple(shapes[k])}, model has {tuple(own[k].shape)}")
    return "; ".join(problems)
