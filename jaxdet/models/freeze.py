"""Which parameters train: a boolean mask over the params pytree, and the optimizer wrapper.

All parameters, frozen or not, live in the single 'params' collection. Freezing is
decided here, by regular expressions over '/'-joined parameter paths
(e.g. 'backbone/layer1_0/bn1/mean'):

    patterns = resnet.frozen_patterns(frozen_stages=1, norm='frozen_bn', prefix='backbone')
    mask = freeze.trainable_mask(params, patterns)        # True = trainable
    tx = freeze.masked_optimizer(optax.sgd(0.01, momentum=0.9), mask)

Do not use `optax.masked(tx, mask)` for freezing: it passes the masked-out
updates (the raw gradients) through unchanged. `masked_optimizer` routes frozen
leaves to `optax.set_to_zero()` instead, so they get no update, no weight decay
and no optimizer state. The modules also `stop_gradient` what is frozen, so the
backward pass skips it (faster) and the gradient there is exactly zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import jax
import optax

PyTree = Any


def path_str(path: tuple) -> str:
    """'/'-joined names of a `jax.tree_util` key path ('backbone/conv1/kernel')."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return "/".join(parts)


def trainable_mask(params: PyTree, frozen_patterns: Iterable[str]) -> PyTree:
    """Pytree of bools like `params`: False where the path matches any pattern (`re.search`)."""
    regexes = [re.compile(p) for p in frozen_patterns]

    def trainable(path, _):
        s = path_str(path)
        return not any(r.search(s) for r in regexes)

    return jax.tree_util.tree_map_with_path(trainable, params)


def frozen_paths(params: PyTree, frozen_patterns: Iterable[str]) -> list[str]:
    """The paths `trainable_mask` freezes (for logging and tests)."""
    mask = trainable_mask(params, frozen_patterns)
    leaves = jax.tree_util.tree_leaves_with_path(mask)
    return [path_str(p) for p, keep in leaves if not keep]


def masked_optimizer(
    tx: optax.GradientTransformation, mask: PyTree
) -> optax.GradientTransformation:
    """`tx` on the trainable leaves (mask True); frozen leaves get a zero update."""
    labels = jax.tree_util.tree_map(lambda m: "trainable" if m else "frozen", mask)
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
