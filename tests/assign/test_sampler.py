"""jaxdet.assign.sampler.balanced_sample: counts, order, eligibility, rng, jit(vmap)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxdet.assign.sampler import balanced_sample

NUM, FRACTION = 8, 0.25  # at most 2 positives


def _labels(n_pos, n_neg, n_ignore, seed=0):
    """[N] positive / negative masks, shuffled, N = n_pos + n_neg + n_ignore."""
    kind = np.array([1] * n_pos + [0] * n_neg + [-1] * n_ignore)
    np.random.default_rng(seed).shuffle(kind)
    return kind == 1, kind == 0


@functools.cache
def _batched():
    return jax.jit(jax.vmap(functools.partial(balanced_sample, num=NUM, pos_fraction=FRACTION)))


def _check(indices, valid, positive, negative, n_pos, n_neg):
    indices, valid = np.asarray(indices), np.asarray(valid)
    assert indices.dtype == np.int32 and indices.shape == valid.shape == (NUM,)
    assert valid.tolist() == [True] * (n_pos + n_neg) + [False] * (NUM - n_pos - n_neg)
    assert positive[indices[:n_pos]].all()
    assert negative[indices[n_pos:n_pos + n_neg]].all()
    assert len(set(indices[valid].tolist())) == n_pos + n_neg  # without replacement
    assert np.all(indices[~valid] == 0)


def test_counts_order_and_eligibility():
    cases = [
        ((5, 20, 7), (2, 6)),  # enough of both: 2 positives, 6 negatives
        ((1, 20, 11), (1, 7)),  # one positive: the negatives fill the rest
        ((5, 3, 24), (2, 3)),  # too few negatives: padding
        ((0, 0, 32), (0, 0)),  # only ignored entries: nothing sampled
    ]
    rng = jax.random.split(jax.random.PRNGKey(0), 2)
    for (counts_a, expect_a), (counts_b, expect_b) in zip(cases[::2], cases[1::2]):
        pa, na = _labels(*counts_a)
        pb, nb = _labels(*counts_b, seed=1)
        idx, valid = _batched()(rng, np.stack([pa, pb]), np.stack([na, nb]))
        _check(idx[0], valid[0], pa, na, *expect_a)
        _check(idx[1], valid[1], pb, nb, *expect_b)


def test_rng_determines_the_subset_and_subsets_are_uniform():
    pos, neg = _labels(6, 20, 6)
    key = jax.random.PRNGKey(3)
    same = _batched()(np.stack([key, key]), np.stack([pos, pos]), np.stack([neg, neg]))
    np.testing.assert_array_equal(same[0][0], same[0][1])
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    diff = _batched()(keys, np.stack([pos, pos]), np.stack([neg, neg]))
    assert set(np.asarray(diff[0][0]).tolist()) != set(np.asarray(diff[0][1]).tolist())
    # Over many keys every positive is drawn about 2/6 of the time.
    single = jax.jit(jax.vmap(functools.partial(balanced_sample, num=NUM, pos_fraction=FRACTION),
                              in_axes=(0, None, None)))
    idx, valid = single(jax.random.split(jax.random.PRNGKey(5), 600), pos, neg)
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert valid.all()
    freq = np.bincount(idx[:, :2].ravel(), minlength=len(pos))[pos] / 600
    np.testing.assert_allclose(freq, 2 / 6, atol=0.08)
    freq = np.bincount(idx[:, 2:].ravel(), minlength=len(pos))[neg] / 600
    np.testing.assert_allclose(freq, 6 / 20, atol=0.08)


def test_small_and_empty_inputs():
    # Fewer entries than num, and N = 0.
    pos, neg = np.array([True, False, False]), np.array([False, True, False])
    idx, valid = balanced_sample(jax.random.PRNGKey(0), pos, neg, num=NUM, pos_fraction=FRACTION)
    assert np.asarray(valid).tolist() == [True, True] + [False] * 6
    assert np.asarray(idx)[:2].tolist() == [0, 1]
    empty = np.zeros((0,), bool)
    idx, valid = balanced_sample(jax.random.PRNGKey(0), empty, empty, num=4, pos_fraction=0.5)
    assert np.asarray(idx).shape == (4,) and not np.asarray(valid).any()
