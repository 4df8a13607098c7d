"""Tests for the procedural shapes dataset (slimkit.data.shapes)."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.data import shapes as shapes_mod
from slimkit.data.shapes import SHAPE_CLASSES, make_shapes

K = len(SHAPE_CLASSES)


def test_class_list():
    assert K >= 10
    assert len(set(SHAPE_CLASSES)) == K
    assert all(isinstance(c, str) and c for c in SHAPE_CLASSES)


def test_shapes_dtypes_and_range():
    x, y = make_shapes(50, seed=0)
    assert x.shape == (50, 3, 32, 32)
    assert x.dtype == np.float32
    assert y.shape == (50,)
    assert y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.isfinite(x).all()
    assert y.min() >= 0 and y.max() < K


def test_custom_size_and_empty():
    x, y = make_shapes(7, seed=1, size=48)
    assert x.shape == (7, 3, 48, 48) and y.shape == (7,)
    x, y = make_shapes(0, seed=1)
    assert x.shape == (0, 3, 32, 32) and y.shape == (0,)
    assert x.dtype == np.float32 and y.dtype == np.int64


def test_deterministic_per_seed():
    x1, y1 = make_shapes(40, seed=123)
    x2, y2 = make_shapes(40, seed=123)
    assert np.array_equal(x1, x2)
    assert np.array_equal(y1, y2)
    x3, y3 = make_shapes(40, seed=124)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(y1, y3)


@pytest.mark.parametrize("n", [K * 5, K * 5 + 7, 3])
def test_class_balance_and_shuffled(n):
    _, y = make_shapes(n, seed=5)
    counts = np.bincount(y, minlength=K)
    assert counts.sum() == n
    assert set(np.unique(counts)) <= {n // K, n // K + 1}
    assert (counts == n // K + 1).sum() == n % K
    if n > 2 * K:
        assert not np.all(np.diff(y) >= 0), "labels should be shuffled"


def test_every_class_renders_visible_shape():
    # Clean rendering: white shape on black, no texture, clutter or noise.
    per = 6
    labels = np.repeat(np.arange(K), per)
    x = shapes_mod._render(labels, np.random.default_rng(0), 32, clean=True)
    assert x.shape == (K * per, 3, 32, 32)
    area = x[:, 0].sum(axis=(1, 2))  # coverage in pixels
    assert (area > 12).all(), area.min()
    assert (area < 0.8 * 32 * 32).all(), area.max()
    # Each class mask differs from every other class's (not identical renders).
    first = x[::per, 0]
    for i in range(K):
        for j in range(i + 1, K):
            assert not np.array_equal(first[i], first[j])


def test_full_render_has_visible_target():
    # With all randomisation on, the images are not blank/flat.
    x, _ = make_shapes(60, seed=2)
    assert (x.std(axis=(1, 2, 3)) > 0.02).all()


def test_mean_colour_carries_no_label_information():
    n = 200 * K
    x, y = make_shapes(n, seed=7)
    feats = x.mean(axis=(2, 3))  # [n, 3] mean colour per image
    n_tr = n * 3 // 4
    ftr, ytr, fte, yte = feats[:n_tr], y[:n_tr], feats[n_tr:], y[n_tr:]
    centroids = np.stack([ftr[ytr == c].mean(axis=0) for c in range(K)])
    pred = np.argmin(((fte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    acc = float((pred == yte).mean())
    assert acc < 1.0 / K + 0.07, acc
    # Class-conditional mean colours are all close to the global mean.
    assert np.abs(centroids - feats.mean(axis=0)).max() < 0.08


def test_load_shapes_splits_small():
    from slimkit.data.shapes import load_shapes_splits

    d = load_shapes_splits(n_train=48, n_val=24, n_test=24)
    assert d.sizes() == {"train": 48, "val": 24, "test": 24}
    (x,) = d.train.inputs
    assert tuple(x.shape) == (48, 3, 32, 32)
    assert str(x.dtype) == "torch.float32" and str(d.train.targets.dtype) == "torch.int64"
    # Splits come from different seeds: no identical images shared.
    assert not (x[:24] == d.val.inputs[0]).all(dim=(1, 2, 3)).any()


def test_blur_identity_and_mean_preserving():
    rng = np.random.default_rng(0)
    img = rng.random((4, 3, 16, 16), dtype=np.float32)
    same = shapes_mod._blur(img, np.zeros(4, dtype=np.float32))
    assert np.array_equal(same, img)
    flat = np.full((2, 3, 16, 16), 0.3, dtype=np.float32)
    out = shapes_mod._blur(flat, np.full(2, 0.8, dtype=np.float32))
    assert np.allclose(out, 0.3, atol=1e-6)
    blurred = shapes_mod._blur(img, np.full(4, 0.8, dtype=np.float32))
    assert blurred.std() < img.std()


def test_fragment_is_clipped_and_off_when_disabled():
    # The distractor fragment covers strictly less than the full shape it comes
    # from (a straight cut removes part of it), and nothing where it is off.
    n = 4 * K
    labels = np.arange(n) % K
    p = shapes_mod._sample_params(labels, np.random.default_rng(3), 32, clean=False)
    p["frag_on"][:] = True
    p["frag_scale"][:] = 10.0
    p["frag_cx"][:] = 16.0
    p["frag_cy"][:] = 16.0
    coords = np.arange(32, dtype=np.float32) + 0.5
    X, Y = coords[None, None, :], coords[None, :, None]
    frag = shapes_mod._ramp(shapes_mod._fragment_sdf(p, X, Y))[:, 0].sum(axis=(1, 2))
    full = shapes_mod._ramp(
        shapes_mod._shape_sdf(p["frag_labels"], p["frag_cx"], p["frag_cy"], p["frag_rot"], p["frag_scale"], X, Y)
    ).sum(axis=(1, 2))
    assert (frag < full - 1.0).all()
    p["frag_on"][:] = False
    assert shapes_mod._ramp(shapes_mod._fragment_sdf(p, X, Y)).max() == 0.0
