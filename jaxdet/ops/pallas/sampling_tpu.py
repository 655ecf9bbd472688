"""TPU (Mosaic) kernels of the Pallas bilinear sampler: one-hot matmul gathers.

TensorCores have no general vector gather, so rows are read with matmuls: for a
tile of ``tm`` points and a window of ``tk`` consecutive rows of the flattened,
padded map ``flat [R, Cp]`` (``Cp`` a multiple of 128 lanes, ``R`` a multiple of
``tk``), the value of corner c of every point is ``onehot_c @ window`` with
``onehot_c[p, r] = (row_c[p] == start + r)`` -- exact, since each row of the
one-hot matrix holds a single 1 (f32 maps use ``Precision.HIGHEST``).

The map stays in HBM (``memory_space=pl.ANY``); each grid step (one point tile)
loops over the row windows its points touch, ``lo[i] .. hi[i]`` (computed by the
caller, read from an SMEM block of the bounds of 8 tiles; points outside the map,
whose 4 weights are 0, touch none), and copies each window into VMEM with a DMA. The work
per tile is proportional to the span of rows its points touch: small for the
spatially ordered points of deformable convolution, RoIAlign bins and point
heads; a tile of points scattered over the whole map reads the whole map
(correct, slow). Non-finite feature values spread, through ``0 * inf``, to every
point of a tile whose windows hold them.

- `gather`: out [M, Cp] = sum_c w_c * v_c (f32 accumulation, feat's dtype out).
- `corner_dots`: d_c [M, 1] = <g, v_c> for the 4 corners (the weights' cotangent).
- `scatter`: dflat [R, Cp] f32 += onehot^T @ (w * g) over all tiles: the grid is
  sequential ("arbitrary"), each window of the gradient is read, updated and
  written back in HBM by DMA.

Row inputs are ``row [M, 1]`` int32 (top-left corner; the others are at
``+1, +wp, +wp+1``) and the weights ``w [M, 4]`` f32 (w00, w01, w10, w11); the
scatter takes them transposed (``[1, M]``, ``[4, M]``) so that the transposed
one-hot matrix is built with points on lanes.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

Array = jnp.ndarray

# Window bounds of 8 point tiles per SMEM block: rows i % 8, lanes (lo, hi).
BOUNDS_BLOCK = (8, 128)


def _offsets(wp: int) -> tuple[int, int, int, int]:
    return (0, 1, wp, wp + 1)


def _dot(a: Array, b: Array) -> Array:
    prec = lax.Precision.HIGHEST if b.dtype == jnp.float32 else None
    return jnp.dot(a, b, precision=prec, preferred_element_type=jnp.float32)


def _windows(lohi_ref, tk: int, body) -> None:
    """Runs body(start, k) for the row windows k = lo .. hi of this point tile."""
    j = pl.program_id(0) % BOUNDS_BLOCK[0]
    lo = lohi_ref[j, 0]
    hi = lohi_ref[j, 1]

    def step(k, carry):
        body(k * tk, k)
        return carry

    lax.fori_loop(lo, hi + 1, step, 0)


def _load_window(flat_hbm, buf, sem, k, tk: int) -> None:
    copy = pltpu.make_async_copy(flat_hbm.at[pl.ds(k * tk, tk)], buf, sem)
    copy.start()
    copy.wait()


def _onehot(row: Array, off: int, start, shape, dtype) -> Array:
    cols = lax.broadcasted_iota(jnp.int32, shape, 1) + start
    return (cols == row + off).astype(dtype)


def _gather_kernel(wp, tk, lohi_ref, row_ref, w_ref, flat_hbm, out_ref, buf, acc, sem):
    acc[...] = jnp.zeros(acc.shape, jnp.float32)
    row = row_ref[...]
    w = w_ref[...]

    def body(start, k):
        _load_window(flat_hbm, buf, sem, k, tk)
        tile = buf[...]
        part = acc[...]
        for c, off in enumerate(_offsets(wp)):
            oh = _onehot(row, off, start, (row.shape[0], tk), tile.dtype)
            part = part + w[:, c : c + 1] * _dot(oh, tile)
        acc[...] = part

    _windows(lohi_ref, tk, body)
    out_ref[...] = acc[...].astype(out_ref.dtype)


def _corner_dots_kernel(wp, tk, lohi_ref, row_ref, g_ref, flat_hbm, d_ref, buf, sem):
    d_ref[...] = jnp.zeros(d_ref.shape, jnp.float32)
    row = row_ref[...]
    g = g_ref[...]

    def body(start, k):
        _load_window(flat_hbm, buf, sem, k, tk)
        tile = buf[...]
        # dots[p, r] = <g[p], window[r]>; corner c of point p picks column row_c[p] - start.
        dots = lax.dot_general(
            g.astype(tile.dtype), tile, (((1,), (1,)), ((), ())),
            precision=lax.Precision.HIGHEST if tile.dtype == jnp.float32 else None,
            preferred_element_type=jnp.float32,
        )
        cols = lax.broadcasted_iota(jnp.int32, dots.shape, 1) + start
        lanes = lax.broadcasted_iota(jnp.int32, d_ref.shape, 1)
        upd = jnp.zeros(d_ref.shape, jnp.float32)
        for c, off in enumerate(_offsets(wp)):
            dc = jnp.sum(jnp.where(cols == row + off, dots, 0.0), axis=1, keepdims=True)
            upd = upd + jnp.where(lanes == c, dc, 0.0)
        d_ref[...] += upd

    _windows(lohi_ref, tk, body)


def _scatter_kernel(wp, tk, lohi_ref, rowt_ref, wt_ref, g_ref, dflat_in, dflat_hbm, buf, sem):
    del dflat_in  # aliased with dflat_hbm
    rowt = rowt_ref[...]  # [1, tm]
    wt = wt_ref[...]  # [4, tm]
    g = g_ref[...].astype(jnp.float32)

    def body(start, k):
        _load_window(dflat_hbm, buf, sem, k, tk)
        rows = lax.broadcasted_iota(jnp.int32, (tk, rowt.shape[1]), 0) + start
        wmat = jnp.zeros(rows.shape, jnp.float32)
        for c, off in enumerate(_offsets(wp)):
            wmat = wmat + jnp.where(rows == rowt + off, wt[c : c + 1, :], 0.0)
        buf[...] += _dot(wmat, g)
        copy = pltpu.make_async_copy(buf, dflat_hbm.at[pl.ds(k * tk, tk)], sem)
        copy.start()
        copy.wait()

    _windows(lohi_ref, tk, body)


def _grid_spec(m: int, tm: int, in_specs, out_specs, scratch_shapes):
    """One grid step per point tile; its window bounds come in an SMEM block."""
    bounds = pl.BlockSpec(
        BOUNDS_BLOCK, lambda i: (i // BOUNDS_BLOCK[0], 0), memory_space=pltpu.SMEM
    )
    return pl.GridSpec(
        grid=(m // tm,),
        in_specs=[bounds, *in_specs],
        out_specs=out_specs,
        scratch_shapes=scratch_shapes,
    )


def _params(semantics: str):
    return pltpu.CompilerParams(dimension_semantics=(semantics,))


def gather(flat, row, w, lohi, *, wp: int, tm: int, tk: int, interpret=False) -> Array:
    """flat [R, Cp], row [M, 1], w [M, 4], lohi [T, 128] (window bounds of the point
    tiles, T >= M/tm a multiple of 8) -> [M, Cp] (flat's dtype)."""
    m, cp = row.shape[0], flat.shape[1]
    return pl.pallas_call(
        partial(_gather_kernel, wp, tk),
        out_shape=jax.ShapeDtypeStruct((m, cp), flat.dtype),
        grid_spec=_grid_spec(
            m, tm,
            in_specs=[
                pl.BlockSpec((tm, 1), lambda i: (i, 0)),
                pl.BlockSpec((tm, 4), lambda i: (i, 0)),
                pl.BlockSpec(memory_space=pl.ANY),
            ],
            out_specs=pl.BlockSpec((tm, cp), lambda i: (i, 0)),
            scratch_shapes=[
                pltpu.VMEM((tk, cp), flat.dtype),
                pltpu.VMEM((tm, cp), jnp.float32),
                pltpu.SemaphoreType.DMA,
            ],
        ),
        compiler_params=_params("parallel"),
        interpret=interpret,
        name="jaxdet_bilinear_gather_tpu",
    )(lohi, row, w, flat)


def corner_dots(flat, row, g, lohi, *, wp: int, tm: int, tk: int, interpret=False) -> Array:
    """flat [R, Cp], row [M, 1], g [M, Cp], lohi -> [M, 4] f32: <g, v_c> per corner."""
    m, cp = row.shape[0], flat.shape[1]
    return pl.pallas_call(
        partial(_corner_dots_kernel, wp, tk),
        out_shape=jax.ShapeDtypeStruct((m, 4), jnp.float32),
        grid_spec=_grid_spec(
            m, tm,
            in_specs=[
                pl.BlockSpec((tm, 1), lambda i: (i, 0)),
                pl.BlockSpec((tm, cp), lambda i: (i, 0)),
                pl.BlockSpec(memory_space=pl.ANY),
            ],
            out_specs=pl.BlockSpec((tm, 4), lambda i: (i, 0)),
            scratch_shapes=[pltpu.VMEM((tk, cp), flat.dtype), pltpu.SemaphoreType.DMA],
        ),
        compiler_params=_params("parallel"),
        interpret=interpret,
        name="jaxdet_bilinear_corner_dots_tpu",
    )(lohi, row, g, flat)


def scatter(nrows: int, rowt, wt, g, lohi, *, wp: int, tm: int, tk: int, interpret=False):
    """rowt [1, M], wt [4, M], g [M, Cp], lohi -> dflat [nrows, Cp] f32."""
    m, cp = g.shape
    zeros = jnp.zeros((nrows, cp), jnp.float32)
    return pl.pallas_call(
        partial(_scatter_kernel, wp, tk),
        out_shape=jax.ShapeDtypeStruct((nrows, cp), jnp.float32),
        grid_spec=_grid_spec(
            m, tm,
            in_specs=[
                pl.BlockSpec((1, tm), lambda i: (0, i)),
                pl.BlockSpec((4, tm), lambda i: (0, i)),
                pl.BlockSpec((tm, cp), lambda i: (i, 0)),
                pl.BlockSpec(memory_space=pl.ANY),
            ],
            out_specs=pl.BlockSpec(memory_space=pl.ANY),
            scratch_shapes=[pltpu.VMEM((tk, cp), jnp.float32), pltpu.SemaphoreType.DMA],
        ),
        input_output_aliases={4: 0},
        compiler_params=_params("arbitrary"),
        interpret=interpret,
        name="jaxdet_bilinear_scatter_tpu",
    )(lohi, rowt, wt, g, zeros)
