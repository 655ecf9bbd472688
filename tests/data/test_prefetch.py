"""jaxdet.data.prefetch: same items and checkpoint states as the wrapped iterator."""

from __future__ import annotations

import pytest

from jaxdet.data.prefetch import Prefetch


class Counter:
    """A checkpointable iterator: items 0, 1, ... up to `stop`, `fail_at` raises."""

    def __init__(self, stop=None, fail_at=None):
        self.i, self.stop, self.fail_at = 0, stop, fail_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.fail_at is not None and self.i == self.fail_at:
            raise ValueError(f"corrupt item {self.i}")
        if self.stop is not None and self.i >= self.stop:
            raise StopIteration
        self.i += 1
        return self.i - 1

    def get_state(self):
        return str(self.i).encode()

    def set_state(self, state):
        self.i = int(state.decode())


@pytest.mark.parametrize("size", [1, 2, 5])
def test_same_items_and_states_as_the_wrapped_iterator(size):
    it = Prefetch(Counter(), size)
    assert it.get_state() == b"0"
    for k in range(7):
        assert next(it) == k
        assert it.get_state() == str(k + 1).encode()  # not the read-ahead position
    state = it.get_state()
    later = [next(it) for _ in range(3)]
    it.set_state(state)  # a restore: continues with the batch after the saved one
    assert [next(it) for _ in range(3)] == later == [7, 8, 9]
    it.close()
    assert next(it) == 10  # close rewinds the read-ahead; iteration can go on
    it.close()


def test_errors_and_the_end_reach_the_consumer_in_order():
    it = Prefetch(Counter(fail_at=3), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="corrupt item 3"):
        next(it)
    with pytest.raises(ValueError, match="corrupt item 3"):  # stays raised
        next(it)
    done = Prefetch(Counter(stop=2), 4)
    assert list(done) == [0, 1]
    with pytest.raises(ValueError, match=">= 1"):
        Prefetch(Counter(), 0)


def test_orbax_checkpoint_round_trip(tmp_path):
    """jaxdet's Checkpointer (grain's handler: get_state, then set_state + start_prefetch)."""
    import numpy as np

    from jaxdet.train.checkpoint import Checkpointer

    it = Prefetch(Counter(), 3)
    [next(it) for _ in range(4)]
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(4, {"x": np.zeros(2, np.float32)}, it)
    expected = [next(it) for _ in range(2)]
    fresh = Prefetch(Counter(), 3)
    ckpt.restore({"x": np.zeros(2, np.float32)}, fresh)
    assert [next(fresh) for _ in range(2)] == expected == [4, 5]
    ckpt.manager.close()
