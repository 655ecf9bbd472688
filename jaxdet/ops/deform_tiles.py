"""The tiled deformable convolution behind `jaxdet.ops.deform_conv.deform_conv2d`.

Points are [N, K, G, 2] (output pixels, kernel taps, offset groups, (y, x)), the
mask [N, K, G], the weight [K, Cin/groups, Cout]. `deform_tiled` processes the N
output pixels in tiles of `TileConfig.tile` with `lax.map`: each tile samples its
columns [tile, K * Cin] (four corner gathers with channels last, the "zero"
boundary rule of `jaxdet.ops.bilinear`) and multiplies them by the weight. Its
backward (`jax.custom_vjp`) is one `lax.scan` over the same tiles: it recomputes
the tile's corners, forms the weight gradient (cols^T @ g, accumulated in the
carry), the column gradient (g @ W^T), the offset and mask gradients (four
per-corner dot products over channels) and scatter-adds the input gradient into a
carried zero-padded buffer. `deform_simple` is the untiled form, differentiated by
autodiff. Both return [N, Cout] in f32 accumulation.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.ops import bilinear, sampling

Array = jnp.ndarray


class TileConfig(NamedTuple):
    """Static shape facts of one call (a hashable custom-VJP argument)."""


    height: int
    width: int
    pix_per_image: int  # Ho * Wo
    groups: int
    tile: int
    layout: str


def acc_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _tile_corners(cfg: TileConfig, pts: Array, pix0: Array):
    """Corners of a tile's points pts [P, K, G, 2], flattened to M = P*K*G entries.

    Returns (row [M] int32: flat row of the top-left corner in the padded map
    [B*(H+2)*(W+2)*G, Cg], Corners with [M] fields).
    """
    p, k, g, _ = pts.shape
    pix = pix0 + jnp.arange(p, dtype=jnp.int32)
    batch = jnp.broadcast_to((pix // cfg.pix_per_image)[:, None, None], (p, k, g)).reshape(-1)
    group = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (p, k, g)).reshape(-1)
    flat = pts.reshape(p * k * g, 2)
    cn = bilinear.corners(flat[:, 0], flat[:, 1], cfg.height, cfg.width, "zero")
    hp, wp = cfg.height + 2, cfg.width + 2
    row = ((batch * hp + cn.y0) * wp + cn.x0) * g + group
    return row, batch, group, cn


def _corner_offsets(cfg: TileConfig, g: int) -> tuple[int, int, int, int]:
    wp = cfg.width + 2
    return (0, g, wp * g, (wp + 1) * g)


def _tile_values(cfg: TileConfig, xflat: Array, pts: Array, pix0: Array):
    """Corner values (4 x [M, Cg], f32) and corner info of a tile.

    xflat: the zero-padded input as [B*(H+2)*(W+2)*G, Cg].
    """
    g = pts.shape[2]
    row, batch, group, cn = _tile_corners(cfg, pts, pix0)
    acc = acc_dtype(xflat.dtype)
    if cfg.layout == "rows":
        vals = tuple(
            xflat.at[row + off].get(mode="promise_in_bounds").astype(acc)
            for off in _corner_offsets(cfg, g)
        )
    else:
        b = xflat.shape[0] // ((cfg.height + 2) * (cfg.width + 2) * g)
        x5 = xflat.reshape(b, cfg.height + 2, cfg.width + 2, g, xflat.shape[-1])
        vals = tuple(
            v.astype(acc)
            for v in sampling.gather_corners(x5, batch, cn.y0, cn.x0, "packed", group=group)
        )
    return vals, row, batch, group, cn


def _scatter(cfg: TileConfig, dflat: Array, row, batch, group, cn, g: int, upd: tuple) -> Array:
    if cfg.layout == "rows":
        for off, u in zip(_corner_offsets(cfg, g), upd):
            dflat = dflat.at[row + off].add(u, mode="promise_in_bounds")
        return dflat
    b = dflat.shape[0] // ((cfg.height + 2) * (cfg.width + 2) * g)
    d5 = dflat.reshape(b, cfg.height + 2, cfg.width + 2, g, dflat.shape[-1])
    d5 = sampling.scatter_corners(d5, batch, cn.y0, cn.x0, group, *upd, "packed")
    return d5.reshape(dflat.shape)


def _interp(vals, cn: bilinear.Corners) -> Array:
    w00, w01, w10, w11 = cn.weights()
    v00, v01, v10, v11 = vals
    return w00[..., None] * v00 + w01[..., None] * v01 + w10[..., None] * v10 + w11[..., None] * v11


def _matmul_cols(cols: Array, weight: Array, groups: int) -> Array:
    """cols [P, K, Cin] x weight [K, Cin/groups, Cout] -> [P, Cout] (f32 accumulation)."""
    p, k, cin = cols.shape
    cout = weight.shape[-1]
    acc = acc_dtype(weight.dtype)
    cols = cols.astype(weight.dtype)
    if groups == 1:
        return jnp.dot(
            cols.reshape(p, k * cin),
            weight.reshape(k * cin, cout),
            preferred_element_type=acc,
        )
    cg, og = cin // groups, cout // groups
    w = weight.reshape(k, cg, groups, og)
    out = jnp.einsum(
        "pkqc,kcqo->pqo",
        cols.reshape(p, k, groups, cg),
        w,
        preferred_element_type=acc,
    )
    return out.reshape(p, cout)


def _cols_grad(gout: Array, weight: Array, groups: int) -> Array:
    """gout [P, Cout] x weight [K, Cin/groups, Cout] -> d cols [P, K, Cin] (f32)."""
    k, cg, cout = weight.shape
    w = weight.astype(gout.dtype)
    if groups == 1:
        return jnp.dot(gout, w.reshape(k * cg, cout).T).reshape(-1, k, cg)
    og = cout // groups
    d = jnp.einsum("pqo,kcqo->pkqc", gout.reshape(-1, groups, og), w.reshape(k, cg, groups, og))
    return d.reshape(-1, k, groups * cg)


def _weight_grad(cols: Array, gout: Array, groups: int, cin_g: int) -> Array:
    """cols [P, K, Cin] (f32), gout [P, Cout] -> [K, Cin/groups, Cout] (f32)."""
    p, k, cin = cols.shape
    cout = gout.shape[-1]
    if groups == 1:
        return jnp.dot(cols.reshape(p, k * cin).T, gout).reshape(k, cin, cout)
    og = cout // groups
    d = jnp.einsum("pkqc,pqo->kcqo", cols.reshape(p, k, groups, cin_g), gout.reshape(p, groups, og))
    return d.reshape(k, cin_g, cout)


def _pad_pixels(a: Array, n_total: int, fill) -> Array:
    extra = n_total - a.shape[0]
    if extra == 0:
        return a
    pad = jnp.full((extra,) + a.shape[1:], fill, a.dtype)
    return jnp.concatenate([a, pad], axis=0)


def _tiles(a: Array, tile: int) -> Array:
    return a.reshape((a.shape[0] // tile, tile) + a.shape[1:])


def _xflat(x: Array, g: int) -> Array:
    b, h, w, c = x.shape
    return bilinear.pad_map(x).reshape(b * (h + 2) * (w + 2) * g, c // g)


def _forward(cfg: TileConfig, x: Array, pts: Array, mask: Array, weight: Array) -> Array:
    n, k, g, _ = pts.shape
    xflat = _xflat(x, g)
    tile = cfg.tile
    n_total = -(-n // tile) * tile
    pts_t = _tiles(_pad_pixels(pts, n_total, -4.0), tile)
    mask_t = _tiles(_pad_pixels(mask, n_total, 0.0), tile)
    starts = jnp.arange(n_total // tile, dtype=jnp.int32) * tile

    def body(args):
        pts_i, mask_i, pix0 = args
        vals, _, _, _, cn = _tile_values(cfg, xflat, pts_i, pix0)
        cols = _interp(vals, cn) * mask_i.reshape(-1, 1)  # [M, Cg]
        return _matmul_cols(cols.reshape(tile, k, -1), weight, cfg.groups)

    out = lax.map(body, (pts_t, mask_t, starts))
    return out.reshape(n_total, -1)[:n]


def _backward(cfg: TileConfig, x: Array, pts: Array, mask: Array, weight: Array, gout: Array):
    n, k, g, _ = pts.shape
    b, h, w, cin = x.shape
    cin_g = weight.shape[1]
    xflat = _xflat(x, g)
    tile = cfg.tile
    n_total = -(-n // tile) * tile
    pts_t = _tiles(_pad_pixels(pts, n_total, -4.0), tile)
    mask_t = _tiles(_pad_pixels(mask, n_total, 0.0), tile)
    acc = jnp.result_type(acc_dtype(x.dtype), acc_dtype(weight.dtype), pts.dtype)
    gout_t = _tiles(_pad_pixels(gout.astype(acc), n_total, 0.0), tile)
    starts = jnp.arange(n_total // tile, dtype=jnp.int32) * tile

    def body(carry, args):
        dflat, dw = carry
        pts_i, mask_i, g_i, pix0 = args
        vals, row, batch, group, cn = _tile_values(cfg, xflat, pts_i, pix0)
        m = mask_i.reshape(-1).astype(acc)  # [M]
        val = _interp(vals, cn)  # [M, Cg]
        cols = (val * m[:, None]).reshape(tile, k, cin)
        dw = dw + _weight_grad(cols, g_i, cfg.groups, cin_g)
        dcols = _cols_grad(g_i, weight, cfg.groups).reshape(val.shape)
        # Per-corner dot products over channels: d out / d (corner weight).
        d00, d01, d10, d11 = (jnp.sum(dcols * v, axis=-1) for v in vals)
        w00, w01, w10, w11 = cn.weights()
        dmask = w00 * d00 + w01 * d01 + w10 * d10 + w11 * d11
        hy, hx = 1.0 - cn.ly, 1.0 - cn.lx
        mi = m * cn.inside
        dy = mi * (hx * (d10 - d00) + cn.lx * (d11 - d01))
        dx = mi * (hy * (d01 - d00) + cn.ly * (d11 - d10))
        dval = dcols * m[:, None]
        upd = tuple(wc[:, None] * dval for wc in (w00, w01, w10, w11))
        dflat = _scatter(cfg, dflat, row, batch, group, cn, g, upd)
        return (dflat, dw), (jnp.stack([dy, dx], axis=-1), dmask)

    init = (jnp.zeros(xflat.shape, acc), jnp.zeros(weight.shape, acc))
    (dflat, dw), (dpts, dmask) = lax.scan(body, init, (pts_t, mask_t, gout_t, starts))
    dx = dflat.reshape(b, h + 2, w + 2, cin)[:, 1:-1, 1:-1, :]
    dpts = dpts.reshape(n_total, k, g, 2)[:n]
    dmask = dmask.reshape(n_total, k, g)[:n]
    return (
        dx.astype(x.dtype),
        dpts.astype(pts.dtype),
        dmask.astype(mask.dtype),
        dw.astype(weight.dtype),
    )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def deform_tiled(cfg: TileConfig, x, pts, mask, weight):
    return _forward(cfg, x, pts, mask, weight)


def _deform_tiled_fwd(cfg, x, pts, mask, weight):
    return _forward(cfg, x, pts, mask, weight), (x, pts, mask, weight)


def _deform_tiled_bwd(cfg, res, gout):
    return _backward(cfg, *res, gout)


deform_tiled.defvjp(_deform_tiled_fwd, _deform_tiled_bwd)


def deform_simple(cfg: TileConfig, x, pts, mask, weight):
    n, k, g, _ = pts.shape
    xflat = _xflat(x, g)
    vals, _, _, _, cn = _tile_values(cfg, xflat, pts, jnp.int32(0))
    cols = _interp(vals, cn) * mask.reshape(-1, 1).astype(vals[0].dtype)
    return _matmul_cols(cols.reshape(n, k, -1), weight, cfg.groups)
