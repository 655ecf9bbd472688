"""jaxdet.ops.conv: the slice-matmul kernel gradient and the slice max pool equal XLA's;
jaxdet.platform's CPU rules pick them."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import platform as platform_lib
from jaxdet.models import layers
from jaxdet.ops import conv
from jaxdet.platform import Platform

NHWC = ("NHWC", "HWIO", "NHWC")
SLICES = Platform(target="cpu", conv_kernel_grad="slices")  # every plain conv


@pytest.fixture
def fresh_resolve():
    """`platform.resolve` caches its values: clear around tests that patch the CPU facts."""
    platform_lib._resolve.cache_clear()
    yield
    platform_lib._resolve.cache_clear()


def _xla(x, w, s, pads):
    return jax.lax.conv_general_dilated(x, w, s, pads, dimension_numbers=NHWC)


@pytest.mark.parametrize(
    "b,h,w,cin,cout,k,s,pads",
    [
        (2, 9, 7, 3, 5, 3, (1, 1), ((1, 1), (1, 1))),
        (2, 9, 7, 4, 6, 3, (2, 2), ((1, 1), (1, 1))),  # odd size, stride 2
        (1, 8, 8, 2, 3, 1, (2, 2), ((0, 0), (0, 0))),  # 1x1 / 2 shortcut
        (2, 10, 11, 3, 4, 4, (1, 1), ((0, 0), (0, 0))),  # even kernel, VALID
        (1, 12, 12, 2, 2, 7, (2, 2), ((3, 3), (3, 3))),  # stem-like
        (1, 6, 7, 2, 2, 3, (2, 1), ((0, 2), (1, 0))),  # asymmetric pads and strides
        (1, 6, 6, 2, 2, 3, (1, 1), ((-1, 1), (1, -1))),  # negative padding = a crop
    ],
)
@pytest.mark.parametrize("blocked", [False, True])
def test_conv_value_and_grads_equal_xla(monkeypatch, blocked, b, h, w, cin, cout, k, s, pads):
    if blocked:  # kernel_grad's scan over blocks of output rows, for any size
        monkeypatch.setattr(conv, "LARGE_TAP_MACS", 0)
        monkeypatch.setattr(conv, "BLOCK_PIXELS", 2 * b * w)  # ~2 rows, a ragged last block
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
    ours = jax.jit(lambda x_, k_: conv.conv_general_dilated(
        x_, k_, s, pads, dimension_numbers=NHWC, platform=SLICES))
    y = _xla(x, kern, s, pads)
    np.testing.assert_allclose(ours(x, kern), y, rtol=1e-5, atol=1e-5)  # 1x1: a matmul
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    want = jax.vjp(lambda a, c: _xla(a, c, s, pads), x, kern)[1](dy)
    got = jax.jit(lambda a, c, d: jax.vjp(ours, a, c)[1](d))(x, kern, dy)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)


def test_kernel_grad_by_hand():
    # 1x1 input channel, 2x2 kernel, VALID: dW[i, j] = sum over outputs of x[o + (i, j)] dy[o].
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    dy = jnp.ones((1, 2, 2, 1))
    dw = conv.kernel_grad(x, dy, (2, 2, 1, 1), (1, 1), ((0, 0), (0, 0)))
    want = np.array([[0 + 1 + 3 + 4, 1 + 2 + 4 + 5], [3 + 4 + 6 + 7, 4 + 5 + 7 + 8]], np.float32)
    np.testing.assert_array_equal(dw[..., 0, 0], want)


def test_bf16_kernel_grad_keeps_dtype_and_is_close():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.bfloat16)
    kern = jnp.asarray(rng.normal(size=(3, 3, 16, 32)) * 0.1, jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    f = lambda k_: jnp.sum(conv.conv_general_dilated(
        x, k_, (1, 1), pads, dimension_numbers=NHWC, platform=SLICES).astype(jnp.float32))
    g = jax.grad(f)(kern)
    assert g.dtype == jnp.bfloat16
    ref = jax.grad(lambda k_: jnp.sum(_xla(x.astype(jnp.float32), k_, (1, 1), pads)))(
        kern.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(g, np.float32), ref, rtol=2e-2, atol=2e-1)


def test_other_convs_fall_back_to_xla():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)  # 2 groups
    kw = dict(dimension_numbers=NHWC, feature_group_count=2, rhs_dilation=(2, 2))
    ours = conv.conv_general_dilated(x, kern, (1, 1), "SAME", platform=SLICES, **kw)
    want = jax.lax.conv_general_dilated(x, kern, (1, 1), "SAME", **kw)
    np.testing.assert_array_equal(ours, want)


@pytest.mark.parametrize("plat", [Platform(), Platform(target="tpu"), Platform(target="gpu")])
def test_xla_platforms_are_plain_lax(plat):
    f = lambda x_, k_: conv.conv_general_dilated(x_, k_, (1, 1), ((0, 0), (0, 0)),
                                                 dimension_numbers=NHWC, platform=plat)
    hlo = jax.jit(f).lower(jnp.ones((1, 4, 4, 8)), jnp.ones((1, 1, 8, 8))).as_text()
    assert "convolution" in hlo and "dot_general" not in hlo


def _taps_macs(rhs, out):
    return out[0] * out[1] * out[2] * rhs[2] * rhs[3]


@pytest.mark.parametrize("avx512", [False, True])
def test_auto_uses_xla_for_small_convs(monkeypatch, fresh_resolve, avx512):
    monkeypatch.setattr(platform_lib.cpu, "has_avx512", lambda: avx512)
    # ynnpack 'on': the AVX2 rule with XLA's YNNPACK fusions
    p = platform_lib.resolve(target="cpu", cpu_conv="auto", ynnpack="on")
    use = lambda rhs, out: p.use_slices(rhs[2], rhs[3], _taps_macs(rhs, out))
    tiny_out, r50_out = (16, 16, 16, 32), (2, 64, 64, 128)
    assert not use((3, 3, 16, 16), tiny_out)
    assert use((3, 3, 32, 32), tiny_out) == (not avx512)
    assert use((3, 3, 128, 128), r50_out)
    assert not platform_lib.resolve(target="cpu", cpu_conv="off").cpu_conv
    assert platform_lib.resolve(target="cpu", cpu_conv="on").use_slices(1, 1, 1)
    for target in ("gpu", "tpu"):
        assert platform_lib.resolve(target=target, cpu_conv="on") == Platform(target=target)
    with pytest.raises(ValueError, match="cpu_conv"):
        platform_lib.resolve(target="cpu", cpu_conv="fast")
    with pytest.raises(ValueError, match="CPU targets"):
        Platform(target="tpu", conv_kernel_grad="slices")


def test_flax_conv_layer_under_vmap_matches_plain_nn_conv():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(3, 2, 10, 10, 8)), jnp.float32)  # vmapped over axis 0
    ours = layers.conv(16, 3, 2, use_bias=True, dtype=jnp.float32,
                       kernel_init=nn.initializers.normal(1.0), platform=SLICES)
    plain = nn.Conv(16, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                    kernel_init=nn.initializers.normal(1.0))
    params = ours.init(jax.random.PRNGKey(0), x[0])
    assert jax.tree.structure(params) == jax.tree.structure(plain.init(jax.random.PRNGKey(0),
                                                                       x[0]))

    def loss(module, p):
        return jnp.sum(jax.vmap(lambda xi: module.apply(p, xi))(x) ** 2)

    g_ours = jax.jit(jax.grad(lambda p: loss(ours, p)))(params)
    g_plain = jax.grad(lambda p: loss(plain, p))(params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("hw", [(9, 8), (16, 16), (5, 7)])
def test_max_pool_equals_nn_max_pool(hw):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, *hw, 3)), jnp.float32)  # no ties
    ref = lambda x_: nn.max_pool(x_, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(conv.max_pool(x), ref(x))
    g = jax.jit(jax.grad(lambda x_: jnp.sum(conv.max_pool(x_) ** 3)))(x)
    np.testing.assert_array_equal(g, jax.grad(lambda x_: jnp.sum(ref(x_) ** 3))(x))


def test_max_pool_by_hand_and_ties_go_to_the_first_max():
    x = jnp.array([[1.0, 2, 0, 5], [3, 4, 0, 0], [0, 0, 7, 7], [0, 0, 7, 7]])[None, :, :, None]
    np.testing.assert_array_equal(conv.max_pool(x)[0, :, :, 0], [[4, 5], [4, 7]])
    g = jax.grad(lambda x_: jnp.sum(conv.max_pool(x_)))(x)
    assert float(jnp.sum(g)) == pytest.approx(4.0)  # one unit of gradient per output
    assert float(g[0, 1, 1, 0]) == pytest.approx(2.0)  # the 4 is the max of two windows
    # the four tied 7s: the first in row-major order takes the gradient, as nn.max_pool
    np.testing.assert_array_equal(g[0, 2:, 2:, 0], [[1, 0], [0, 0]])


@pytest.mark.parametrize("window,stride,padding,hw", [(3, 2, 1, (12, 10)), (3, 2, 1, (7, 9)),
                                                      (2, 2, 0, (8, 6)), (3, 1, 1, (6, 5))])
def test_max_pool_gradient_equals_nn_max_pool_with_ties(window, stride, padding, hw):
    rng = np.random.default_rng(5)
    x = jnp.asarray(np.maximum(rng.normal(size=(2, *hw, 4)), 0.0), jnp.float32)  # ReLU ties
    x = x.at[:, 1].set(1.0)
    ref = lambda x_: nn.max_pool(x_, (window, window), strides=(stride, stride),
                                 padding=((padding, padding), (padding, padding)))
    ours = lambda x_: conv.max_pool(x_, window, stride, padding)
    np.testing.assert_array_equal(ours(x), ref(x))
    w = jnp.asarray(rng.normal(size=ref(x).shape), jnp.float32)
    g = jax.jit(jax.grad(lambda x_: jnp.sum(ours(x_) * w)))(x)
    want = jax.grad(lambda x_: jnp.sum(ref(x_) * w))(x)
    np.testing.assert_array_equal(g != 0, want != 0)  # the same entries take the gradient
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)  # up to summation order


@pytest.mark.parametrize("mode,avx512,amd,x86,want", [
    ("auto", False, True, True, True),    # the AVX2 EPYC case: off
    ("auto", True, True, True, True),     # the AVX-512 EPYC (Zen 4): off
    ("auto", True, False, True, False),   # Intel AVX-512: XLA's default
    ("auto", False, False, True, True),   # Intel without AVX-512: off
    ("auto", False, False, False, False),  # ARM etc.: XLA's default
    ("off", True, False, True, True),
    ("on", False, True, True, False),
])
def test_ynnpack_switch(monkeypatch, fresh_resolve, mode, avx512, amd, x86, want):
    monkeypatch.setattr(platform_lib.cpu, "has_avx512", lambda: avx512)
    monkeypatch.setattr(platform_lib.cpu, "is_amd", lambda: amd)
    monkeypatch.setattr(platform_lib.cpu, "is_x86", lambda: x86)
    monkeypatch.setattr(platform_lib.cpu, "ynn_option_accepted", lambda: True)
    p = platform_lib.resolve(target="cpu", cpu_conv="auto", ynnpack=mode)
    assert p.ynnpack == (not want)
    assert p.compiler_options() == ({"xla_cpu_experimental_ynn_fusion_type": ""}
                                    if want else None)
    # with YNNPACK off, small convs keep XLA's kernel gradient (the AVX-512 rule)
    assert p.use_slices(32, 32, _taps_macs((3, 3, 32, 32), (16, 16, 16, 32))) == (
        not avx512 and not want)
    # other targets: no CPU option, whatever the setting
    assert platform_lib.resolve(target="tpu", ynnpack=mode).compiler_options() is None
    with pytest.raises(ValueError, match="ynnpack"):
        platform_lib.resolve(target="cpu", ynnpack="sometimes")


def test_ynnpack_off_option_gives_plain_xla_convs(fresh_resolve):
    """The option is accepted by this jaxlib (or the switch stays off), gives the same
    values, and the compiled conv has no YNNPACK fusion."""
    opts = platform_lib.resolve(target="cpu", ynnpack="off").compiler_options()
    if jax.default_backend() != "cpu" or not platform_lib.cpu.ynn_option_accepted():
        assert opts is None
        return
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 32)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 32, 32)), jnp.float32)
    f = lambda x_, k_: jnp.sum(conv.conv_general_dilated(
        x_, k_, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC) ** 2)
    g = jax.value_and_grad(f, argnums=(0, 1))
    off = jax.jit(g, compiler_options=opts).lower(x, k).compile()
    assert "%ynn_fusion" not in off.as_text()
    on = jax.jit(g)(x, k)
    for a, b in zip(jax.tree.leaves(off(x, k)), jax.tree.leaves(on)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_in_conditional_platform_takes_every_plain_conv_and_keeps_gradients():
    """`Platform.in_conditional` drops the slice thresholds (CPU kernels only), and a conv
    inside `lax.switch` under `grad` gives XLA's gradients through it."""
    thresholds = Platform(target="cpu", conv_kernel_grad="slices", slices_min_cin_cout=512,
                          slices_min_tap_macs=1 << 26)
    branch = thresholds.in_conditional()
    assert branch.use_slices(2, 3, 1) and not thresholds.use_slices(2, 3, 1)
    assert Platform(target="tpu").in_conditional() == Platform(target="tpu")
    assert Platform().in_conditional() == Platform()  # XLA's convs stay XLA's
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 6, 5, 3)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    pads = ((1, 1), (1, 1))

    def loss(fn, k_, x_, i):
        branches = [lambda a, b: jnp.sum(fn(b, a) ** 2), lambda a, b: jnp.sum(fn(b[:2], a) ** 2)]
        return jax.lax.switch(i, branches, k_, x_)

    ours = lambda a, c: conv.conv_general_dilated(  # noqa: E731
        a, c, (1, 1), pads, dimension_numbers=NHWC, platform=branch)
    xla = lambda a, c: _xla(a, c, (1, 1), pads)  # noqa: E731
    want_fn = jax.jit(jax.grad(functools.partial(loss, xla), argnums=(0, 1)))
    got_fn = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1)))
    for i in (0, 1):  # a traced branch index: a real conditional
        want, got = want_fn(kern, x, jnp.int32(i)), got_fn(kern, x, jnp.int32(i))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
