"""2-D convolution and max pooling with backward passes that are fast on XLA:CPU.

XLA:CPU runs a forward NHWC x HWIO convolution on Eigen's fast path, but the kernel
gradient it derives (a convolution with the batch and feature roles exchanged) is up
to ~3x slower than the same contraction written as kh * kw matmuls of shifted input
slices against the output gradient, and a 1x1 conv is 2-10x slower forward + backward
than a matmul; `reduce_window` max pooling's backward (select-and-scatter) is ~3x
slower than a max over the strided slices. `benchmarks/conv_bench.py` prints each
ratio.

- `conv_general_dilated`: drop-in for `lax.conv_general_dilated` (the `nn.Conv` hook).
  On CPU, plain 2-D NHWC / HWIO convs get the slice-matmul kernel gradient when
  `Cin * Cout >= 512` (below that XLA's own is as fast; forward and input gradient
  stay XLA's) -- on CPUs with AVX-512, where XLA's small convs are faster, only from
  64M multiply-adds per kernel tap -- and 1x1 convs without padding are a matmul on
  the strided input.
  Anything else (dilation, groups, other layouts, string padding, GPU / TPU, where
  cuDNN / the TPU compiler do this well) is `lax.conv_general_dilated` unchanged.
- `max_pool`: max pooling with -inf padding (torch `MaxPool2d` / `nn.max_pool`) as a
  max over strided slices, with a written-out backward (per-phase pads instead of a
  strided scatter per tap). Gradient: equal to `nn.max_pool`'s, ties included (the
  first maximum of a window takes it).

`KERNEL_GRAD` ('auto' | 'slices' | 'xla') picks at trace time; 'auto' = 'slices' on
CPU, 'xla' = plain `lax.conv_general_dilated` everywhere. They give the same values up
to float summation order.

YNNPACK. jax 0.10's XLA:CPU hands convolutions to YNNPACK fusions (`ynn_fusion` in the
compiled HLO). On a 2-core AMD EPYC (AVX2, no AVX-512) they ran on one thread: a 3x3
conv [16, 16, 16, 64] -> 64 took 4.7 ms forward with them and 2.95 ms without, 26.7 ms
against 9.4 ms forward + backward, and the tiny ATSS train step was 0.78x as long with
them off and XLA's kernel gradients (four variants compiled in one process, timings
interleaved). On a 2-core Xeon with AVX-512 turning them off made the step 1.06-1.36x
slower; on a 2-core AMD EPYC with AVX-512 (Zen 4) it made it 0.87x as long (two
rounds of on / off / auto in one process). `benchmarks/train_step_bench.py` prints
the on/off ratio. `compiler_options()` gives the per-jit option that turns them off
(`xla_cpu_experimental_ynn_fusion_type=''`) where `YNNPACK` says so: 'auto' = off on
AMD x86 CPUs and on x86 CPUs without AVX-512, 'on' / 'off' everywhere on CPU; the
train and eval jits of `jaxdet.train.loop` pass it. With them off, small convs keep
XLA's kernel gradient (the AVX-512 rule above), which is what measured fastest there.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Sequence

import jax
import jax.numpy as jnp

KERNEL_GRAD = "auto"
YNNPACK = "auto"  # 'auto' | 'on' | 'off' (module docstring)
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs, rhs, out specs of NHWC/HWIO
_MIN_CIN_COUT = 512
# A "large" conv: at least this many multiply-adds per kernel tap (B * Ho * Wo * Cin *
# Cout). On CPUs with AVX-512, XLA's own kernel gradient wins below it (measured with
# benchmarks/conv_bench.py on a Xeon with AVX-512: 0.70-0.99x for every tiny-model
# shape, up to 17M multiply-adds per tap; 1.13-3.1x from 134M up), so only large convs
# take the tap matmuls there; and only large convs are blocked (below: whole maps, as
# measured fast on the AVX2 EPYC).
LARGE_TAP_MACS = 1 << 26
# Output pixels (B * rows * Wo) per block of `kernel_grad`'s scan for large convs
# (1-2k measured best for the R50 shapes on the AVX-512 Xeon).
BLOCK_PIXELS = 2048


@functools.cache
def _cpuinfo(key: str) -> str:
    """The value of the first `key` line of Linux /proc/cpuinfo ('' if none or unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def _cpu_has_avx512() -> bool:
    """Whether the host CPU reports AVX-512F."""
    return "avx512f" in _cpuinfo("flags").split()


def _cpu_is_amd() -> bool:
    """Whether the host CPU is an AMD one (`vendor_id`)."""
    return _cpuinfo("vendor_id") == "AuthenticAMD"


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@functools.cache
def _ynn_option_accepted() -> bool:
    """Whether this jaxlib's XLA:CPU knows the YNNPACK fusion option (probed once)."""
    try:
        jax.jit(lambda v: v + 1, compiler_options={_YNN_OPTION: ""}).lower(
            jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception:  # XLA rejects an unknown option at compile time
        return False
    return True


def ynnpack_off() -> bool:
    """Whether jits should turn XLA:CPU's YNNPACK fusions off (`YNNPACK`, backend, CPU)."""
    if YNNPACK not in ("auto", "on", "off"):
        raise ValueError(f"YNNPACK={YNNPACK!r}; expected 'auto', 'on' or 'off'")
    if YNNPACK == "on" or jax.default_backend() != "cpu":
        return False
    if YNNPACK == "auto" and (not _is_x86() or (_cpu_has_avx512() and not _cpu_is_amd())):
        return False
    return _ynn_option_accepted()


def compiler_options() -> dict[str, str] | None:
    """`compiler_options` for `jax.jit` of a train / eval step: the YNNPACK switch
    (module docstring), or None (XLA's defaults)."""
    return {_YNN_OPTION: ""} if ynnpack_off() else None


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        specs = (dimension_numbers.lhs_spec, dimension_numbers.rhs_spec,
                 dimension_numbers.out_spec)
        return tuple(tuple(s) for s in specs) == _NHWC
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def _fast_paths() -> bool:
    """Whether the matmul paths apply (KERNEL_GRAD, backend); checked at trace time."""
    mode = KERNEL_GRAD
    if mode not in ("auto", "slices", "xla"):
        raise ValueError(f"KERNEL_GRAD={mode!r}; expected 'auto', 'slices' or 'xla'")
    return mode == "slices" or (mode == "auto" and jax.default_backend() == "cpu")


def _use_slices(rhs_shape: Sequence[int], out_shape: Sequence[int] | None = None) -> bool:
    """Slice-matmul kernel gradient for this [kh, kw, Cin, Cout] kernel and
    [B, Ho, Wo, Cout] output? ('auto': Cin * Cout >= 512; with AVX-512 or with
    YNNPACK off, at least `LARGE_TAP_MACS` multiply-adds per tap, which needs
    `out_shape`.)"""
    if not _fast_paths():
        return False
    if KERNEL_GRAD == "slices":
        return True
    cin, cout = rhs_shape[2], rhs_shape[3]
    if _cpu_has_avx512() or ynnpack_off():
        rows = 0 if out_shape is None else out_shape[0] * out_shape[1] * out_shape[2]
        return rows * cin * cout >= LARGE_TAP_MACS
    return cin * cout >= _MIN_CIN_COUT


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
) -> jax.Array:
    """`lax.conv_general_dilated` with the CPU-fast kernel gradient (see module doc).

    The fast path: lhs [B, H, W, Cin], rhs [kh, kw, Cin, Cout] (NHWC / HWIO), explicit
    padding pairs, no dilation, one group. Returns [B, Ho, Wo, Cout].
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
    if plain and _fast_paths():
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        strides = tuple(int(s) for s in window_strides)
        if rhs.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
            # A 1x1 conv is a matmul (2.5-10x faster than XLA:CPU's, forward + backward).
            return _matmul_1x1(lhs[:, :: strides[0], :: strides[1]], rhs[0, 0], precision)
        ho = (lhs.shape[1] + sum(pads[0]) - rhs.shape[0]) // strides[0] + 1
        wo = (lhs.shape[2] + sum(pads[1]) - rhs.shape[1]) // strides[1] + 1
        if _use_slices(rhs.shape, (lhs.shape[0], ho, wo, rhs.shape[3])):
            return _conv_nhwc(lhs, rhs, strides, pads, precision)
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type,
    )


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
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads, precision), x)
    (dx,) = input_vjp(dy)
    return dx, kernel_grad(x, dy, w.shape, strides, pads).astype(w.dtype)


_conv_nhwc.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_1x1(x, w, precision):
    """x [B, H, W, Cin] @ w [Cin, Cout] -> [B, H, W, Cout] (a 1x1 conv on the strided input).

    The backward is written out: with autodiff's einsum transpose, XLA:CPU gave the
    kernel gradient's dot a transposed copy of dy, fused with the recomputed BN / ReLU
    backward, in every 1x1 conv of ResNet-50 (16% of the R50-FPN train step).
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
    Products accumulate in float32. Large maps are done in a `lax.scan` over blocks of
    output rows (about `BLOCK_PIXELS` output pixels each, dy zero-padded to whole
    blocks), so that each block's shifted views stay in cache: 1.3-2x faster than
    whole-map slices for the R50 shapes on an AVX-512 Xeon (benchmarks/conv_bench.py).
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
    arrays, then one interleave, instead of a strided scatter per tap (2.7x faster
    forward + backward than autodiff of the slice max for the R18 stem's shape)."""
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
