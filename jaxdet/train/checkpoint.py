"""Checkpoints with orbax: train state + data-iterator state, atomic, keep last k.

orbax writes each step into a temporary directory and renames it when complete
(atomic: a killed save leaves no half checkpoint that `latest_step` would pick).
The grain iterator state is saved beside the train state so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class _DropUnrestoredItemWarning(logging.Filter):
    """orbax warns that the 'data' item (the iterator state) is not restored, by design here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'Item "data" was found in the checkpoint' not in record.getMessage()


@contextlib.contextmanager
def _quiet_unrestored_data():
    logger, drop = logging.getLogger("absl"), _DropUnrestoredItemWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with items 'state' and 'data'."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None = None, force=False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(
        self, abstract_state: Any, data_iterator: Any | None = None, step: int | None = None
    ) -> Any:
        """Restores `step` (default latest) into the structure/shardings of
        `abstract_state` (a state or `jax.ShapeDtypeStruct` tree); the data
        iterator, when given, is restored in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_params(self, step: int | None = None, sharding: Any | None = None) -> Any:
        """Restores the train state of `step` (default latest) without a template, for
        eval: shapes and dtypes come from the checkpoint's metadata, and every array is
        placed with `sharding` (default: the first local device), so a checkpoint saved
        on another topology (a pod, several processes or devices) restores here."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        reader = ocp.CheckpointManager(
            self.directory, item_handlers={"state": ocp.StandardCheckpointHandler()}
        )
        with _quiet_unrestored_data():
            meta = reader.item_metadata(step)["state"]
        reader.close()
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def target(leaf):
            if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
                return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)
            return leaf

        abstract = jax.tree_util.tree_map(target, meta)
        with _quiet_unrestored_data():
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
