"""DevicePrefetch: batches on the mesh, sent one ahead, exact iterator state."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxdet.train import mesh as mesh_lib
from jaxdet.train.device_prefetch import DevicePrefetch


class Counter:
    """A checkpointable iterator of batches {'image': uint8 [2, 4, 4, 3] filled with i}."""

    def __init__(self, stop: int = 1000):
        self.i, self.stop, self.reads = 0, stop, 0

    def __next__(self):
        if self.i >= self.stop:
            raise StopIteration
        self.i += 1
        self.reads += 1
        return {"image": np.full((2, 4, 4, 3), self.i - 1, np.uint8)}

    def get_state(self):
        return self.i

    def set_state(self, state):
        self.i = state


def _value(batch) -> int:
    return int(np.asarray(batch["image"])[0, 0, 0, 0])


def test_batches_are_global_arrays_sent_one_ahead():
    mesh = mesh_lib.make_mesh(1)
    host = Counter()
    it = DevicePrefetch(host, mesh, size=1)
    first = next(it)
    assert isinstance(first["image"], jax.Array) and first["image"].dtype == np.uint8
    assert first["image"].sharding == mesh_lib.data_sharded(mesh)
    assert _value(first) == 0 and host.reads == 2  # batch 1 already sent
    assert it.get_state() == 1 and _value(next(it)) == 1 and it.get_state() == 2
    it.close()  # the host iterator continues after the last batch returned
    assert host.get_state() == 2 and _value(next(it)) == 2


def test_set_state_drops_what_was_sent_and_errors_come_in_order():
    it = DevicePrefetch(Counter(stop=3), mesh_lib.make_mesh(1), size=2)
    assert [_value(next(it)) for _ in range(2)] == [0, 1]
    it.set_state(0)
    assert [_value(b) for b in it] == [0, 1, 2]  # then StopIteration, after batch 2
    with pytest.raises(ValueError, match=">= 0"):
        DevicePrefetch(Counter(), mesh_lib.make_mesh(1), size=-1)
    plain = DevicePrefetch(Counter(stop=2), mesh_lib.make_mesh(1), size=0)
    assert [_value(b) for b in plain] == [0, 1]
