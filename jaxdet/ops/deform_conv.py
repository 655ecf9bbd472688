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
pixels, forward and hand-written backward (`jaxdet.ops.deform_tiles`). Nothing of
size kh*kw*Cin*B*Ho*Wo is ever materialised: the peak extra memory is a few
input- / output-sized buffers (the padded input, the carried f32
input-gradient buffer, the padded output gradient; on XLA:CPU it grows like
~4x the input as the map grows) plus tile-sized temporaries of about
tile*kh*kw*Cin values, which do not grow with the map (see
`benchmarks/deform_bench.py`, which reports XLA's compiled memory analysis:
47 MiB vs a 67 MiB columns tensor at B=2, 50x76, 256 channels).

``impl="simple"`` is the untiled gather-then-matmul formulation differentiated by
autodiff: the reference for the custom VJP in tests, and a fallback.

``sampling_backend="pallas"`` (the config's ``model.sampling_backend``) samples
the columns with the Pallas kernels of `jaxdet.ops.pallas.sampling` (points
ordered group-major, so a tile of points reads a compact span of the map) and
multiplies them as ``impl="simple"`` does; ``"auto"`` and ``"xla"`` keep ``impl``.

Gather layout (``layout``): see `jaxdet.ops.sampling` -- four row gathers
("rows", fastest on XLA:CPU) or one packed 2x2-window gather ("packed", the
layout for TPU/GPU); "auto" picks by ``target``.

Inputs may be bf16: sampling, the matmul accumulation and all gradient
accumulations are f32; the output has x's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp

from jaxdet.ops import pallas as pallas_cfg
from jaxdet.ops import sampling
from jaxdet.ops.deform_tiles import TileConfig, acc_dtype, deform_simple, deform_tiled
from jaxdet.ops.deform_tiles import _matmul_cols as matmul_cols

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


def _check_args(x, offsets, weight, mask, stride, padding, dilation, groups, impl):
    """Validates `deform_conv2d`'s arguments; returns the output size (Ho, Wo)."""
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
    if cin % offsets.shape[3]:
        raise ValueError(f"Cin={cin} must be divisible by the {offsets.shape[3]} offset groups")
    if mask is not None and mask.shape != offsets.shape[:-1]:
        raise ValueError(f"mask must have shape {offsets.shape[:-1]}, got {mask.shape}")
    if impl not in ("tiled", "simple"):
        raise ValueError(f"unknown impl {impl!r}; expected 'tiled' or 'simple'")
    return ho, wo


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
    target: str = "cpu",
    sampling_backend: str = "auto",
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
      target: 'cpu' | 'gpu' | 'tpu', resolves layout="auto" (`jaxdet.platform`).
      sampling_backend: 'auto' | 'xla' | 'pallas' (module docstring).
    Returns:
      [B, Ho, Wo, Cout], x's dtype (f32 accumulation).
    """
    ho, wo = _check_args(x, offsets, weight, mask, stride, padding, dilation, groups, impl)
    b, h, w, _ = x.shape
    kh, kw, cin_g, cout = weight.shape
    g = offsets.shape[3]
    pdtype = acc_dtype(offsets.dtype)
    base = base_points((ho, wo), (kh, kw), stride, padding, dilation, pdtype)
    pts = base[None, :, :, None] + offsets.astype(pdtype)  # [B, Ho, Wo, G, K, 2]
    n = b * ho * wo
    pts = jnp.swapaxes(pts.reshape(n, g, kh * kw, 2), 1, 2)  # [N, K, G, 2]
    if mask is None:
        m = jnp.ones((n, kh * kw, g), pdtype)
    else:
        m = jnp.swapaxes(mask.astype(pdtype).reshape(n, g, kh * kw), 1, 2)
    cfg = TileConfig(
        height=h,
        width=w,
        pix_per_image=ho * wo,
        groups=groups,
        tile=max(1, min(int(tile), n)),
        layout=sampling.resolve_layout(layout, target),
    )
    wk = weight.reshape(kh * kw, cin_g, cout)
    if pallas_cfg.use_pallas(target, sampling_backend):
        out = _deform_pallas(x, pts, m, wk, ho * wo, groups, target)
    elif impl == "tiled":
        out = deform_tiled(cfg, x, pts, m, wk)
    else:
        out = deform_simple(cfg, x, pts, m, wk)
    if bias is not None:
        out = out + bias.astype(out.dtype)
    return out.reshape(b, ho, wo, cout).astype(x.dtype)


def _deform_pallas(x, pts, mask, wk, pix_per_image: int, groups: int, target: str) -> Array:
    """Columns [N, K, Cin] sampled by the Pallas kernels, then `matmul_cols`."""
    from jaxdet.ops.pallas import sampling as pallas_sampling

    b, h, w, cin = x.shape
    n, k, g, _ = pts.shape
    # Offset group g of image i is image i * G + g of a [B*G, H, W, Cin/G] map.
    xg = jnp.moveaxis(x.reshape(b, h, w, g, cin // g), 3, 1).reshape(b * g, h, w, cin // g)
    img = jnp.arange(n, dtype=jnp.int32) // pix_per_image
    bidx = jnp.arange(g, dtype=jnp.int32)[:, None, None] + img[None, :, None] * g
    cols = pallas_sampling.bilinear_sample_batched(
        xg, bidx, jnp.moveaxis(pts, 2, 0), target=target
    )  # [G, N, K, Cin/G]
    cols = jnp.moveaxis(cols, 0, 2).astype(acc_dtype(x.dtype)) * mask[..., None]
    return matmul_cols(cols.reshape(n, k, cin), wk, groups)


def dense_equivalent_offsets(
    batch: int, out_hw: tuple[int, int], kernel: tuple[int, int], offset_groups: int = 1
) -> Array:
    """Zero offsets [B, Ho, Wo, G, kh*kw, 2]: deform_conv2d then equals a plain conv."""
    return jnp.zeros((batch, *out_hw, offset_groups, math.prod(kernel), 2), jnp.float32)
