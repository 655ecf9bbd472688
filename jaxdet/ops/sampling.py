"""Bilinear sampling of a channels-last feature map at data-dependent points.

One primitive under deformable convolution, RoIAlign and the point-based heads
(RepPoints, TSD, Guided Anchoring's feature adaption, AlignDet's RoIConv).

Conventions
-----------
Points are ``(y, x)`` in pixels of the feature map: pixel ``(i, j)`` has its value
at ``(y, x) = (i, j)`` (torchvision / mmcv; no half-pixel shift here, RoIAlign's
``aligned=True`` shift is applied by `roi_align`).

Two boundary rules, both exactly those of torchvision's CPU kernels:

- ``boundary="zero"`` (``deform_conv2d``, mmcv's DCN, ``grid_sample`` with zero
  padding): a point outside ``(-1, H) x (-1, W)`` (open interval) gives 0; a point
  partly outside uses only the corners inside the map (the others count as 0).
- ``boundary="clamp"`` (``roi_align``): a point outside ``[-1, H] x [-1, W]``
  (closed) gives 0; otherwise the coordinates are clamped to ``[0, H-1] x [0, W-1]``
  first, so border values are replicated.

NaN coordinates give NaN (never 0 and never a crash); other non-finite or
out-of-range coordinates give exactly 0.

Gather layout
-------------
The map is zero-padded by one pixel on each side, so every corner read is in
bounds and out-of-map corners read real zeros. The four corners are then read
either with one packed gather of a 2x2 window with channels on the last axis
(``layout="packed"``: one gather, the form TPUs and GPUs want) or with four row
gathers of ``C`` contiguous values (``layout="rows"``: measured faster on
XLA:CPU). ``layout="auto"`` picks ``rows`` for ``target="cpu"`` and ``packed``
for 'gpu' / 'tpu' (`jaxdet.platform.Platform.target`).

Backends
--------
``impl`` (the config's ``model.sampling_backend``) picks the back end:
``"xla"`` is the portable path below (differentiable by autodiff in both
``feat`` and ``points``); ``"pallas"`` calls the Pallas kernels of
`jaxdet.ops.pallas.sampling` (custom VJP; Triton for a 'gpu' target, Mosaic for
'tpu', the Pallas interpreter for 'cpu'); ``"auto"`` is XLA for every target
until a measurement on the device shows the kernels faster (what is and is not
verified of them: `jaxdet.ops.pallas.sampling`). The geometry shared with the
kernels (`Corners`, `corners`, `pad_map`, ...) lives in `jaxdet.ops.bilinear`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxdet.ops.bilinear import (  # noqa: F401 (re-exported)
    BOUNDARIES,
    Corners,
    clamp_grad_scale,
    corners,
    pad_map,
)

Array = jnp.ndarray

LAYOUTS = ("auto", "rows", "packed")


def default_layout(target: str = "cpu") -> str:
    """Gather layout for a target ('cpu' | 'gpu' | 'tpu'): 'rows' on CPU, 'packed' elsewhere."""
    return "rows" if target == "cpu" else "packed"


def resolve_layout(layout: str, target: str = "cpu") -> str:
    """`layout`, with 'auto' resolved for `target`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown gather layout {layout!r}; expected one of {LAYOUTS}")
    return default_layout(target) if layout == "auto" else layout


def gather_corners(
    padded: Array,
    batch: Array | None,
    y0: Array,
    x0: Array,
    layout: str,
    group: Array | None = None,
) -> tuple[Array, Array, Array, Array]:
    """Reads the 4 corners of points from a padded map.

    padded: [B, H+2, W+2, C] (or [H+2, W+2, C] with batch None), or
      [B, H+2, W+2, G, Cg] with `group` [...] selecting the channel group.
    batch, y0, x0: int32 [...] (y0, x0 in padded coordinates, in [0, H] x [0, W]).
    Returns v00, v01, v10, v11, each [..., C] (or [..., Cg]).
    """
    if batch is None:
        padded = padded[None]
        batch = jnp.zeros_like(y0)
    if group is None:
        padded = padded[..., None, :]
        group = jnp.zeros_like(y0)
    nb, hp, wp, ng, c = padded.shape
    if layout == "rows":
        flat = padded.reshape(nb * hp * wp * ng, c)
        r = ((batch * hp + y0) * wp + x0) * ng + group
        take = lambda i: flat.at[i].get(mode="promise_in_bounds")
        return take(r), take(r + ng), take(r + wp * ng), take(r + (wp + 1) * ng)
    if layout == "packed":
        win = lax.gather(
            padded,
            jnp.stack([batch, y0, x0, group], axis=-1),
            _packed_dnums(y0.ndim),
            slice_sizes=(1, 2, 2, 1, c),
            mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )  # [..., 2, 2, C]
        return win[..., 0, 0, :], win[..., 0, 1, :], win[..., 1, 0, :], win[..., 1, 1, :]
    raise ValueError(f"unknown gather layout {layout!r}")


def scatter_corners(
    padded_grad: Array,
    batch: Array,
    y0: Array,
    x0: Array,
    group: Array,
    g00: Array,
    g01: Array,
    g10: Array,
    g11: Array,
    layout: str,
) -> Array:
    """Transpose of `gather_corners` (grouped form): adds the corner updates
    g.. [..., Cg] into padded_grad [B, H+2, W+2, G, Cg]."""
    nb, hp, wp, ng, c = padded_grad.shape
    if layout == "rows":
        flat = padded_grad.reshape(nb * hp * wp * ng, c)
        r = ((batch * hp + y0) * wp + x0) * ng + group
        for off, upd in ((0, g00), (ng, g01), (wp * ng, g10), ((wp + 1) * ng, g11)):
            flat = flat.at[r + off].add(upd, mode="promise_in_bounds")
        return flat.reshape(padded_grad.shape)
    if layout == "packed":
        upd = jnp.stack([jnp.stack([g00, g01], -2), jnp.stack([g10, g11], -2)], -3)
        dn = _packed_dnums(y0.ndim)
        sdn = lax.ScatterDimensionNumbers(
            update_window_dims=dn.offset_dims,
            inserted_window_dims=dn.collapsed_slice_dims,
            scatter_dims_to_operand_dims=dn.start_index_map,
        )
        return lax.scatter_add(
            padded_grad,
            jnp.stack([batch, y0, x0, group], axis=-1),
            upd,
            sdn,
            mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )
    raise ValueError(f"unknown gather layout {layout!r}")


def _packed_dnums(batch_ndim: int) -> lax.GatherDimensionNumbers:
    # operand [B, Hp, Wp, G, C]; window (1, 2, 2, 1, C) -> [..., 2, 2, C]
    return lax.GatherDimensionNumbers(
        offset_dims=(batch_ndim, batch_ndim + 1, batch_ndim + 2),
        collapsed_slice_dims=(0, 3),
        start_index_map=(0, 1, 2, 3),
    )


def _sample_xla(
    feat: Array,
    points: Array,
    batch: Array | None,
    boundary: str,
    layout: str,
) -> Array:
    height, width = feat.shape[-3], feat.shape[-2]
    pts = points.astype(jnp.promote_types(points.dtype, jnp.float32))
    cn = corners(pts[..., 0], pts[..., 1], height, width, boundary)
    v00, v01, v10, v11 = gather_corners(pad_map(feat), batch, cn.y0, cn.x0, layout)
    w00, w01, w10, w11 = cn.weights()
    acc = jnp.promote_types(feat.dtype, jnp.float32)
    out = (
        w00[..., None] * v00.astype(acc)
        + w01[..., None] * v01.astype(acc)
        + w10[..., None] * v10.astype(acc)
        + w11[..., None] * v11.astype(acc)
    )
    return out.astype(feat.dtype)


def _check(feat: Array, points: Array, ndim: int) -> None:
    if feat.ndim != ndim:
        raise ValueError(f"feat must have {ndim} dims, got shape {feat.shape}")
    if points.shape[-1:] != (2,):
        raise ValueError(f"points must be [..., 2] (y, x), got shape {points.shape}")


def _use_pallas(impl: str, target: str) -> bool:
    from jaxdet.ops import pallas as pallas_cfg

    return pallas_cfg.use_pallas(target, impl)


def bilinear_sample(
    feat: Array,
    points: Array,
    *,
    boundary: str = "zero",
    layout: str = "auto",
    impl: str = "auto",
    target: str = "cpu",
) -> Array:
    """Samples feat [H, W, C] at points [..., 2] = (y, x) pixels -> [..., C].

    See the module docstring for the boundary rules, layouts and backends;
    `target` ('cpu' | 'gpu' | 'tpu') resolves the 'auto' ones; `impl`: 'auto' |
    'xla' | 'pallas' (module docstring).
    Differentiable in `feat` and `points`. The output has feat's dtype; bf16
    maps are interpolated in f32 and cast back.
    """
    _check(feat, points, 3)
    if _use_pallas(impl, target):
        from jaxdet.ops.pallas import sampling as pallas_sampling

        return pallas_sampling.bilinear_sample(feat, points, boundary=boundary, target=target)
    return _sample_xla(feat, points, None, boundary, resolve_layout(layout, target))


def bilinear_sample_batched(
    feat: Array,
    batch_index: Array,
    points: Array,
    *,
    boundary: str = "zero",
    layout: str = "auto",
    impl: str = "auto",
    target: str = "cpu",
) -> Array:
    """Samples feat [B, H, W, C] at points [..., 2] of images batch_index [...] -> [..., C].

    `batch_index` (int, broadcastable to points.shape[:-1]) is clipped to [0, B).
    Other arguments as `bilinear_sample`.
    """
    _check(feat, points, 4)
    batch = jnp.broadcast_to(jnp.asarray(batch_index, jnp.int32), points.shape[:-1])
    batch = jnp.clip(batch, 0, feat.shape[0] - 1)
    if _use_pallas(impl, target):
        from jaxdet.ops.pallas import sampling as pallas_sampling

        return pallas_sampling.bilinear_sample_batched(
            feat, batch, points, boundary=boundary, target=target
        )
    return _sample_xla(feat, points, batch, boundary, resolve_layout(layout, target))
