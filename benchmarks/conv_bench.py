"""Conv kernel gradient and max-pool backward: jaxdet.ops.conv against XLA's own, same process.

  python benchmarks/conv_bench.py [--r50]

Per conv shape (B, H, W, Cin, Cout, k, stride): ms for XLA's kernel gradient (the
transpose `jax.vjp` derives) and for `conv.kernel_grad` (kh * kw slice matmuls), and
their ratio; then 3x3/2 max pooling forward + backward, `nn.max_pool` against
`conv.max_pool`. The shapes are the tiny shapes model's (batch 16, 128 px) and, with
--r50, ResNet-50-FPN's at 2 x 512 x 512. Each pair is also checked for equal values.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdet import platform as platform_lib  # noqa: E402
from jaxdet.ops import conv  # noqa: E402

TINY = [  # B, H, W, Cin, Cout, k, stride: ResNet-18/16 stages, FPN + head at 64 channels
    (16, 32, 32, 16, 16, 3, 1), (16, 32, 32, 16, 32, 3, 2), (16, 16, 16, 32, 32, 3, 1),
    (16, 8, 8, 64, 64, 3, 1), (16, 16, 16, 64, 64, 3, 1),
]
R50 = [  # ResNet-50 stages at 512 px, FPN output conv, head tower conv on P3
    (2, 128, 128, 64, 64, 3, 1), (2, 128, 128, 256, 64, 1, 1), (2, 64, 64, 128, 128, 3, 1),
    (2, 32, 32, 256, 256, 3, 1), (2, 16, 16, 512, 512, 3, 1), (2, 64, 64, 256, 256, 3, 1),
]


def timed(f, *args, n: int = 10) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def bench_conv(shape, rng) -> tuple[float, float]:
    b, h, w, cin, cout, k, s = shape
    pads = ((k // 2, k // 2),) * 2
    x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.1, jnp.float32)

    def xla_conv(kern_):
        return jax.lax.conv_general_dilated(x, kern_, (s, s), pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(xla_conv, kern)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    xla = jax.jit(lambda x_, dy_: jax.vjp(
        lambda k_: jax.lax.conv_general_dilated(x_, k_, (s, s), pads,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")),
        kern)[1](dy_)[0])
    ours = jax.jit(lambda x_, dy_: conv.kernel_grad(x_, dy_, kern.shape, (s, s), pads))
    ref, got = xla(x, dy), ours(x, dy)
    err = float(jnp.max(jnp.abs(ref - got)) / jnp.max(jnp.abs(ref)))
    assert err < 1e-4, (shape, err)
    return timed(xla, x, dy), timed(ours, x, dy)


def bench_1x1(x, kern, s, platform) -> tuple[float, float]:
    """Forward + both gradients of a 1x1 / s conv: XLA's conv against the matmul path."""
    def run(plat):
        def loss(x_, k_):
            y = conv.conv_general_dilated(x_, k_, (s, s), ((0, 0), (0, 0)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          platform=plat)
            return jnp.sum(y * y)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))
    xla, ours = run(platform_lib.DEFAULT), run(platform)
    for a, b in zip(xla(x, kern), ours(x, kern)):
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) < 1e-4
    return timed(xla, x, kern), timed(ours, x, kern)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--r50", action="store_true", help="also the ResNet-50 shapes")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # The CPU kernels as 'auto' picks them for this machine ('on' where the local
    # backend is not a CPU, so that the comparison still runs).
    plat = platform_lib.resolve(target="cpu", cpu_conv="auto")
    if not plat.cpu_conv:
        plat = platform_lib.resolve(target="cpu", cpu_conv="on")
    print(f"devices: {jax.devices()}; AVX-512: {platform_lib.cpu.has_avx512()}; {plat}")
    print(f"{'B, H, W, Cin, Cout, k, s':32s} {'XLA dW ms':>10s} {'slices ms':>10s} {'ratio':>6s}")
    for shape in TINY + (R50 if args.r50 else []):
        t_xla, t_ours = bench_conv(shape, rng)
        b, h, w, cin, cout, k, st = shape
        ho, wo = (h + 2 * (k // 2) - k) // st + 1, (w + 2 * (k // 2) - k) // st + 1
        use = "used" if plat.use_slices(cin, cout, b * ho * wo * cin * cout) else "not used"
        print(f"{str(shape):32s} {t_xla:10.2f} {t_ours:10.2f} {t_xla / t_ours:5.2f}x  {use}")

    for b, h, w, cin, cout, s in [(16, 32, 32, 16, 32, 2), (2, 128, 128, 256, 64, 1),
                                  (2, 64, 64, 128, 512, 1)][: 3 if args.r50 else 1]:
        x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
        kern = jnp.asarray(rng.normal(size=(1, 1, cin, cout)) * 0.1, jnp.float32)
        t_xla, t_ours = bench_1x1(x, kern, s, plat)
        print(f"1x1 conv fwd+bwd {(b, h, w, cin, cout, s)}: XLA conv {t_xla:.2f} ms, "
              f"matmul {t_ours:.2f} ms, {t_xla / t_ours:.2f}x")

    x = jnp.asarray(rng.normal(size=(16, 64, 64, 16)), jnp.float32)
    ref_pool = lambda x_: nn.max_pool(x_, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    assert bool(jnp.all(ref_pool(x) == conv.max_pool(x)))
    g_ref = jax.jit(jax.grad(lambda x_: jnp.sum(ref_pool(x_) ** 2)))
    g_ours = jax.jit(jax.grad(lambda x_: jnp.sum(conv.max_pool(x_) ** 2)))
    t_ref, t_ours = timed(g_ref, x), timed(g_ours, x)
    print(f"max pool 3x3/2 fwd+bwd [16, 64, 64, 16]: nn.max_pool {t_ref:.2f} ms, "
          f"slices {t_ours:.2f} ms, {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
