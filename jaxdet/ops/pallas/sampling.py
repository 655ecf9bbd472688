"""Pallas kernel for bilinear sampling (same values as `jaxdet.ops.sampling`).

Forward kernel: the points are cut into blocks of ``block`` points (the grid);
each program computes its points' corner rows and weights (the same
`bilinear.corners` code as the XLA path), reads the 4 corner rows of ``C``
channels from the zero-padded, flattened map ``[B*(H+2)*(W+2), C]`` and writes
the weighted sum ``[block, C]``.

Backward (`jax.custom_vjp`): a second kernel recomputes the corners, reads the
same 4 rows and returns the point gradients (d/dy, d/dx from the four
per-corner dot products with the output gradient); the feature-map gradient is
the scatter-add of the corner-weighted output gradients into the padded map,
done with XLA's scatter (``.at[].add``), which is correct on every backend.

What each backend needs (only interpret mode is exercised in this repository's
tests, on CPU, where ``interpret=True`` is mandatory):

- CPU: no compiled Pallas; `bilinear_sample(..., interpret=True)` runs the
  kernel through the Pallas interpreter (slow, for testing only). ``impl="auto"``
  never selects Pallas on CPU.
- GPU: Pallas on GPU now means Mosaic GPU (the Triton lowering is legacy). The
  map must stay in global memory (``memory_space=pl.ANY`` / GMEM) and the rows be
  fetched with per-row async copies into shared memory (or ``plgpu.load`` gathers
  on the Triton path); a full-map BlockSpec as written here would try to stage
  the whole map in SMEM. The feature gradient would use ``atomic_add`` to avoid
  the XLA scatter.
- TPU: TensorCore vector gathers are limited to the take-along-axis form, so a
  TPU kernel must block over output points, scalar-prefetch the row indices
  (`pltpu.PrefetchScalarGridSpec`) and DMA the needed rows from HBM
  (``memory_space=pltpu.ANY`` + ``pltpu.make_async_copy``) into VMEM before the
  weighted sum; ``C`` should be a multiple of 128 lanes. The full-map VMEM block
  used here only works for maps that fit VMEM.

The kernel as written uses a full-map input block and vector row indexing,
which the interpreter supports on every platform; `jaxdet.ops.pallas.use_pallas`
keeps ``impl="auto"`` on XLA unless Pallas was explicitly enabled.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxdet.ops import bilinear
from jaxdet.ops import pallas as pallas_cfg

Array = jnp.ndarray

DEFAULT_BLOCK = 128


def _corner_rows(cfg, pts: Array, batch: Array):
    height, width, boundary = cfg[:3]
    cn = bilinear.corners(pts[:, 0], pts[:, 1], height, width, boundary)
    hp, wp = height + 2, width + 2
    row = (batch * hp + cn.y0) * wp + cn.x0
    return row, cn, (0, 1, wp, wp + 1)


def _fwd_kernel(cfg, pts_ref, batch_ref, feat_ref, out_ref):
    pts = pts_ref[...]
    batch = batch_ref[...]
    row, cn, offs = _corner_rows(cfg, pts, batch)
    acc = jnp.zeros(out_ref.shape, jnp.float32)
    for w, off in zip(cn.weights(), offs):
        acc = acc + w[:, None] * feat_ref[row + off, :].astype(jnp.float32)
    out_ref[...] = acc.astype(out_ref.dtype)


def _bwd_points_kernel(cfg, pts_ref, batch_ref, g_ref, feat_ref, dpts_ref):
    pts = pts_ref[...]
    batch = batch_ref[...]
    g = g_ref[...].astype(jnp.float32)
    row, cn, offs = _corner_rows(cfg, pts, batch)
    d00, d01, d10, d11 = (
        jnp.sum(g * feat_ref[row + off, :].astype(jnp.float32), axis=-1) for off in offs
    )
    hy, hx = 1.0 - cn.ly, 1.0 - cn.lx
    sy, sx = bilinear.clamp_grad_scale(pts[:, 0], pts[:, 1], cfg[0], cfg[1], cfg[2])
    dy = (cn.inside * sy) * (hx * (d10 - d00) + cn.lx * (d11 - d01))
    dx = (cn.inside * sx) * (hy * (d01 - d00) + cn.ly * (d11 - d10))
    dpts_ref[...] = jnp.stack([dy, dx], axis=-1).astype(dpts_ref.dtype)


def _specs(m: int, block: int, nrows: int, c: int, extra_point_inputs: int = 0):
    pt = pl.BlockSpec((block, 2), lambda i: (i, 0))
    bt = pl.BlockSpec((block,), lambda i: (i,))
    extra = [pl.BlockSpec((block, c), lambda i: (i, 0))] * extra_point_inputs
    full = pl.BlockSpec((nrows, c), lambda i: (0, 0))
    return [pt, bt, *extra, full]


def _run_fwd(cfg, flat: Array, pts: Array, batch: Array) -> Array:
    *_, block, interpret = cfg
    m = pts.shape[0]
    nrows, c = flat.shape
    return pl.pallas_call(
        partial(_fwd_kernel, cfg),
        out_shape=jax.ShapeDtypeStruct((m, c), flat.dtype),
        grid=(m // block,),
        in_specs=_specs(m, block, nrows, c),
        out_specs=pl.BlockSpec((block, c), lambda i: (i, 0)),
        interpret=interpret,
        name="jaxdet_bilinear_sample_fwd",
    )(pts, batch, flat)


def _run_bwd_points(cfg, flat: Array, pts: Array, batch: Array, g: Array) -> Array:
    *_, block, interpret = cfg
    m = pts.shape[0]
    nrows, c = flat.shape
    return pl.pallas_call(
        partial(_bwd_points_kernel, cfg),
        out_shape=jax.ShapeDtypeStruct((m, 2), pts.dtype),
        grid=(m // block,),
        in_specs=_specs(m, block, nrows, c, extra_point_inputs=1),
        out_specs=pl.BlockSpec((block, 2), lambda i: (i, 0)),
        interpret=interpret,
        name="jaxdet_bilinear_sample_bwd_points",
    )(pts, batch, g, flat)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sample(cfg, flat: Array, pts: Array, batch: Array) -> Array:
    return _run_fwd(cfg, flat, pts, batch)


def _sample_fwd(cfg, flat, pts, batch):
    return _run_fwd(cfg, flat, pts, batch), (flat, pts, batch)


def _sample_bwd(cfg, res, g):
    flat, pts, batch = res
    dpts = _run_bwd_points(cfg, flat, pts, batch, g)
    row, cn, offs = _corner_rows(cfg, pts, batch)
    gf = g.astype(jnp.float32)
    dflat = jnp.zeros(flat.shape, jnp.float32)
    for w, off in zip(cn.weights(), offs):
        dflat = dflat.at[row + off].add(w[:, None] * gf, mode="promise_in_bounds")
    # batch is integer: its cotangent is float0.
    dbatch = jax.numpy.zeros(batch.shape, jax.dtypes.float0)
    return dflat.astype(flat.dtype), dpts, dbatch


_sample.defvjp(_sample_fwd, _sample_bwd)


def bilinear_sample_batched(
    feat: Array,
    batch: Array,
    points: Array,
    *,
    boundary: str = "zero",
    block: int = DEFAULT_BLOCK,
    interpret: bool | None = None,
    target: str = "cpu",
) -> Array:
    """Pallas version of `sampling.bilinear_sample_batched` (same arguments).

    `interpret` defaults to True where Pallas cannot compile (a 'cpu' `target`).
    """
    if boundary not in bilinear.BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; expected one of {bilinear.BOUNDARIES}")
    if interpret is None:
        interpret = pallas_cfg.needs_interpret(target)
    nb, h, w, c = feat.shape
    lead = points.shape[:-1]
    m = 1
    for d in lead:
        m *= d
    pdtype = jnp.promote_types(points.dtype, jnp.float32)
    pts = points.reshape(m, 2).astype(pdtype)
    bidx = jnp.broadcast_to(jnp.asarray(batch, jnp.int32), lead).reshape(m)
    block = max(8, min(int(block), -(-m // 8) * 8))
    m_pad = -(-m // block) * block
    if m_pad != m:
        pts = jnp.concatenate([pts, jnp.full((m_pad - m, 2), -4.0, pdtype)])
        bidx = jnp.concatenate([bidx, jnp.zeros((m_pad - m,), jnp.int32)])
    flat = bilinear.pad_map(feat).reshape(nb * (h + 2) * (w + 2), c)
    cfg = (h, w, boundary, block, bool(interpret))
    out = _sample(cfg, flat, pts, bidx)[:m]
    return out.reshape(*lead, c)


def bilinear_sample(
    feat: Array,
    points: Array,
    *,
    boundary: str = "zero",
    block: int = DEFAULT_BLOCK,
    interpret: bool | None = None,
    target: str = "cpu",
) -> Array:
    """Pallas version of `sampling.bilinear_sample`: feat [H, W, C], points [..., 2]."""
    return bilinear_sample_batched(
        feat[None], 0, points, boundary=boundary, block=block, interpret=interpret, target=target
    )
