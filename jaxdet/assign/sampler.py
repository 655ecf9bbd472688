"""Random positive/negative sampling with a static output size (mmdetection `RandomSampler`).

`balanced_sample` draws num_pos = min(#positives, int(num * pos_fraction))
positives uniformly at random without replacement, then min(#negatives,
num - num_pos) negatives likewise (mmdet's `neg_pos_ub=-1`: no bound relative to
the positives). Each entry gets an independent uniform key and the k largest keys
among the eligible entries are taken (`lax.top_k`), which draws a uniformly random
subset of each set. Entries that are neither positive nor negative (ignored
priors, padding) are never drawn; an entry that is both counts as positive.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


def _draw(keys: Array, eligible: Array, k: int) -> tuple[Array, Array]:
    """Indices [k] of the k largest keys among eligible entries, and how many there are."""
    masked = jnp.where(eligible, keys, -1.0)  # keys are in [0, 1)
    _, idx = lax.top_k(masked, k)
    count = jnp.minimum(jnp.sum(eligible, dtype=jnp.int32), k)
    return idx.astype(jnp.int32), count


@functools.partial(jax.jit, static_argnames=("num", "pos_fraction"))
def balanced_sample(
    rng: Array,
    positive: Array,
    negative: Array,
    *,
    num: int,
    pos_fraction: float,
) -> tuple[Array, Array]:
    """Samples `num` entries of one image: positives first, then negatives, then padding.

    rng: a PRNG key; positive, negative: [N] bool (an entry in both is a positive).
    num: static sample size (mmdet `num`: RPN 256, R-CNN 512).
    pos_fraction: at most int(num * pos_fraction) positives (RPN 0.5, R-CNN 0.25).

    Returns (indices [num] int32, valid [num] bool): slots [0, num_pos) hold the
    drawn positives, the next num_neg slots the drawn negatives (each group in a
    random order), the rest index 0 with valid False. The same rng gives the same
    sample. Jitted with num and pos_fraction static; vmap it (with one key per
    image) over a batch.
    """
    positive = jnp.asarray(positive, bool)
    negative = jnp.asarray(negative, bool) & ~positive
    n = positive.shape[0]
    max_pos = int(num * pos_fraction)
    if n == 0 or num == 0:
        return jnp.zeros((num,), jnp.int32), jnp.zeros((num,), bool)
    pos_key, neg_key = jax.random.split(rng)
    pos_idx, num_pos = _draw(jax.random.uniform(pos_key, (n,)), positive, min(max_pos, n))
    neg_idx, num_neg = _draw(jax.random.uniform(neg_key, (n,)), negative, min(num, n))
    num_neg = jnp.minimum(num_neg, num - num_pos)

    slot = jnp.arange(num, dtype=jnp.int32)
    is_pos = slot < num_pos
    is_neg = ~is_pos & (slot < num_pos + num_neg)
    if pos_idx.shape[0]:
        from_pos = pos_idx[jnp.clip(slot, 0, pos_idx.shape[0] - 1)]
    else:
        from_pos = jnp.zeros((num,), jnp.int32)
    from_neg = neg_idx[jnp.clip(slot - num_pos, 0, neg_idx.shape[0] - 1)]
    indices = jnp.where(is_pos, from_pos, jnp.where(is_neg, from_neg, 0))
    return indices, is_pos | is_neg
