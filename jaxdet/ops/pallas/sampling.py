"""Pallas bilinear sampling (same values as `jaxdet.ops.sampling`'s XLA path).

The geometry (`bilinear.corners`: corner rows, weights and boundary rules) is
computed by XLA, as in the XLA path; the kernels do the memory-bound part:
reading the 4 corner rows of every point from the zero-padded, flattened map
``flat [B*(H+2)*(W+2), C]`` and, in the backward pass, the corner dot products
and the scatter-add of the feature gradient. The custom VJP differentiates with
respect to the map and the 4 corner weights; the gradient with respect to the
points then follows from the weights by autodiff of the same `corners` code.

Kernels (``kernel``; ``None`` picks by ``target``):

- ``"tpu"`` (`jaxdet.ops.pallas.sampling_tpu`, Mosaic): points tiled by ``tm``,
  rows read by exact one-hot matmuls over windows of ``tk`` rows DMA'd from HBM;
  channels padded to a multiple of 128 lanes; the feature gradient is the
  transposed one-hot matmul accumulated in HBM over a sequential grid.
- ``"triton"`` (`jaxdet.ops.pallas.sampling_triton`, GPU): row gathers with
  vector loads, the feature gradient with atomic adds; channels padded to a power
  of two.

What is verified, and what is not
---------------------------------
Verified on a CPU host (tests/ops/test_lowering.py, tests/ops/test_pallas_sampling.py):
both kernels' forward and backward lower from CPU -- the TPU kernels through
Pallas' Mosaic lowering for "TPU v4" and "TPU v5 lite" device kinds (an abstract
mesh), the GPU kernels through the Triton lowering for ``cuda`` -- and both,
run by the Pallas interpreter, equal the XLA path in values and gradients (map
and points; f32 and bf16; boundary "zero" and "clamp"; points outside the map;
point counts and channel counts that are not multiples of the tiles). Not
verified: nothing here has been compiled by the TPU or GPU compiler (Mosaic's
layout passes and Triton's compilation run on the device at compile time) or run
on an accelerator, and there is no speed figure; `jaxdet.ops.pallas.use_pallas`
keeps ``impl="auto"`` on XLA for that reason.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdet.ops import bilinear
from jaxdet.ops import pallas as pallas_cfg
from jaxdet.ops.pallas import sampling_tpu, sampling_triton

Array = jnp.ndarray

KERNELS = ("tpu", "triton")
TPU_TM, TPU_TK = 128, 512
TRITON_TM = 32


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _window_bounds(row: Array, w: Array, tm: int, tk: int, wp: int, m: int) -> Array:
    """[T, 128] int32, T = M/tm rounded up to 8: lanes 0, 1 of row i are the first and
    last window of tk rows touched by point tile i. Padded points (index >= m) and
    points whose 4 weights are 0 (outside the map) are left out: they read nothing."""
    active = (jnp.arange(row.shape[0]) < m) & jnp.any(w != 0, axis=1)
    lo = jnp.where(active, row, jnp.iinfo(jnp.int32).max).reshape(-1, tm).min(1)
    hi = jnp.where(active, row + wp + 1, -1).reshape(-1, tm).max(1)
    bounds = jnp.stack([lo // tk, hi // tk], axis=1).astype(jnp.int32)
    t = bounds.shape[0]
    return jnp.pad(bounds, ((0, _round_up(t, 8) - t), (0, 126)))


def _forward(cfg, flat, row, w):
    kernel, wp, m, interpret = cfg
    if kernel == "tpu":
        lohi = _window_bounds(row, w, TPU_TM, TPU_TK, wp, m)
        out = sampling_tpu.gather(
            flat, row[:, None], w, lohi, wp=wp, tm=TPU_TM, tk=TPU_TK, interpret=interpret
        )
    else:
        ws = tuple(w.T)
        out = sampling_triton.gather(flat, row, ws, wp=wp, tm=TRITON_TM, interpret=interpret)
    return out


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sample(cfg, flat: Array, row: Array, w: Array) -> Array:
    return _forward(cfg, flat, row, w)


def _sample_fwd(cfg, flat, row, w):
    return _forward(cfg, flat, row, w), (flat, row, w)


def _sample_bwd(cfg, res, g):
    kernel, wp, m, interpret = cfg
    flat, row, w = res
    nrows = flat.shape[0]
    if kernel == "tpu":
        lohi = _window_bounds(row, w, TPU_TM, TPU_TK, wp, m)
        kw = dict(wp=wp, tm=TPU_TM, tk=TPU_TK, interpret=interpret)
        dw = sampling_tpu.corner_dots(flat, row[:, None], g, lohi, **kw)
        dflat = sampling_tpu.scatter(nrows, row[None, :], w.T, g, lohi, **kw)
    else:
        kw = dict(wp=wp, tm=TRITON_TM, interpret=interpret)
        dw = sampling_triton.corner_dots(flat, row, g, **kw)
        dflat = sampling_triton.scatter(nrows, row, tuple(w.T), g, **kw)
    drow = jnp.zeros(row.shape, jax.dtypes.float0)  # integer input
    return dflat.astype(flat.dtype), drow, dw.astype(w.dtype)


_sample.defvjp(_sample_fwd, _sample_bwd)


def resolve_kernel(kernel: str | None, target: str) -> str:
    """`kernel`, or the kernel for `target`: 'triton' for 'gpu', 'tpu' otherwise."""
    if kernel is None:
        kernel = "triton" if target == "gpu" else "tpu"
    if kernel not in KERNELS:
        raise ValueError(f"unknown Pallas kernel {kernel!r}; expected one of {KERNELS}")
    return kernel


def _layout(kernel: str, nb: int, h: int, w: int, c: int, m: int) -> tuple[int, int, int]:
    """(padded channel count, padded row count, padded point count) of a kernel."""
    rows = nb * (h + 2) * (w + 2)
    if kernel == "tpu":
        return _round_up(c, 128), _round_up(rows, TPU_TK), _round_up(max(m, 1), TPU_TM)
    return _pow2(max(c, 16)), rows, _round_up(max(m, 1), TRITON_TM)


def bilinear_sample_batched(
    feat: Array,
    batch: Array,
    points: Array,
    *,
    boundary: str = "zero",
    kernel: str | None = None,
    interpret: bool | None = None,
    target: str = "cpu",
) -> Array:
    """Pallas version of `sampling.bilinear_sample_batched`: feat [B, H, W, C],
    batch [...] int (clipped to [0, B)), points [..., 2] -> [..., C] (feat's dtype).

    `kernel`: 'tpu' | 'triton' | None (by `target`: 'triton' for 'gpu', else 'tpu').
    `interpret` defaults to True where Pallas cannot compile (a 'cpu' `target`).
    """
    kernel = resolve_kernel(kernel, target)
    if interpret is None:
        interpret = pallas_cfg.needs_interpret(target)
    if interpret and kernel == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        interpret = pltpu.InterpretParams()
    nb, h, w, c = feat.shape
    lead = points.shape[:-1]
    m = 1
    for d in lead:
        m *= d
    cp, nrows, m_pad = _layout(kernel, nb, h, w, c, m)
    pdtype = jnp.promote_types(points.dtype, jnp.float32)
    pts = points.reshape(m, 2).astype(pdtype)
    bidx = jnp.clip(jnp.broadcast_to(jnp.asarray(batch, jnp.int32), lead).reshape(m), 0, nb - 1)
    cn = bilinear.corners(pts[:, 0], pts[:, 1], h, w, boundary)
    hp, wp = h + 2, w + 2
    row = jnp.pad((bidx * hp + cn.y0) * wp + cn.x0, (0, m_pad - m))
    wts = jnp.pad(jnp.stack(cn.weights(), axis=1), ((0, m_pad - m), (0, 0)))
    flat = bilinear.pad_map(feat).reshape(nb * hp * wp, c)
    flat = jnp.pad(flat, ((0, nrows - flat.shape[0]), (0, cp - c)))
    out = _sample((kernel, wp, m, interpret), flat, row, wts)
    return out[:m, :c].reshape(*lead, c)


def bilinear_sample(
    feat: Array,
    points: Array,
    *,
    boundary: str = "zero",
    kernel: str | None = None,
    interpret: bool | None = None,
    target: str = "cpu",
) -> Array:
    """Pallas version of `sampling.bilinear_sample`: feat [H, W, C], points [..., 2]."""
    return bilinear_sample_batched(
        feat[None], 0, points, boundary=boundary, kernel=kernel, interpret=interpret,
        target=target,
    )
