"""2-D convolution and max pooling with backward passes that are fast on XLA:CPU.

XLA:CPU runs a forward NHWC x HWIO convolution on Eigen's fast path, but the kernel
gradient it derives (a convolution with the batch and feature roles exchanged) can be
slower than the same contraction written as kh * kw matmuls of shifted input slices
against the output gradient, a 1x1 conv slower forward + backward than a matmul, and
`reduce_window` max pooling's backward (select-and-scatter) slower than a max over the
strided slices. `benchmarks/conv_bench.py` prints each ratio (figures per machine:
benchmarks/README.md).

Which of these apply is decided by a `jaxdet.platform.Platform` value passed in, never
by the local backend or the host CPU at trace time:

- `conv_general_dilated(..., platform=p)`: drop-in for `lax.conv_general_dilated`
  (`conv_fn(p)` is the `nn.Conv` hook). Where `p.cpu_conv` (a CPU target with
  `conv_kernel_grad='slices'`), plain 2-D NHWC / HWIO convs get the slice-matmul kernel
  gradient where `p.use_slices(Cin, Cout, multiply-adds per tap)` (the forward is
  XLA's conv, and so is the input gradient, written for stride 1 as the forward conv
  of dy with the flipped, transposed kernel: XLA:CPU's own transposed conv is much
  slower inside `lax.cond` / `lax.switch` branches, see `Platform.in_conditional`),
  and 1x1 convs without padding are a matmul on the strided input. Anything else
  (dilation, groups, other layouts, string padding, GPU / TPU
  targets) is `lax.conv_general_dilated` unchanged. Both give the same values up to
  float summation order.
- `max_pool`: max pooling with -inf padding (torch `MaxPool2d` / `nn.max_pool`) as a
  max over strided slices, with a written-out backward (per-phase pads instead of a
  strided scatter per tap). Gradient: equal to `nn.max_pool`'s, ties included (the
  first maximum of a window takes it). `pool(x, ..., platform=p)` uses it on CPU
  targets and `nn.max_pool` elsewhere.

The jit option that turns XLA:CPU's YNNPACK fusions off is
`jaxdet.platform.Platform.compiler_options()`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxdet.platform import DEFAULT, LARGE_TAP_MACS, Platform

_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs, rhs, out specs of NHWC/HWIO
# Output pixels (B * rows * Wo) per block of `kernel_grad`'s scan for large convs
# (at least `LARGE_TAP_MACS` multiply-adds per tap; smaller ones take whole maps).
BLOCK_PIXELS = 2048


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        specs = (dimension_numbers.lhs_spec, dimension_numbers.rhs_spec,
                 dimension_numbers.out_spec)
        return tuple(tuple(s) for s in specs) == _NHWC
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    platform: Platform = DEFAULT,
) -> jax.Array:
    """`lax.conv_general_dilated`, with the CPU kernels where `platform.cpu_conv`
    (module docstring).

    The CPU kernels take: lhs [B, H, W, Cin], rhs [kh, kw, Cin, Cout] (NHWC / HWIO),
    explicit padding pairs, no dilation, one group. Returns [B, Ho, Wo, Cout].
    """
    plain = (
        _is_nhwc(dimension_numbers)
        and lhs.ndim == 4
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
    )
    if plain and platform.cpu_conv:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        strides = tuple(int(s) for s in window_strides)
        if rhs.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
            # A 1x1 conv is a matmul on the strided input.
            return _matmul_1x1(lhs[:, :: strides[0], :: strides[1]], rhs[0, 0], precision)
        ho = (lhs.shape[1] + sum(pads[0]) - rhs.shape[0]) // strides[0] + 1
        wo = (lhs.shape[2] + sum(pads[1]) - rhs.shape[1]) // strides[1] + 1
        cin, cout = rhs.shape[2], rhs.shape[3]
        if platform.use_slices(cin, cout, lhs.shape[0] * ho * wo * cin * cout):
            return _conv_nhwc(lhs, rhs, strides, pads, precision)
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type,
    )


@functools.cache
def conv_fn(platform: Platform) -> Callable[..., jax.Array]:
    """`conv_general_dilated` for `platform`: the `conv_general_dilated` hook of `nn.Conv`."""
    return functools.partial(conv_general_dilated, platform=platform)


def _xla_conv(x, w, strides, pads, precision):
    return jax.lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(x, w, strides, pads, precision):
    return _xla_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
    return _xla_conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, res, dy):
    x, w = res
    kh, kw = w.shape[:2]
    back = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]),
            (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
    if strides == (1, 1) and min(min(p) for p in back) >= 0:
        # The input gradient as the forward conv it is (dy with the flipped, transposed
        # kernel, padded k - 1 - pad): the same values as XLA's transpose, and a forward
        # conv stays fast inside `lax.cond` / `lax.switch` branches, where the
        # transposed conv XLA:CPU derives does not.
        wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
        dx = _xla_conv(dy, wt, (1, 1), back, precision).astype(x.dtype)
    else:
        _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads, precision), x)
        (dx,) = input_vjp(dy)
    return dx, kernel_grad(x, dy, w.shape, strides, pads).astype(w.dtype)


_conv_nhwc.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_1x1(x, w, precision):
    """x [B, H, W, Cin] @ w [Cin, Cout] -> [B, H, W, Cout] (a 1x1 conv on the strided input).

    The backward is written out: with autodiff's einsum transpose, XLA:CPU gave the
    kernel gradient's dot a transposed copy of dy, fused with the recomputed BN / ReLU
    backward, in every 1x1 conv of ResNet-50.
    """
    return jnp.einsum("bhwc,co->bhwo", x, w, precision=precision)


def _matmul_1x1_fwd(x, w, precision):
    return _matmul_1x1(x, w, precision), (x, w)


def _matmul_1x1_bwd(precision, res, dy):
    x, w = res
    cin, cout = w.shape
    dx = jnp.einsum("bhwo,co->bhwc", dy, w, precision=precision).astype(x.dtype)
    dw = jnp.einsum("nc,no->co", x.reshape(-1, cin), dy.reshape(-1, cout), precision=precision,
                    preferred_element_type=jnp.float32)
    return dx, dw.astype(w.dtype)


_matmul_1x1.defvjp(_matmul_1x1_fwd, _matmul_1x1_bwd)


def _taps(xp: jax.Array, window: tuple[int, int], strides: tuple[int, int],
          out_hw: tuple[int, int]):
    """The window's shifted, strided views of padded xp: [B, Ho, Wo, C] each, row-major."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    for i in range(kh):
        for j in range(kw):
            yield xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]


def kernel_grad(
    x: jax.Array,
    dy: jax.Array,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> jax.Array:
    """d(conv)/d(kernel) as kh * kw matmuls: dW[i, j] = X_ij^T dY.

    x [B, H, W, Cin], dy [B, Ho, Wo, Cout] -> [kh, kw, Cin, Cout] (dtype of x), where
    X_ij [B * Ho * Wo, Cin] is the padded input shifted by tap (i, j) at the stride.
    Products accumulate in float32. Large maps (at least `LARGE_TAP_MACS` multiply-adds
    per tap) are done in a `lax.scan` over blocks of output rows (about `BLOCK_PIXELS`
    output pixels each, dy zero-padded to whole blocks), so that each block's shifted
    views stay in cache (benchmarks/conv_bench.py compares the two).
    """
    kh, kw, cin, cout = kernel_shape
    sh, sw = strides
    # lax.pad: the pads may be negative (a crop), like the conv's own padding.
    zero = jnp.zeros((), x.dtype)
    xp = jax.lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    b, ho, wo, _ = dy.shape
    rows = max(1, BLOCK_PIXELS // max(b * wo, 1))
    if b * ho * wo * cin * cout < LARGE_TAP_MACS:
        rows = ho

    def tap_products(xs, dys, out_hw):
        dyf = dys.reshape(-1, cout)
        return jnp.stack([
            jnp.einsum("nc,no->co", v.reshape(-1, cin), dyf, preferred_element_type=jnp.float32)
            for v in _taps(xs, (kh, kw), (sh, sw), out_hw)
        ])  # [kh * kw, Cin, Cout]

    if rows >= ho:
        taps = tap_products(xp, dy, (ho, wo))
    else:
        n = -(-ho // rows)
        dyp = jnp.pad(dy, ((0, 0), (0, n * rows - ho), (0, 0), (0, 0)))
        block_h = (rows - 1) * sh + kh  # input rows one block of output rows reads
        need = (n - 1) * rows * sh + block_h
        if xp.shape[1] < need:
            xp = jnp.pad(xp, ((0, 0), (0, need - xp.shape[1]), (0, 0), (0, 0)))

        def block(acc, k):
            xs = jax.lax.dynamic_slice_in_dim(xp, k * rows * sh, block_h, axis=1)
            dys = jax.lax.dynamic_slice_in_dim(dyp, k * rows, rows, axis=1)
            return acc + tap_products(xs, dys, (rows, wo)), None

        taps, _ = jax.lax.scan(
            block, jnp.zeros((kh * kw, cin, cout), jnp.float32), jnp.arange(n)
        )
    return taps.reshape(kh, kw, cin, cout).astype(x.dtype)


def _pool_views(x: jax.Array, window: int, stride: int, padding: int):
    """(-inf padded x, the window * window strided views [B, Ho, Wo, C], (Ho, Wo))."""
    _, h, w, _ = x.shape
    ho = (h + 2 * padding - window) // stride + 1
    wo = (w + 2 * padding - window) // stride + 1
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                 constant_values=-jnp.inf)
    return xp, list(_taps(xp, (window, window), (stride, stride), (ho, wo))), (ho, wo)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """Square max pooling with -inf padding, x [B, H, W, C] -> [B, Ho, Wo, C].

    Ho = (H + 2 * padding - window) // stride + 1 (torch `MaxPool2d`, ceil_mode=False).
    The gradient goes to the first maximum of each window in row-major order, as
    `nn.max_pool`'s (XLA's select-and-scatter) and torch's.
    """
    return functools.reduce(jnp.maximum, _pool_views(x, window, stride, padding)[1])


def _max_pool_fwd(x, window, stride, padding):
    out = max_pool(x, window, stride, padding)
    return out, (x, out)


def _max_pool_bwd(window, stride, padding, res, dy):
    """Each tap's share of dy lands on its phase of the padded map (tap (i, j) on phase
    (i % s, j % s) at offset (i // s, j // s)): plain pads and adds on phase-sized
    arrays, then one interleave, instead of a strided scatter per tap (what autodiff
    of the slice max gives)."""
    x, out = res
    b, h, w, c = x.shape
    xp, views, (ho, wo) = _pool_views(x, window, stride, padding)
    hq, wq = -(-xp.shape[1] // stride), -(-xp.shape[2] // stride)
    claimed = jnp.zeros(out.shape, bool)
    phases: dict[tuple[int, int], jax.Array] = {}
    for k, view in enumerate(views):
        i, j = divmod(k, window)
        hit = (view == out) & ~claimed
        claimed = claimed | hit
        oy, ox = i // stride, j // stride
        placed = jnp.pad(jnp.where(hit, dy, 0.0).astype(dy.dtype),
                         ((0, 0), (oy, hq - ho - oy), (ox, wq - wo - ox), (0, 0)))
        key = (i % stride, j % stride)
        phases[key] = placed if key not in phases else phases[key] + placed
    zero = jnp.zeros((b, hq, wq, c), dy.dtype)
    rows = [jnp.stack([phases.get((a, e), zero) for e in range(stride)], axis=3)
            for a in range(stride)]
    dxp = jnp.stack(rows, axis=2).reshape(b, hq * stride, wq * stride, c)
    return (dxp[:, padding:padding + h, padding:padding + w],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1, *,
         platform: Platform = DEFAULT) -> jax.Array:
    """Square max pooling with -inf padding, x [B, H, W, C] -> [B, Ho, Wo, C]: `max_pool`
    on CPU targets, XLA's `reduce_window` (as `nn.max_pool`) elsewhere. Same values."""
    if platform.target == "cpu":
        return max_pool(x, window, stride, padding)
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0), (padding, padding), (padding, padding), (0, 0)),
    )
