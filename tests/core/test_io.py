import os

import pytest
import torch
import torch.nn as nn

from slimkit.core.errors import CheckpointError
from slimkit.core.io import atomic_write_bytes, load_into_, load_state_dict, save_state_dict


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.bin"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_safetensors_roundtrip_and_tied_weights(tmp_path):
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"emb": emb, "head": head})
    save_state_dict(tmp_path / "m.safetensors", model.state_dict())
    state = load_state_dict(tmp_path / "m.safetensors")
    assert len(state) == 1  # the tied tensor is stored once
    fresh = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    fresh["head"].weight = fresh["emb"].weight
    load_into_(fresh, state, "m.safetensors")
    assert torch.equal(fresh["head"].weight, model["head"].weight)


@pytest.mark.parametrize("payload", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, payload):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a valid safetensors checkpoint"):
        load_state_dict(path)


def test_pickle_file_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # a pickle-based file must never be loaded
    with pytest.raises(CheckpointError):
        load_state_dict(path)


def test_state_that_does_not_fit_names_the_tensor(tmp_path):
    save_state_dict(tmp_path / "m.safetensors", nn.Linear(3, 2).state_dict())
    with pytest.raises(CheckpointError, match=r"shape of 'weight' is \(2, 3\), model has \(4, 3\)"):
        load_into_(nn.Linear(3, 4), load_state_dict(tmp_path / "m.safetensors"), "m")
    with pytest.raises(CheckpointError, match="missing"):
        load_into_(nn.Sequential(nn.Linear(3, 2)), load_state_dict(tmp_path / "m.safetensors"), "m")


def test_same_weights_give_byte_identical_files(tmp_path):
    from slimkit.core.io import state_dict_bytes

    state = {"b.weight": torch.randn(3, 4), "a.bias": torch.arange(5, dtype=torch.int8), "c": torch.ones(2, dtype=torch.float16)}
    meta = {"slimkit_step": "train", "task": "digits-mlp", "zeta": "1", "alpha": "2"}
    reordered = {k: state[k].clone() for k in reversed(list(state))}
    blobs = {state_dict_bytes(state, meta) for _ in range(8)}  # metadata used to come out in a random order
    blobs.add(state_dict_bytes(reordered, dict(reversed(list(meta.items())))))
    assert len(blobs) == 1
    save_state_dict(tmp_path / "x.safetensors", state, meta)
    save_state_dict(tmp_path / "y.safetensors", reordered, meta)
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes() == blobs.pop()
    loaded = load_state_dict(tmp_path / "y.safetensors")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "y.safetensors"), "pt") as f:
        assert f.metadata() == meta


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through a private temp file; the file they leave follows the umask, as
    open() would (not mkstemp's 0600)."""
    import os
    import stat

    from slimkit.core.io import atomic_write_text

    old = os.umask(0o022)
    os.umask(old)
    path = atomic_write_text(tmp_path / "results.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old
