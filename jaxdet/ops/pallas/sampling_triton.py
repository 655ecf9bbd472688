"""GPU (Triton) kernels of the Pallas bilinear sampler: row gathers and atomic adds.

Each program handles ``tm`` points; the flattened, padded map ``flat [R, Cp]``
(``Cp`` a power of two) stays in global memory and the 4 corner rows of every
point are read with vector loads at data-dependent row indices
(``flat_ref[row + off, :]``). Point inputs are 1-D (``row [M]`` int32 and one
``[M]`` f32 weight array per corner), the layout Triton block loads want.

- `gather`: out [M, Cp] = sum_c w_c * v_c (f32 accumulation, flat's dtype out).
- `corner_dots`: d_c [M] = <g, v_c>, one output per corner.
- `scatter`: dflat [R, Cp] f32 += w_c * g at the 4 corner rows of every point,
  with `atomic_add` of one row per point and corner (a loop over the program's
  points, so that points sharing a row add up under the interpreter too) into a
  zero-initialised output aliased to an input.

The kernels select the Triton lowering explicitly (``triton.CompilerParams``),
not Mosaic GPU.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

Array = jnp.ndarray

NUM_WARPS = 4


def _offsets(wp: int) -> tuple[int, int, int, int]:
    return (0, 1, wp, wp + 1)


def _rows(ref, row: Array, off: int) -> Array:
    return ref[row + off, :].astype(jnp.float32)


def _gather_kernel(wp, row_ref, w00, w01, w10, w11, flat_ref, out_ref):
    row = row_ref[...]
    acc = jnp.zeros(out_ref.shape, jnp.float32)
    for w_ref, off in zip((w00, w01, w10, w11), _offsets(wp)):
        acc = acc + w_ref[...][:, None] * _rows(flat_ref, row, off)
    out_ref[...] = acc.astype(out_ref.dtype)


def _corner_dots_kernel(wp, row_ref, g_ref, flat_ref, d00, d01, d10, d11):
    row = row_ref[...]
    g = g_ref[...].astype(jnp.float32)
    for d_ref, off in zip((d00, d01, d10, d11), _offsets(wp)):
        d_ref[...] = jnp.sum(g * _rows(flat_ref, row, off), axis=1)


def _scatter_kernel(wp, row_ref, w00, w01, w10, w11, g_ref, dflat_in, dflat_ref):
    del dflat_in  # aliased with dflat_ref
    cols = pl.ds(0, g_ref.shape[1])

    def point(p, carry):
        r = row_ref[p]
        g = g_ref[p, :].astype(jnp.float32)
        for w_ref, off in zip((w00, w01, w10, w11), _offsets(wp)):
            pltriton.atomic_add(dflat_ref, (r + off, cols), w_ref[p] * g)
        return carry

    jax.lax.fori_loop(0, row_ref.shape[0], point, 0)


def _point_spec(tm: int) -> pl.BlockSpec:
    return pl.BlockSpec((tm,), lambda i: (i,))


def _whole() -> pl.BlockSpec:
    return pl.BlockSpec(memory_space=pl.ANY)


def _params():
    return pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1)


def gather(flat, row, ws, *, wp: int, tm: int, interpret=False) -> Array:
    """flat [R, Cp], row [M], ws 4 x [M] -> [M, Cp] (flat's dtype)."""
    m, cp = row.shape[0], flat.shape[1]
    return pl.pallas_call(
        partial(_gather_kernel, wp),
        out_shape=jax.ShapeDtypeStruct((m, cp), flat.dtype),
        grid=(m // tm,),
        in_specs=[_point_spec(tm)] * 5 + [_whole()],
        out_specs=pl.BlockSpec((tm, cp), lambda i: (i, 0)),
        compiler_params=_params(),
        interpret=interpret,
        name="jaxdet_bilinear_gather_triton",
    )(row, *ws, flat)


def corner_dots(flat, row, g, *, wp: int, tm: int, interpret=False) -> Array:
    """flat [R, Cp], row [M], g [M, Cp] -> [M, 4] f32: <g, v_c> per corner."""
    m, cp = row.shape[0], flat.shape[1]
    d = pl.pallas_call(
        partial(_corner_dots_kernel, wp),
        out_shape=[jax.ShapeDtypeStruct((m,), jnp.float32)] * 4,
        grid=(m // tm,),
        in_specs=[_point_spec(tm), pl.BlockSpec((tm, cp), lambda i: (i, 0)), _whole()],
        out_specs=[_point_spec(tm)] * 4,
        compiler_params=_params(),
        interpret=interpret,
        name="jaxdet_bilinear_corner_dots_triton",
    )(row, g, flat)
    return jnp.stack(d, axis=-1)


def scatter(nrows: int, row, ws, g, *, wp: int, tm: int, interpret=False) -> Array:
    """row [M], ws 4 x [M], g [M, Cp] -> dflat [nrows, Cp] f32."""
    m, cp = g.shape
    zeros = jnp.zeros((nrows, cp), jnp.float32)
    return pl.pallas_call(
        partial(_scatter_kernel, wp),
        out_shape=jax.ShapeDtypeStruct((nrows, cp), jnp.float32),
        grid=(m // tm,),
        in_specs=[_point_spec(tm)] * 5 + [pl.BlockSpec((tm, cp), lambda i: (i, 0)), _whole()],
        out_specs=_whole(),
        input_output_aliases={6: 0},
        compiler_params=_params(),
        interpret=interpret,
        name="jaxdet_bilinear_scatter_triton",
    )(row, *ws, g, zeros)
