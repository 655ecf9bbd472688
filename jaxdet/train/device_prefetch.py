"""Device prefetch: the next global batch is sent to the devices while the step runs.

`DevicePrefetch(iterator, mesh, size)` wraps the host iterator of the train pipeline
(numpy batches of this process's share, checkpointable): `next()` returns a global batch
already placed on the mesh (`mesh.global_batch`: sharded on `DATA_AXIS`) and, before
returning, sends the following `size` batches with `jax.device_put`. Transfers are
asynchronous, so with `size=1` batch k + 1 crosses to the devices while the jitted step
of batch k runs, and the next step finds its input there.

Checkpoints stay exact, as with the host `Prefetch`: each batch sent carries the host
iterator's state after it, and `get_state()` returns the state after the last batch
handed to the caller; `set_state` drops the batches sent ahead. An error of the host
iterator is raised by the `next()` that would have returned its batch.
"""

from __future__ import annotations

import collections
from typing import Any

from jax.sharding import Mesh

from jaxdet.train import mesh as mesh_lib


class DevicePrefetch:
    """Iterator of global device batches, the next `size` of them already sent (module
    docstring). `get_state` / `set_state` / `start_prefetch` checkpoint it like the host
    iterator; `close()` drops what was sent ahead and moves the host iterator back to
    the batch after the last one returned."""

    def __init__(self, iterator: Any, mesh: Mesh, size: int = 1):
        if size < 0:
            raise ValueError(f"device prefetch size must be >= 0, got {size}")
        self._iterator, self._mesh, self._size = iterator, mesh, int(size)
        self._ahead: collections.deque = collections.deque()
        self._state = iterator.get_state()
        self._error: BaseException | None = None

    def _send(self) -> None:
        """Reads one host batch and starts its transfer (an error is kept for later)."""
        try:
            local = next(self._iterator)
        except BaseException as error:  # noqa: BLE001 -- raised by the matching next()
            self._error = error
            return
        batch = mesh_lib.global_batch(local, self._mesh)
        self._ahead.append((batch, self._iterator.get_state()))

    def __iter__(self) -> DevicePrefetch:
        return self

    def __next__(self) -> dict:
        if not self._ahead and self._error is None:
            self._send()
        if not self._ahead:
            error, self._error = self._error, None
            raise error
        batch, self._state = self._ahead.popleft()
        while len(self._ahead) < self._size and self._error is None:
            self._send()
        return batch

    def get_state(self) -> Any:
        """The host iterator's state after the last batch returned by `next()`."""
        return self._state

    def set_state(self, state: Any) -> None:
        """Moves to `state` (of `get_state`); batches sent ahead are dropped."""
        self._ahead.clear()
        self._error = None
        self._iterator.set_state(state)
        self._state = state

    def start_prefetch(self) -> None:
        """The host iterator's `start_prefetch` (grain's restore calls it), if it has one."""
        start = getattr(self._iterator, "start_prefetch", None)
        if start is not None:
            start()

    def close(self) -> None:
        """Drops the batches sent ahead; the host iterator continues after the last batch
        returned."""
        if self._ahead or self._error is not None:
            self.set_state(self._state)
