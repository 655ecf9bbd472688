"""torchvision ResNet state dict -> Flax params, checked against an NCHW reference forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.torch_import import load_npz, resnet_params_from_torch

BLOCKS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


def fake_state_dict(depth, width, seed=0):
    """A torchvision-named ResNet state dict (OIHW convs, BN with running stats, fc)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, o, i, k):
        sd[name + ".weight"] = rng.normal(0, (2.0 / (i * k * k)) ** 0.5, (o, i, k, k))

    def bn(name, c):
        sd[name + ".weight"] = rng.uniform(0.5, 1.5, c)
        sd[name + ".bias"] = rng.normal(0, 0.1, c)
        sd[name + ".running_mean"] = rng.normal(0, 0.1, c)
        sd[name + ".running_var"] = rng.uniform(0.5, 1.5, c)
        sd[name + ".num_batches_tracked"] = np.array(7)

    kind, blocks = BLOCKS[depth]
    exp = 1 if kind == "basic" else 4
    conv("conv1", width, 3, 7)
    bn("bn1", width)
    inp = width
    for i, n in enumerate(blocks, start=1):
        planes = width * 2 ** (i - 1)
        for j in range(n):
            p = f"layer{i}.{j}"
            stride = 2 if (j == 0 and i > 1) else 1
            if kind == "basic":
                conv(p + ".conv1", planes, inp, 3)
                conv(p + ".conv2", planes, planes, 3)
                bn(p + ".bn1", planes)
                bn(p + ".bn2", planes)
            else:
                conv(p + ".conv1", planes, inp, 1)
                conv(p + ".conv2", planes, planes, 3)
                conv(p + ".conv3", planes * 4, planes, 1)
                for k, c in ((1, planes), (2, planes), (3, planes * 4)):
                    bn(f"{p}.bn{k}", c)
            if j == 0 and (stride != 1 or inp != planes * exp):
                conv(p + ".downsample.0", planes * exp, inp, 1)
                bn(p + ".downsample.1", planes * exp)
            inp = planes * exp
    sd["fc.weight"] = rng.normal(0, 0.01, (10, inp))
    sd["fc.bias"] = np.zeros(10)
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def torch_reference(sd, x_nchw, depth):
    """torchvision ResNet forward in eval mode, NCHW/OIHW, returns C3, C4, C5 (NCHW)."""

    def conv(x, name, stride, pad):
        return jax.lax.conv_general_dilated(
            x, jnp.asarray(sd[name + ".weight"]), (stride, stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"), precision="highest")

    def bn(x, name):
        g, b, m, v = (sd[f"{name}.{k}"][None, :, None, None]
                      for k in ("weight", "bias", "running_mean", "running_var"))
        return (x - m) / jnp.sqrt(v + 1e-5) * g + b

    relu = jax.nn.relu
    x = relu(bn(conv(x_nchw, "conv1", 2, 3), "bn1"))
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                              ((0, 0), (0, 0), (1, 1), (1, 1)))
    kind, blocks = BLOCKS[depth]
    outs = []
    for i, n in enumerate(blocks, start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            s = 2 if (j == 0 and i > 1) else 1
            if kind == "basic":
                y = relu(bn(conv(x, p + ".conv1", s, 1), p + ".bn1"))
                y = bn(conv(y, p + ".conv2", 1, 1), p + ".bn2")
            else:
                y = relu(bn(conv(x, p + ".conv1", 1, 0), p + ".bn1"))
                y = relu(bn(conv(y, p + ".conv2", s, 1), p + ".bn2"))
                y = bn(conv(y, p + ".conv3", 1, 0), p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                x = bn(conv(x, p + ".downsample.0", s, 0), p + ".downsample.1")
            x = relu(y + x)
        outs.append(x)
    return outs[1:]


def _template(depth, width, hw=(32, 32)):
    model = ResNet(depth=depth, base_width=width)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3)))
    return model, variables["params"]


@pytest.mark.parametrize("depth,width", [(18, 8), (50, 4)])
def test_import_fills_every_param_and_matches_torch_forward(depth, width):
    sd = fake_state_dict(depth, width)
    model, template = _template(depth, width)
    params = resnet_params_from_torch(sd, template)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
    assert shapes == jax.tree_util.tree_map(lambda a: a.shape, template)
    np.testing.assert_array_equal(params["layer2_0"]["downsample_conv"]["kernel"][0, 0],
                                  sd["layer2.0.downsample.0.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(params["bn1"]["var"], sd["bn1.running_var"])
    x = jax.random.normal(jax.random.key(2), (2, 45, 61, 3))  # odd sizes test the padding
    with jax.default_matmul_precision("highest"):
        ours = jax.jit(model.apply)({"params": params}, x)
    ref_fn = jax.jit(functools.partial(torch_reference, depth=depth))
    ref = ref_fn(sd, jnp.transpose(x, (0, 3, 1, 2)))
    for o, r in zip(ours, ref):
        r = jnp.transpose(r, (0, 2, 3, 1))
        np.testing.assert_allclose(o, r, atol=1e-5 * float(jnp.max(jnp.abs(r))), rtol=1e-5)


def test_import_from_npz_with_prefix(tmp_path):
    sd = fake_state_dict(18, 4)
    np.savez(tmp_path / "r18.npz", **{"backbone." + k: v for k, v in sd.items()})
    _, template = _template(18, 4)
    params = resnet_params_from_torch(load_npz(str(tmp_path / "r18.npz")), template,
                                      key_prefix="backbone.")
    np.testing.assert_array_equal(params["layer4_1"]["bn2"]["scale"], sd["layer4.1.bn2.weight"])


def test_import_errors_are_explicit():
    _, template = _template(18, 4)
    sd = fake_state_dict(18, 4)
    missing = dict(sd)
    del missing["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing.*layer3\.1\.bn2\.running_var"):
        resnet_params_from_torch(missing, template)
    extra = dict(sd, **{"layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected.*layer5\.0\.conv1\.weight"):
        resnet_params_from_torch(extra, template)
    resnet_params_from_torch(extra, template, strict=False)
    wrong = dict(sd, **{"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"shape mismatch.*conv1\.weight"):
        resnet_params_from_torch(wrong, template)
    with pytest.raises(ValueError, match="missing"):  # depth 50 template, depth 18 weights
        resnet_params_from_torch(sd, _template(50, 4)[1])
