"""Procedurally generated shape-classification dataset ("shapes").

Small RGB images (default 32x32), each containing one target shape whose class
is the label.  Everything except the *outline* of the target shape is
randomised independently of the label: position, scale, rotation, fill colour
and fill texture (contrast to the background can be low), background colour
and texture, clutter (thin lines, small blobs, arcs, "V" strokes and a smaller
fragment of a random class shape cut in half by a straight edge -- never a
complete copy of a class shape), thin occluding lines drawn across the target,
a slight per-image blur and Gaussian pixel noise.  Colour therefore carries no
label information; only the shape does.

Rendering is pure numpy and vectorised over batches: shapes are described by
signed-distance functions (SDFs) in a local, rotation/scale-normalised frame
and anti-aliased with a one-pixel ramp; 10k 32x32 images take ~3.5 s on two
CPU cores.

Output is fully deterministic in ``(n, seed, size)`` (bit-identical on a given
numpy build/platform; transcendental functions may differ in the last ulp
across platforms).

Difficulty (the constants below) is calibrated on the ``shapes-cnn`` task's own
baseline: ``cnn_shapes`` (width 32, ~289k params) trained as the task trains it
(15 epochs, batch 128, Adam 2e-3, cosine, keep-best on val) on
:func:`load_shapes_splits` reaches roughly 84-89% test accuracy (seed-to-seed
spread of a few points; 83.8/86.8% on CPU, 88.9/88.3% on GPU for seeds 0/1), so it is learnable but not saturated and leaves
headroom for comparing efficient architectures and compression; see
``tools/check_shapes_difficulty.py``.  The main confusions are the genuinely
close pairs (square/pentagon/circle, heart/ellipse/crescent, arrow/L-shape),
especially on small, low-contrast or occluded instances.

Example::

    from slimkit.data.shapes import make_shapes, SHAPE_CLASSES
    x, y = make_shapes(10_000, seed=0)   # x: float32 [n, 3, 32, 32] in [0, 1]
                                         # y: int64 [n] in range(len(SHAPE_CLASSES))
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SHAPE_CLASSES", "make_shapes", "load_shapes_splits"]

DATA_SEED = 0  # the splits are part of the task definition: fixed, independent of the run seed

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "pentagon",
    "lshape",
    "star",
    "cross",
    "ring",
    "ellipse",
    "heart",
    "crescent",
    "arrow",
)

_F = np.float32
_CHUNK = 128  # images rendered per vectorised chunk (keeps working set in cache)

# Difficulty knobs (all lengths are in pixels for size=32 and scale with size).
# Tuned with tools/check_shapes_difficulty.py so that the shapes-cnn baseline
# lands at ~84-89% test accuracy; accuracy is steep in them (e.g. scale
# (0.20, 0.42) with min contrast 0.30 and noise up to 0.10 gave ~58%), so
# changing any of them changes the data and needs a re-calibration.
_SCALE_RANGE = (0.28, 0.46)  # shape "radius" as a fraction of the image size
_MIN_CONTRAST = 0.45  # min RGB distance between fill and background base colour
_NOISE_STD = (0.00, 0.07)  # per-image Gaussian pixel-noise std range
_BLUR_SIGMA = (0.0, 0.5)  # per-image Gaussian blur sigma range (pixels), before the noise
_BG_TEX_DELTA = (0.05, 0.35)  # RGB distance between the two background colours
_FILL_TEX_DELTA = (0.05, 0.30)  # RGB distance between the two fill colours
_N_LINES = 3  # max thin straight lines of clutter
_N_BLOBS = 3  # max small blobs
_N_ARCS = 2  # max partial circular arcs
_N_VEES = 2  # max "V" strokes (two joined segments)
_P_FRAGMENT = 0.4  # probability of a smaller, half-plane-clipped fragment of a random class shape
_FRAGMENT_SCALE = (0.45, 0.75)  # fragment size relative to the target shape's
_N_OCCLUDERS = 2  # max thin lines drawn *over* the shape (each crossing near its centre)
_P_OCCLUDER = 0.20  # probability of each occluder

# Texture kinds.
_SOLID, _GRADIENT, _STRIPES, _CHECKER, _NOISE = range(5)
_FILL_KINDS = np.array([_SOLID, _GRADIENT, _STRIPES, _CHECKER, _NOISE])
_FILL_PROBS = np.array([0.35, 0.2, 0.15, 0.1, 0.2])
_BG_KINDS = np.array([_SOLID, _GRADIENT, _STRIPES, _NOISE])
_BG_PROBS = np.array([0.25, 0.3, 0.1, 0.35])


# --------------------------------------------------------------------------
# Signed distance functions in the local frame (shape "radius" ~ 1).
# All take float32 arrays u, v of identical shape; negative = inside.
# --------------------------------------------------------------------------


def _sd_circle(u, v, r=0.95):
    return np.sqrt(u * u + v * v) - r


def _sd_regular_polygon(u, v, n, radius=1.0):
    """Exact SDF of a regular n-gon with circumradius ``radius``, an edge normal on +u."""
    an = math.pi / n
    apothem = radius * math.cos(an)
    half_edge = radius * math.sin(an)
    theta = np.arctan2(v, u) + _F(an)  # edge midpoints at angle pi/n (k*2pi/n)
    sector = np.floor(theta / _F(2 * an))
    phi = theta - sector * _F(2 * an) - _F(an)  # in [-pi/n, pi/n), 0 = edge normal
    r = np.sqrt(u * u + v * v)
    qx = r * np.cos(phi)
    qy = np.abs(r * np.sin(phi))
    edge = qx - _F(apothem)
    corner = np.sqrt((qx - _F(apothem)) ** 2 + (qy - _F(half_edge)) ** 2)
    return np.where(qy <= _F(half_edge), edge, corner)


def _sd_polygon(u, v, verts):
    """Exact SDF of a simple (possibly non-convex) polygon (after I. Quilez)."""
    verts = np.asarray(verts, dtype=_F)
    n = len(verts)
    d = (u - verts[0, 0]) ** 2 + (v - verts[0, 1]) ** 2
    s = np.ones_like(u)
    j = n - 1
    for i in range(n):
        vix, viy = verts[i]
        ex, ey = verts[j] - verts[i]
        wx = u - vix
        wy = v - viy
        h = np.clip((wx * ex + wy * ey) / _F(ex * ex + ey * ey), 0.0, 1.0)
        bx = wx - ex * h
        by = wy - ey * h
        d = np.minimum(d, bx * bx + by * by)
        c1 = v >= viy
        c2 = v < verts[j, 1]
        c3 = ex * wy > ey * wx
        flip = (c1 & c2 & c3) | ~(c1 | c2 | c3)
        s = np.where(flip, -s, s)
        j = i
    return s * np.sqrt(d)


def _star_verts(points=5, outer=1.0, inner=0.45):
    out = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        a = math.pi / 2 + k * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


_STAR = _star_verts()
_W, _L = 0.30, 0.95
_CROSS = [
    (_W, _L), (_W, _W), (_L, _W), (_L, -_W), (_W, -_W), (_W, -_L),
    (-_W, -_L), (-_W, -_W), (-_L, -_W), (-_L, _W), (-_W, _W), (-_W, _L),
]  # fmt: skip
_ARROW = [
    (-0.95, -0.17), (0.12, -0.17), (0.12, -0.52), (0.97, 0.0),
    (0.12, 0.52), (0.12, 0.17), (-0.95, 0.17),
]  # fmt: skip

_LSHAPE = [
    (-0.45, -0.54), (0.82, -0.54), (0.82, -0.11),
    (-0.03, -0.11), (-0.03, 0.91), (-0.45, 0.91),
]  # fmt: skip


def _sd_ring(u, v, r_out=1.0, r_in=0.55):
    mid = 0.5 * (r_out + r_in)
    half = 0.5 * (r_out - r_in)
    return np.abs(np.sqrt(u * u + v * v) - _F(mid)) - _F(half)


def _sd_ellipse(u, v, a=1.0, b=0.5):
    # First-order SDF approximation f / |grad f|; accurate near the boundary,
    # which is all the anti-aliasing ramp needs.
    qu = u / _F(a)
    qv = v / _F(b)
    k0 = np.sqrt(qu * qu + qv * qv)
    k1 = np.sqrt((qu / _F(a)) ** 2 + (qv / _F(b)) ** 2)
    return (k0 - 1.0) * k0 / np.maximum(k1, _F(1e-6))


_HEART_TIP = [(-0.86, 0.16), (0.86, 0.16), (0.0, -0.92)]


def _sd_heart(u, v):
    # Two lobes (discs) on top of a downward-pointing triangle; the deep notch
    # between the lobes and the sharp tip keep it recognisable at low res.
    v = v - _F(0.06)
    lobe_l = np.sqrt((u + _F(0.43)) ** 2 + (v - _F(0.32)) ** 2) - _F(0.47)
    lobe_r = np.sqrt((u - _F(0.43)) ** 2 + (v - _F(0.32)) ** 2) - _F(0.47)
    return np.minimum(np.minimum(lobe_l, lobe_r), _sd_polygon(u, v, _HEART_TIP))


def _sd_crescent(u, v, d=0.5, ra=1.0, rb=0.8):
    # Quilez' moon: disc(ra) minus disc(rb) centred at (d, 0); shifted so the
    # crescent's body sits around the origin.
    px = u - _F(0.3)
    py = np.abs(v)
    a = (ra * ra - rb * rb + d * d) / (2.0 * d)
    b = math.sqrt(max(ra * ra - a * a, 0.0))
    tip = np.sqrt((px - _F(a)) ** 2 + (py - _F(b)) ** 2)
    body = np.maximum(
        np.sqrt(px * px + py * py) - _F(ra),
        -(np.sqrt((px - _F(d)) ** 2 + py * py) - _F(rb)),
    )
    use_tip = d * (px * b - py * a) > d * d * np.maximum(b - py, 0.0)
    return np.where(use_tip, tip, body)


_SDFS = (
    _sd_circle,
    lambda u, v: _sd_regular_polygon(u, v, 4),
    lambda u, v: _sd_regular_polygon(u, v, 3),
    lambda u, v: _sd_regular_polygon(u, v, 5),
    lambda u, v: _sd_polygon(u, v, _LSHAPE),
    lambda u, v: _sd_polygon(u, v, _STAR),
    lambda u, v: _sd_polygon(u, v, _CROSS),
    _sd_ring,
    _sd_ellipse,
    _sd_heart,
    _sd_crescent,
    lambda u, v: _sd_polygon(u, v, _ARROW),
)
assert len(_SDFS) == len(SHAPE_CLASSES)


# --------------------------------------------------------------------------
# Parameter sampling (one row per image; drawn up front in a fixed order).
# --------------------------------------------------------------------------


def _u(rng, lo, hi, shape):
    return (lo + (hi - lo) * rng.random(shape, dtype=np.float32)).astype(_F)


def _colour_pair(rng, n, min_delta, max_delta):
    """Base colour in [0,1]^3 and a second colour offset from it."""
    c1 = rng.random((n, 3), dtype=np.float32)
    direction = rng.standard_normal((n, 3), dtype=np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + _F(1e-6)
    c2 = np.clip(c1 + direction * _u(rng, min_delta, max_delta, (n, 1)), 0.0, 1.0)
    return c1, c2


def _texture_params(rng, n, kinds, probs, size, grid):
    return {
        "kind": rng.choice(kinds, size=n, p=probs),
        "angle": _u(rng, 0.0, math.pi, n),
        "period": _u(rng, 3.0, 8.0, n) * _F(size / 32.0),
        "phase": _u(rng, 0.0, 2 * math.pi, n),
        "span": _u(rng, 0.6, 1.4, n) * _F(size),
        "grid": rng.random((n, grid, grid), dtype=np.float32),
    }


def _sample_params(labels, rng, size, clean):
    n = labels.shape[0]
    s = _F(size / 32.0)
    p: dict = {"labels": labels}
    scale = _u(rng, *_SCALE_RANGE, n) * _F(size)
    margin = scale * _F(0.8)
    p["scale"] = scale
    p["cx"] = margin + rng.random(n, dtype=np.float32) * (_F(size) - 2 * margin)
    p["cy"] = margin + rng.random(n, dtype=np.float32) * (_F(size) - 2 * margin)
    p["rot"] = _u(rng, 0.0, 2 * math.pi, n)

    # Background colours, then fill colours kept at least _MIN_CONTRAST away
    # from the background base colour (first of 8 candidates that qualifies,
    # else the farthest one).
    p["bg1"], p["bg2"] = _colour_pair(rng, n, *_BG_TEX_DELTA)
    cand = rng.random((n, 8, 3), dtype=np.float32)
    dist = np.linalg.norm(cand - p["bg1"][:, None, :], axis=2)
    ok = dist >= _MIN_CONTRAST
    pick = np.where(ok.any(axis=1), ok.argmax(axis=1), dist.argmax(axis=1))
    fg1 = cand[np.arange(n), pick]
    direction = rng.standard_normal((n, 3), dtype=np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + _F(1e-6)
    fg2 = np.clip(fg1 + direction * _u(rng, *_FILL_TEX_DELTA, (n, 1)), 0.0, 1.0)
    p["fg1"], p["fg2"] = fg1, fg2

    p["bgtex"] = _texture_params(rng, n, _BG_KINDS, _BG_PROBS, size, 4)
    p["fgtex"] = _texture_params(rng, n, _FILL_KINDS, _FILL_PROBS, size, 6)

    # Clutter primitives; each has an "on" flag so the batch stays rectangular.
    def seg_params(k):
        mid = _u(rng, -0.1, 1.1, (n, k, 2)) * _F(size)
        ang = _u(rng, 0.0, 2 * math.pi, (n, k))
        half = _u(rng, 3.0, 14.0, (n, k)) * s
        d = np.stack([np.cos(ang), np.sin(ang)], -1) * half[..., None]
        return mid - d, mid + d

    n_lines = rng.integers(0, _N_LINES + 1, n)
    n_blobs = rng.integers(0, _N_BLOBS + 1, n)
    n_arcs = rng.integers(0, _N_ARCS + 1, n)
    n_vees = rng.integers(0, _N_VEES + 1, n)

    a, b = seg_params(_N_LINES)
    p["line_a"], p["line_b"] = a, b
    p["line_w"] = _u(rng, 0.5, 1.3, (n, _N_LINES)) * s
    p["line_on"] = np.arange(_N_LINES)[None] < n_lines[:, None]
    p["line_col"] = rng.random((n, _N_LINES, 3), dtype=np.float32)

    p["blob_c"] = _u(rng, 0.0, 1.0, (n, _N_BLOBS, 2)) * _F(size)
    p["blob_r"] = _u(rng, 0.7, 2.3, (n, _N_BLOBS)) * s
    p["blob_on"] = np.arange(_N_BLOBS)[None] < n_blobs[:, None]
    p["blob_col"] = rng.random((n, _N_BLOBS, 3), dtype=np.float32)

    p["arc_c"] = _u(rng, 0.0, 1.0, (n, _N_ARCS, 2)) * _F(size)
    p["arc_r"] = _u(rng, 3.0, 9.0, (n, _N_ARCS)) * s
    p["arc_mid"] = _u(rng, -math.pi, math.pi, (n, _N_ARCS))
    p["arc_half"] = _u(rng, 0.4, 1.7, (n, _N_ARCS))  # half-span in radians (< pi)
    p["arc_w"] = _u(rng, 0.5, 1.2, (n, _N_ARCS)) * s
    p["arc_on"] = np.arange(_N_ARCS)[None] < n_arcs[:, None]
    p["arc_col"] = rng.random((n, _N_ARCS, 3), dtype=np.float32)

    # V strokes: apex + two arms of random length/direction.
    apex = _u(rng, 0.0, 1.0, (n, _N_VEES, 2)) * _F(size)
    a0 = _u(rng, 0.0, 2 * math.pi, (n, _N_VEES))
    a1 = a0 + _u(rng, 0.5, 2.5, (n, _N_VEES))
    l0 = _u(rng, 3.0, 9.0, (n, _N_VEES)) * s
    l1 = _u(rng, 3.0, 9.0, (n, _N_VEES)) * s
    e0 = apex + np.stack([np.cos(a0), np.sin(a0)], -1) * l0[..., None]
    e1 = apex + np.stack([np.cos(a1), np.sin(a1)], -1) * l1[..., None]
    p["vee"] = (apex, e0, e1)
    p["vee_w"] = _u(rng, 0.5, 1.2, (n, _N_VEES)) * s
    p["vee_on"] = np.arange(_N_VEES)[None] < n_vees[:, None]
    p["vee_col"] = rng.random((n, _N_VEES, 3), dtype=np.float32)

    # Fragment: a smaller shape of a random class (independent of the label),
    # cut by a half-plane near its centre so it is never a complete class shape.
    p["frag_labels"] = rng.integers(0, len(SHAPE_CLASSES), n)
    p["frag_scale"] = scale * _u(rng, *_FRAGMENT_SCALE, n)
    p["frag_cx"] = _u(rng, 0.0, 1.0, n) * _F(size)
    p["frag_cy"] = _u(rng, 0.0, 1.0, n) * _F(size)
    p["frag_rot"] = _u(rng, 0.0, 2 * math.pi, n)
    p["frag_cut"] = _u(rng, 0.0, 2 * math.pi, n)  # direction of the cutting half-plane's normal
    p["frag_off"] = _u(rng, -0.3, 0.2, n)  # its offset from the centre (fraction of frag_scale)
    p["frag_on"] = rng.random((n, 1)) < _P_FRAGMENT
    p["frag_col"] = rng.random((n, 1, 3), dtype=np.float32)

    # Occluders: thin lines over everything, each passing near the shape centre.
    ang = _u(rng, 0.0, 2 * math.pi, (n, _N_OCCLUDERS))
    half = _u(rng, 5.0, 16.0, (n, _N_OCCLUDERS)) * s
    off = _u(rng, -0.7, 0.7, (n, _N_OCCLUDERS, 2)) * scale[:, None, None]
    mid = np.stack([p["cx"], p["cy"]], -1)[:, None, :] + off
    d = np.stack([np.cos(ang), np.sin(ang)], -1) * half[..., None]
    p["occ_a"], p["occ_b"] = mid - d, mid + d
    p["occ_w"] = _u(rng, 0.6, 1.3, (n, _N_OCCLUDERS)) * s
    p["occ_on"] = rng.random((n, _N_OCCLUDERS)) < _P_OCCLUDER
    p["occ_col"] = rng.random((n, _N_OCCLUDERS, 3), dtype=np.float32)
    n_clutter = _N_LINES + _N_BLOBS + _N_ARCS + _N_VEES + 1
    p["clutter_order"] = np.argsort(rng.random((n, n_clutter)), axis=1)

    p["noise_std"] = _u(rng, *_NOISE_STD, n)
    p["blur_sigma"] = _u(rng, *_BLUR_SIGMA, n) * s

    if clean:  # plain white shape on black, no clutter, no noise
        p["bg1"][:] = 0.0
        p["bg2"][:] = 0.0
        p["fg1"][:] = 1.0
        p["fg2"][:] = 1.0
        for key in ("line_on", "blob_on", "arc_on", "vee_on", "frag_on", "occ_on"):
            p[key][:] = False
        p["noise_std"][:] = 0.0
        p["blur_sigma"][:] = 0.0
    return p


# --------------------------------------------------------------------------
# Rendering (operates on a slice of the parameter rows).
# --------------------------------------------------------------------------


def _take(p, sl):
    out = {}
    for k, v in p.items():
        if isinstance(v, dict):
            out[k] = _take(v, sl)
        elif isinstance(v, tuple):
            out[k] = tuple(x[sl] for x in v)
        else:
            out[k] = v[sl]
    return out


def _upsample_matrix(src, dst):
    """Bilinear interpolation matrix [dst, src] (align-corners)."""
    pos = np.linspace(0.0, src - 1.0, dst)
    lo = np.clip(np.floor(pos).astype(int), 0, src - 2)
    frac = pos - lo
    m = np.zeros((dst, src), dtype=_F)
    m[np.arange(dst), lo] = 1.0 - frac
    m[np.arange(dst), lo + 1] = frac
    return m


def _texture_field(t, X, Y, size):
    """Scalar field in [0, 1] per image: [m, H, W]."""
    kind = t["kind"]
    m = kind.shape[0]
    field = np.zeros((m, size, size), dtype=_F)
    c = _F(size / 2.0)
    ca = np.cos(t["angle"])[:, None, None]
    sa = np.sin(t["angle"])[:, None, None]
    proj = (X - c) * ca + (Y - c) * sa  # [m, H, W]
    proj2 = -(X - c) * sa + (Y - c) * ca
    per = t["period"][:, None, None]
    ph = t["phase"][:, None, None]

    sel = kind == _GRADIENT
    if sel.any():
        field[sel] = np.clip(_F(0.5) + proj[sel] / t["span"][sel, None, None], 0.0, 1.0)
    sel = kind == _STRIPES
    if sel.any():
        w = np.sin(_F(2 * math.pi) * proj[sel] / per[sel] + ph[sel])
        field[sel] = _F(0.5) + _F(0.5) * np.clip(3.0 * w, -1.0, 1.0)
    sel = kind == _CHECKER
    if sel.any():
        w = np.sin(_F(math.pi) * proj[sel] / per[sel] + ph[sel]) * np.sin(
            _F(math.pi) * proj2[sel] / per[sel]
        )
        field[sel] = _F(0.5) + _F(0.5) * np.clip(6.0 * w, -1.0, 1.0)
    sel = kind == _NOISE
    if sel.any():
        g = t["grid"][sel]
        up = _upsample_matrix(g.shape[1], size)
        f = up @ g @ up.T
        lo = f.min(axis=(1, 2), keepdims=True)
        hi = f.max(axis=(1, 2), keepdims=True)
        field[sel] = (f - lo) / np.maximum(hi - lo, _F(1e-6))
    return field


def _paint(c1, c2, field):
    """[m,3] colours and [m,H,W] field -> [m,3,H,W]."""
    c1 = c1[:, :, None, None]
    c2 = c2[:, :, None, None]
    return c1 + (c2 - c1) * field[:, None]


def _ramp(d):
    """Signed distance in pixels -> anti-aliased coverage in [0, 1]."""
    return np.clip(_F(0.5) - d, 0.0, 1.0)


def _seg_dist(X, Y, a, b):
    """Distance from pixel centres to segments; a, b: [m, k, 2] -> [m, k, H, W]."""
    ax = a[..., 0, None, None]
    ay = a[..., 1, None, None]
    bax = (b[..., 0] - a[..., 0])[..., None, None]
    bay = (b[..., 1] - a[..., 1])[..., None, None]
    pax = X - ax
    pay = Y - ay
    h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay + _F(1e-6)), 0.0, 1.0)
    return np.sqrt((pax - bax * h) ** 2 + (pay - bay * h) ** 2)


def _composite(img, alpha, col, on):
    """Alpha-blend k primitives over ``img`` in order (first = bottom).

    img [m,3,H,W] (modified in place), alpha [m,k,H,W], col [m,k,3], on [m,k].
    Uses the closed form of repeated "over": weight_j = a_j * prod_{i>j}(1-a_i),
    which turns k full-image blends into one cumprod and one small batched matmul.
    """
    m, k, h, w = alpha.shape
    alpha *= on[..., None, None].astype(_F)
    trans = _F(1.0) - alpha
    # behind[:, j] = prod_{i>j} (1 - a_i); behind[:, -1] = 1
    behind = np.empty_like(trans)
    run = np.ones((m, h, w), dtype=_F)
    for j in range(k - 1, -1, -1):
        behind[:, j] = run
        run *= trans[:, j]
    alpha *= behind
    layer = np.einsum("mkp,mkc->mcp", alpha.reshape(m, k, h * w), col)
    img *= run[:, None]
    img += layer.reshape(m, 3, h, w)
    return img


def _shape_sdf(labels, cx, cy, rot, scale, X, Y):
    """Signed distance in pixels to each image's shape (class ``labels``), [m, H, W]."""
    m = labels.shape[0]
    size = X.shape[-1]
    out = np.empty((m, size, size), dtype=_F)
    cr = np.cos(rot)[:, None, None]
    sr = np.sin(rot)[:, None, None]
    sc = scale[:, None, None]
    dx = X - cx[:, None, None]
    dy = Y - cy[:, None, None]
    u = (cr * dx + sr * dy) / sc
    v = (-sr * dx + cr * dy) / sc
    for k, sdf in enumerate(_SDFS):
        sel = labels == k
        if sel.any():
            out[sel] = sdf(u[sel], v[sel]) * sc[sel]
    return out


def _shape_alpha(p, X, Y):
    """Anti-aliased coverage of the target shape, [m, H, W]."""
    return _ramp(_shape_sdf(p["labels"], p["cx"], p["cy"], p["rot"], p["scale"], X, Y))


def _fragment_sdf(p, X, Y):
    """Signed distance to the clipped distractor fragment, [m, 1, H, W] (far away where off)."""
    size = X.shape[-1]
    on = p["frag_on"][:, 0]
    out = np.full((on.shape[0], 1, size, size), _F(size), dtype=_F)
    if not on.any():
        return out
    q = {k: p[k][on] for k in ("frag_labels", "frag_cx", "frag_cy", "frag_rot", "frag_scale", "frag_cut", "frag_off")}
    d = _shape_sdf(q["frag_labels"], q["frag_cx"], q["frag_cy"], q["frag_rot"], q["frag_scale"], X, Y)
    nx = np.cos(q["frag_cut"])[:, None, None]
    ny = np.sin(q["frag_cut"])[:, None, None]
    plane = (X - q["frag_cx"][:, None, None]) * nx + (Y - q["frag_cy"][:, None, None]) * ny
    plane -= (q["frag_off"] * q["frag_scale"])[:, None, None]
    out[on, 0] = np.maximum(d, plane)
    return out


def _blur(img, sigma):
    """Separable per-image Gaussian blur (5 taps, edge padding); sigma [m] in pixels."""
    taps = np.arange(-2, 3, dtype=_F)
    w = np.exp(-(taps[None] ** 2) / (2 * np.maximum(sigma, _F(1e-3))[:, None] ** 2))
    w /= w.sum(axis=1, keepdims=True)
    w = w[:, :, None, None, None]  # [m, 5, 1, 1, 1]
    h = img.shape[-1]
    pad = np.pad(img, ((0, 0), (0, 0), (0, 0), (2, 2)), mode="edge")
    img = sum(w[:, k] * pad[..., k : k + h] for k in range(5))
    pad = np.pad(img, ((0, 0), (0, 0), (2, 2), (0, 0)), mode="edge")
    return sum(w[:, k] * pad[:, :, k : k + h] for k in range(5))


def _render_chunk(p, size, rng):
    m = p["labels"].shape[0]
    coords = np.arange(size, dtype=_F) + _F(0.5)
    X = coords[None, None, :]
    Y = coords[None, :, None]
    X3, Y3 = X[None], Y[None]  # for [m, k, H, W] primitives

    img = _paint(p["bg1"], p["bg2"], _texture_field(p["bgtex"], X, Y, size))

    # Background clutter: every primitive's coverage, composited in one go.
    d = _seg_dist(X3, Y3, p["line_a"], p["line_b"]) - p["line_w"][..., None, None] / 2
    layers = [d]

    bx = X3 - p["blob_c"][..., 0, None, None]
    by = Y3 - p["blob_c"][..., 1, None, None]
    layers.append(np.sqrt(bx * bx + by * by) - p["blob_r"][..., None, None])

    ax = X3 - p["arc_c"][..., 0, None, None]
    ay = Y3 - p["arc_c"][..., 1, None, None]
    r = p["arc_r"][..., None, None]
    mid = p["arc_mid"][..., None, None]
    half = p["arc_half"][..., None, None]
    cm, sm = np.cos(mid), np.sin(mid)
    rad = np.sqrt(ax * ax + ay * ay)
    inside_span = ax * cm + ay * sm >= rad * np.cos(half)  # angle to mid <= half
    e1x, e1y = r * np.cos(mid - half), r * np.sin(mid - half)
    e2x, e2y = r * np.cos(mid + half), r * np.sin(mid + half)
    d_end = np.sqrt(np.minimum((ax - e1x) ** 2 + (ay - e1y) ** 2, (ax - e2x) ** 2 + (ay - e2y) ** 2))
    d = np.where(inside_span, np.abs(rad - r), d_end) - p["arc_w"][..., None, None] / 2
    layers.append(d)

    apex, e0, e1 = p["vee"]
    d = np.minimum(_seg_dist(X3, Y3, apex, e0), _seg_dist(X3, Y3, apex, e1))
    layers.append(d - p["vee_w"][..., None, None] / 2)
    layers.append(_fragment_sdf(p, X, Y))

    order = p["clutter_order"]  # random stacking order of the primitives
    alpha = _ramp(np.concatenate(layers, axis=1))
    cols = np.concatenate([p["line_col"], p["blob_col"], p["arc_col"], p["vee_col"], p["frag_col"]], axis=1)
    ons = np.concatenate([p["line_on"], p["blob_on"], p["arc_on"], p["vee_on"], p["frag_on"]], axis=1)
    rows = np.arange(m)[:, None]
    img = _composite(img, alpha[rows, order], cols[rows, order], ons[rows, order])

    # Target shape with its fill texture.
    fill = _paint(p["fg1"], p["fg2"], _texture_field(p["fgtex"], X, Y, size))
    a = _shape_alpha(p, X, Y)[:, None]
    img += a * (fill - img)

    # Thin occluding lines over everything, then a slight blur.
    occ = p["occ_on"].any(axis=1)  # only images that have one (the others are unchanged)
    if occ.any():
        d = _seg_dist(X3, Y3, p["occ_a"][occ], p["occ_b"][occ]) - p["occ_w"][occ][..., None, None] / 2
        img[occ] = _composite(img[occ], _ramp(d), p["occ_col"][occ], p["occ_on"][occ])
    if (p["blur_sigma"] > 0).any():
        img = _blur(img, p["blur_sigma"])

    noise = rng.standard_normal((m, 3, size, size), dtype=np.float32)
    img += noise * p["noise_std"][:, None, None, None]
    return np.clip(img, 0.0, 1.0, out=img)


def _render(labels, rng, size, clean=False):
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    p = _sample_params(labels, rng, size, clean)
    out = np.empty((n, 3, size, size), dtype=_F)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        out[sl] = _render_chunk(_take(p, sl), size, rng)
    return out


def _balanced_labels(n, rng):
    k = len(SHAPE_CLASSES)
    counts = np.full(k, n // k, dtype=np.int64)
    counts[: n % k] += 1
    labels = np.repeat(np.arange(k, dtype=np.int64), counts)
    return labels[rng.permutation(n)]


def make_shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` shape images, deterministically from ``seed``.

    Returns ``(images, labels)``: images float32 ``[n, 3, size, size]`` in
    ``[0, 1]``; labels int64 ``[n]`` indexing :data:`SHAPE_CLASSES`.  Classes are
    balanced (``n // k`` each, the remainder going to the first ``n % k``
    classes) and returned in shuffled order.  The same ``(n, seed, size)``
    always yields bit-identical arrays.
    """
    n = int(n)
    size = int(size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    labels = _balanced_labels(n, rng)
    images = _render(labels, rng, size)
    return images, labels


def load_shapes_splits(n_train: int = 10_000, n_val: int = 2_000, n_test: int = 2_000):
    """Fixed train/val/test splits for the ``shapes-cnn`` task (inputs [N, 3, 32, 32]).

    Each split is generated from its own seed (``DATA_SEED``, +1, +2), so all three
    are class-balanced and independent of the run seed.
    """
    import torch

    from slimkit.data.base import DataSplits, Split

    def split(n: int, seed: int) -> Split:
        x, y = make_shapes(n, seed=seed)
        return Split((torch.from_numpy(x),), torch.from_numpy(y))

    return DataSplits(
        split(n_train, DATA_SEED), split(n_val, DATA_SEED + 1), split(n_test, DATA_SEED + 2)
    )
