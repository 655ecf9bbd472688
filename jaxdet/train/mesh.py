"""Device mesh and data-parallel sharding (see docs/DESIGN.md, "Devices and hosts").

Data parallel = one `jax.jit` over a `Mesh(('data',))`: parameters replicated,
the batch sharded on its leading axis. This is what `pmap` used to do, in the
form current JAX recommends. Multi-host: call `maybe_initialize_distributed()`
before anything touches devices; each process feeds its own shard of the global
batch (`global_batch`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def maybe_initialize_distributed(force: bool = False) -> None:
    """`jax.distributed.initialize()` when launched as one of several processes.

    Detects the usual launchers (explicit JAX_COORDINATOR_ADDRESS, SLURM, TPU
    pods via `force=True`). A single-process run does nothing.
    """
    env = os.environ
    multi = force or "JAX_COORDINATOR_ADDRESS" in env or int(env.get("SLURM_NTASKS", "1")) > 1
    if not multi:
        return
    kwargs: dict[str, Any] = {}
    if "JAX_COORDINATOR_ADDRESS" in env:
        kwargs = dict(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    jax.distributed.initialize(**kwargs)
    logging.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all by default)."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices, only {len(devices)} available")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Returns the per-process batch size; errors clearly if it does not divide."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {n} devices of the mesh"
        )
    return global_batch_size // jax.process_count()


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's local numpy batch into global sharded arrays."""
    sharding = data_sharded(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree replicated on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
