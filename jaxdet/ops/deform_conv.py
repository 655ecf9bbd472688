"""Deformable convolution (DCNv1 / DCNv2), channels-last.

`deform_conv2d` gives the same values as ``torchvision.ops.deform_conv2d`` after
the layout change NCHW -> NHWC:

- x [B, H, W, Cin]                      <- torch input [B, Cin, H, W]
- offsets [B, Ho, Wo, G, kh*kw, 2]      <- torch offset [B, G*kh*kw*2, Ho, Wo],
  (dy, dx)                                 channel (g*kh*kw + k)*2 + {0: dy, 1: dx},
                                           k = i*kw + j
- weight [kh, kw, Cin/groups, Cout]     <- torch weight [Cout, Cin/groups, kh, kw]
- mask [B, Ho, Wo, G, kh*kw] (DCNv2)    <- torch mask [B, G*kh*kw, Ho, Wo]

Tap (i, j) of output (ho, wo) samples input channel c (offset group
g = c // (Cin / G)) at y = ho*stride_h - pad_h + i*dil_h + dy,
x = wo*stride_w - pad_w + j*dil_w + dx, with the "zero" boundary rule of
`jaxdet.ops.sampling` (outside (-1, H) x (-1, W) gives 0).

Implementation (``impl="tiled"``, the default)
---------------------------------------------
The output pixels (B*Ho*Wo, flattened) are processed in tiles of ``tile``
pixels with `lax.map`: each tile samples its columns [tile, kh*kw*Cin] (four
corner gathers with channels last) and multiplies them by the weight. The
backward is hand-written (`jax.custom_vjp`) and is one `lax.scan` over the same
tiles: it recomputes the tile's corners, forms the weight gradient
(cols^T @ g, accumulated in the carry), the column gradient (g @ W^T), the
offset and mask gradients (four per-corner dot products over channels) and
scatter-adds the input gradient into a carried zero-padded buffer. Nothing of
size kh*kw*Cin*B*Ho*Wo is ever materialised: the peak extra memory is a few
input- / output-sized buffers (the padded input, the carried f32
input-gradient buffer, the padded output gradient; on XLA:CPU it grows like
~4x the input as the map grows) plus tile-sized temporaries of about
tile*kh*kw*Cin values, which do not grow with the map (see
`benchmarks/deform_bench.py`, which reports XLA's compiled memory analysis:
47 MiB vs a 67 MiB columns tensor at B=2, 50x76, 256 channels).

``impl="simple"`` is the untiled gather-then-matmul formulation differentiated by
autodiff: the reference for the custom VJP in tests, and a fallback.

Gather layout (``layout``): see `jaxdet.ops.sampling` -- four row gathers
("rows", fastest on XLA:CPU) or one packed 2x2-window gather ("packed", the
layout for TPU/GPU); "auto" picks by backend.

Inputs may be bf16: sampling, the matmul accumulation and all gradient
accumulations are f32; the output has x's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdet.ops import sampling

Array = jnp.ndarray
IntPair = int | Sequence[int]


def _pair(v: IntPair, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def output_size(
    in_size: tuple[int, int],
    kernel: tuple[int, int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> tuple[int, int]:
    """(Ho, Wo) of a convolution, as torch computes it (floor)."""
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    (h, w), (kh, kw) = in_size, kernel
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    return ho, wo


def base_points(
    out_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    dtype=jnp.float32,
) -> Array:
    """Undeformed sampling points [Ho, Wo, kh*kw, 2] (y, x) of a convolution."""
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    (ho, wo), (kh, kw) = out_hw, kernel
    ys = jnp.arange(ho, dtype=dtype)[:, None] * sh - ph + jnp.arange(kh, dtype=dtype) * dh
    xs = jnp.arange(wo, dtype=dtype)[:, None] * sw - pw + jnp.arange(kw, dtype=dtype) * dw
    yy = jnp.broadcast_to(ys[:, None, :, None], (ho, wo, kh, kw))
    xx = jnp.broadcast_to(xs[None, :, None, :], (ho, wo, kh, kw))
    return jnp.stack([yy, xx], axis=-1).reshape(ho, wo, kh * kw, 2)


class _Cfg(NamedTuple):
    height: int
    width: int
    pix_per_image: int  # Ho * Wo
    groups: int
    tile: int
    layout: str


def _acc_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _tile_corners(cfg: _Cfg, pts: Array, pix0: Array):
    """Corners of a tile's points pts [P, K, G, 2], flattened to M = P*K*G entries.

    Returns (row [M] int32: flat row of the top-left corner in the padded map
    [B*(H+2)*(W+2)*G, Cg], Corners with [M] fields).
    """
    p, k, g, _ = pts.shape
    pix = pix0 + jnp.arange(p, dtype=jnp.int32)
    batch = jnp.broadcast_to((pix // cfg.pix_per_image)[:, None, None], (p, k, g)).reshape(-1)
    group = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (p, k, g)).reshape(-1)
    flat = pts.reshape(p * k * g, 2)
    cn = sampling.corners(flat[:, 0], flat[:, 1], cfg.height, cfg.width, "zero")
    hp, wp = cfg.height + 2, cfg.width + 2
    row = ((batch * hp + cn.y0) * wp + cn.x0) * g + group
    return row, batch, group, cn


def _corner_offsets(cfg: _Cfg, g: int) -> tuple[int, int, int, int]:
    wp = cfg.width + 2
    return (0, g, wp * g, (wp + 1) * g)


def _tile_values(cfg: _Cfg, xflat: Array, pts: Array, pix0: Array):
    """Corner values (4 x [M, Cg], f32) and corner info of a tile.

    xflat: the zero-padded input as [B*(H+2)*(W+2)*G, Cg].
    """
    g = pts.shape[2]
    row, batch, group, cn = _tile_corners(cfg, pts, pix0)
    acc = _acc_dtype(xflat.dtype)
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


def _scatter(cfg: _Cfg, dflat: Array, row, batch, group, cn, g: int, upd: tuple) -> Array:
    if cfg.layout == "rows":
        for off, u in zip(_corner_offsets(cfg, g), upd):
            dflat = dflat.at[row + off].add(u, mode="promise_in_bounds")
        return dflat
    b = dflat.shape[0] // ((cfg.height + 2) * (cfg.width + 2) * g)
    d5 = dflat.reshape(b, cfg.height + 2, cfg.width + 2, g, dflat.shape[-1])
    d5 = sampling.scatter_corners(d5, batch, cn.y0, cn.x0, group, *upd, "packed")
    return d5.reshape(dflat.shape)


def _interp(vals, cn: sampling.Corners) -> Array:
    w00, w01, w10, w11 = cn.weights()
    v00, v01, v10, v11 = vals
    return w00[..., None] * v00 + w01[..., None] * v01 + w10[..., None] * v10 + w11[..., None] * v11


def _matmul_cols(cols: Array, weight: Array, groups: int) -> Array:
    """cols [P, K, Cin] x weight [K, Cin/groups, Cout] -> [P, Cout] (f32 accumulation)."""
    p, k, cin = cols.shape
    cout = weight.shape[-1]
    acc = _acc_dtype(weight.dtype)
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
    return sampling.pad_map(x).reshape(b * (h + 2) * (w + 2) * g, c // g)


def _forward(cfg: _Cfg, x: Array, pts: Array, mask: Array, weight: Array) -> Array:
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


def _backward(cfg: _Cfg, x: Array, pts: Array, mask: Array, weight: Array, gout: Array):
    n, k, g, _ = pts.shape
    b, h, w, cin = x.shape
    cin_g = weight.shape[1]
    xflat = _xflat(x, g)
    tile = cfg.tile
    n_total = -(-n // tile) * tile
    pts_t = _tiles(_pad_pixels(pts, n_total, -4.0), tile)
    mask_t = _tiles(_pad_pixels(mask, n_total, 0.0), tile)
    acc = jnp.result_type(_acc_dtype(x.dtype), _acc_dtype(weight.dtype), pts.dtype)
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
def _deform_tiled(cfg: _Cfg, x, pts, mask, weight):
    return _forward(cfg, x, pts, mask, weight)


def _deform_tiled_fwd(cfg, x, pts, mask, weight):
    return _forward(cfg, x, pts, mask, weight), (x, pts, mask, weight)


def _deform_tiled_bwd(cfg, res, gout):
    return _backward(cfg, *res, gout)


_deform_tiled.defvjp(_deform_tiled_fwd, _deform_tiled_bwd)


def _deform_simple(cfg: _Cfg, x, pts, mask, weight):
    n, k, g, _ = pts.shape
    xflat = _xflat(x, g)
    vals, _, _, _, cn = _tile_values(cfg, xflat, pts, jnp.int32(0))
    cols = _interp(vals, cn) * mask.reshape(-1, 1).astype(vals[0].dtype)
    return _matmul_cols(cols.reshape(n, k, -1), weight, cfg.groups)


def deform_conv2d(
    x: Array,
    offsets: Array,
    weight: Array,
    mask: Array | None = None,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    bias: Array | None = None,
    impl: str = "tiled",
    layout: str = "auto",
    tile: int = 256,
) -> Array:
    """Deformable convolution (DCNv1, or DCNv2 with `mask`).

    Args:
      x: [B, H, W, Cin] input.
      offsets: [B, Ho, Wo, G, kh*kw, 2] (dy, dx) offsets; G = offset groups
        (torch's ``offset_groups``), Cin % G == 0.
      weight: [kh, kw, Cin/groups, Cout].
      mask: optional [B, Ho, Wo, G, kh*kw] modulation (DCNv2).
      stride, padding, dilation: ints or pairs (symmetric zero padding).
      groups: convolution groups (Cin and Cout divisible by it).
      bias: optional [Cout].
      impl: "tiled" (custom VJP, see module docstring) or "simple" (autodiff).
      layout: corner gather layout, "auto" | "rows" | "packed".
      tile: output pixels per tile of the tiled implementation.
    Returns:
      [B, Ho, Wo, Cout], x's dtype (f32 accumulation).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, W, Cin], got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"weight must be [kh, kw, Cin/groups, Cout], got shape {weight.shape}")
    b, h, w, cin = x.shape
    kh, kw, cin_g, cout = weight.shape
    if groups < 1 or cin % groups or cout % groups:
        raise ValueError(f"Cin={cin} and Cout={cout} must be divisible by groups={groups}")
    if cin_g * groups != cin:
        raise ValueError(
            f"weight has {cin_g} input channels per group but x has {cin} channels "
            f"and groups={groups} (expected {cin // groups})"
        )
    ho, wo = output_size((h, w), (kh, kw), stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"feature map {h}x{w} is smaller than the {kh}x{kw} kernel with padding "
            f"{_pair(padding, 'padding')} and dilation {_pair(dilation, 'dilation')}: "
            f"output size would be {ho}x{wo}"
        )
    if offsets.ndim != 6 or offsets.shape[:3] != (b, ho, wo) or offsets.shape[4:] != (kh * kw, 2):
        raise ValueError(
            f"offsets must be [B, Ho, Wo, G, kh*kw, 2] = [{b}, {ho}, {wo}, G, {kh * kw}, 2], "
            f"got shape {offsets.shape}"
        )
    g = offsets.shape[3]
    if cin % g:
        raise ValueError(f"Cin={cin} must be divisible by the {g} offset groups")
    if mask is not None and mask.shape != offsets.shape[:-1]:
        raise ValueError(f"mask must have shape {offsets.shape[:-1]}, got {mask.shape}")
    if impl not in ("tiled", "simple"):
        raise ValueError(f"unknown impl {impl!r}; expected 'tiled' or 'simple'")

    pdtype = _acc_dtype(offsets.dtype)
    base = base_points((ho, wo), (kh, kw), stride, padding, dilation, pdtype)
    pts = base[None, :, :, None] + offsets.astype(pdtype)  # [B, Ho, Wo, G, K, 2]
    n = b * ho * wo
    pts = jnp.swapaxes(pts.reshape(n, g, kh * kw, 2), 1, 2)  # [N, K, G, 2]
    if mask is None:
        m = jnp.ones((n, kh * kw, g), pdtype)
    else:
        m = jnp.swapaxes(mask.astype(pdtype).reshape(n, g, kh * kw), 1, 2)
    cfg = _Cfg(
        height=h,
        width=w,
        pix_per_image=ho * wo,
        groups=groups,
        tile=max(1, min(int(tile), n)),
        layout=sampling.resolve_layout(layout),
    )
    wk = weight.reshape(kh * kw, cin_g, cout)
    if impl == "tiled":
        out = _deform_tiled(cfg, x, pts, m, wk)
    else:
        out = _deform_simple(cfg, x, pts, m, wk)
    if bias is not None:
        out = out + bias.astype(out.dtype)
    return out.reshape(b, ho, wo, cout).astype(x.dtype)


def dense_equivalent_offsets(
    batch: int, out_hw: tuple[int, int], kernel: tuple[int, int], offset_groups: int = 1
) -> Array:
    """Zero offsets [B, Ho, Wo, G, kh*kw, 2]: deform_conv2d then equals a plain conv."""
    return jnp.zeros((batch, *out_hw, offset_groups, math.prod(kernel), 2), jnp.float32)
