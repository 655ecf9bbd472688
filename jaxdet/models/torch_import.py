"""Import torchvision ResNet weights into `jaxdet.models.backbones.resnet.ResNet` params.

Export once on a machine with torch (no torch needed here):

    import numpy as np, torchvision
    sd = torchvision.models.resnet50(weights="IMAGENET1K_V1").state_dict()
    np.savez("resnet50.npz", **{k: v.numpy() for k, v in sd.items()})

then

    template = ResNet(depth=50).init(rng, jnp.zeros((1, 64, 64, 3)))["params"]
    params = torch_import.resnet_params_from_torch(torch_import.load_npz("resnet50.npz"),
                                                   template)

Mapping (Flax path -> torch key): 'layer{i}_{j}' -> 'layer{i}.{j}', 'downsample_conv' ->
'downsample.0', 'downsample_bn' -> 'downsample.1'; leaves 'kernel' -> 'weight' (OIHW ->
HWIO), norm 'scale' / 'bias' / 'mean' / 'var' -> 'weight' / 'bias' / 'running_mean' /
'running_var'. 'fc.*' (classifier) and '*.num_batches_tracked' are ignored.
The ImageNet weights expect RGB in [0, 1] normalised by mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225) (mmdetection's 0-255 mean 123.675... / std 58.395... is the same).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

IGNORED = re.compile(r"(^fc\.|(^|\.)num_batches_tracked$)")
_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
_MODULE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def torch_key(path: tuple[str, ...]) -> str:
    """Torch state-dict key of a Flax ResNet param path, e.g.
    ('layer1_0', 'downsample_conv', 'kernel') -> 'layer1.0.downsample.0.weight'."""
    *modules, leaf = path
    names = [_MODULE.get(m, re.sub(r"^(layer\d+)_(\d+)$", r"\1.\2", m)) for m in modules]
    if leaf not in _LEAF:
        raise ValueError(f"no torch name for parameter {'/'.join(path)}")
    return ".".join(names + [_LEAF[leaf]])


def _to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    return value.transpose(2, 3, 1, 0) if leaf == "kernel" else value  # OIHW -> HWIO


def resnet_params_from_torch(
    state_dict: Mapping[str, Any],
    template: Mapping[str, Any],
    *,
    key_prefix: str = "",
    strict: bool = True,
) -> dict:
    """Fills every leaf of `template` (the ResNet's params, arrays or ShapeDtypeStructs)
    from a torchvision state dict of numpy arrays.

    Args:
      state_dict: torch key -> array (e.g. `load_npz(path)`).
      template: the ResNet params tree giving structure and shapes (depth, width).
      key_prefix: prepended to every torch key (e.g. 'backbone.' for an mmdet checkpoint).
      strict: raise on state-dict keys that fill nothing (other than fc / num_batches_tracked).
    Returns: a params tree like `template` with float32 numpy leaves.
    Raises: ValueError naming every missing key, shape mismatch and (strict) unused key.
    """
    flat = traverse_util.flatten_dict(dict(template))
    out, missing, bad_shape, used = {}, [], [], set()
    for path, ref in flat.items():
        key = key_prefix + torch_key(path)
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = _to_flax(path[-1], state_dict[key])
        if tuple(value.shape) != tuple(ref.shape):
            bad_shape.append(
                f"{key}: torch {tuple(np.shape(state_dict[key]))} -> "
                f"{tuple(value.shape)}, expected {tuple(ref.shape)} at "
                f"{'/'.join(path)}"
            )
        out[path] = value
    unused = sorted(
        k
        for k in state_dict
        if k not in used and k.startswith(key_prefix) and not IGNORED.search(k[len(key_prefix) :])
    )
    errors = []
    if missing:
        errors.append(f"{len(missing)} missing key(s): {missing}")
    if bad_shape:
        errors.append(f"{len(bad_shape)} shape mismatch(es): {bad_shape}")
    if strict and unused:
        errors.append(f"{len(unused)} unexpected key(s): {unused}")
    if errors:
        raise ValueError("torchvision ResNet import failed: " + "; ".join(errors))
    return traverse_util.unflatten_dict(out)


def load_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file as a dict (a state dict saved with `np.savez`)."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
