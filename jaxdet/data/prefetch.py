"""Background prefetch of a checkpointable (grain) iterator.

With `num_workers=0` grain runs the transforms in the calling thread, so the train
loop waited for each batch (about 24 ms for the tiny config's 16 images of 128 px,
against a 107 ms step on a 2-core Xeon). `Prefetch` moves `next()` to one thread
that keeps up to `size` batches ready while the step runs.

Checkpoints stay exact: the thread records the wrapped iterator's state after each
batch it takes, and `get_state()` returns the state after the last batch handed to
the caller, so a restored run continues with the batch the interrupted one would
have seen next (the batches the thread had read ahead are read again).
`set_state` stops the thread, moves the wrapped iterator and starts over; an error
of the wrapped iterator (a corrupt image, StopIteration) is raised by the `next()`
that would have returned its batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Any


class Prefetch:
    """Iterator over `iterator`'s items, read ahead by up to `size` items in a thread.

    `iterator` needs `get_state()` / `set_state(state)` (a grain `DataLoader` iterator):
    this wrapper has the same methods (and `start_prefetch`, which grain's checkpoint
    handler calls after a restore), so it checkpoints like the wrapped iterator.
    """

    def __init__(self, iterator: Any, size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._iterator = iterator
        self._size = int(size)
        self._state = iterator.get_state()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, items: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                item = next(self._iterator)
                entry = (item, self._iterator.get_state(), None)
                while not stop.is_set():
                    try:
                        items.put(entry, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer
            items.put((None, None, error))

    def start_prefetch(self) -> None:
        """Starts the reading thread (a no-op while it runs)."""
        if self._thread is not None:
            return
        self._items: queue.Queue = queue.Queue(maxsize=self._size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._items, self._stop),
                                        name="jaxdet-prefetch", daemon=True)
        self._thread.start()

    def _halt(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():  # unblock a put, wait for a next() in flight
            try:
                self._items.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread = None

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        if self._error is not None:
            raise self._error
        self.start_prefetch()
        item, state, error = self._items.get()
        if error is not None:
            self._error = error
            self._thread.join()
            raise error
        self._state = state
        return item

    def get_state(self) -> Any:
        """The wrapped iterator's state after the last item returned by `next()`."""
        return self._state

    def set_state(self, state: Any) -> None:
        """Moves to `state` (of `get_state`); read-ahead items are dropped."""
        self._halt()
        self._iterator.set_state(state)
        self._state = state
        self._error = None

    def close(self) -> None:
        """Stops the thread (the iterator can be resumed with `next()` afterwards)."""
        self._halt()
        self._iterator.set_state(self._state)
