"""Device mesh and data-parallel sharding (see docs/DESIGN.md, "Devices and hosts").

Data parallel = one `jax.jit` over a `Mesh(('data',))` built by `jax.make_mesh` (device
order following the interconnect; axis type `Auto`, i.e. XLA's sharding propagation):
parameters replicated, the batch sharded on its leading axis. This is what `pmap` used to
do, in the form current JAX recommends. The loop traces its steps inside
`jax.set_mesh(mesh)` (`InMesh`), so that per-image work runs per shard
(`jaxdet.ops.per_shard`). Multi-host: call `maybe_initialize_distributed()` before
anything touches devices; each process feeds its own shard of the global batch
(`global_batch`).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdet.ops.per_shard import DATA_AXIS

# PCI ids of TPU chips (Google's vendor id; the device ids of v3, v4, v5p, v5e, v6e, 7x and
# 0x0056, the list jax._src.hardware_utils keeps), read from sysfs to recognise a Cloud
# TPU VM before any backend starts.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
# Set by the launchers of several TPU hosts (GKE; multislice).
_TPU_POD_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")


def _sysfs(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def on_cloud_tpu() -> bool:
    """Whether this host has TPU chips on its PCI bus and libtpu installed (a Cloud TPU VM)."""
    import importlib.util

    chips = [p for p in glob.glob("/sys/bus/pci/devices/*/vendor")
             if _sysfs(p) == _GOOGLE_PCI_VENDOR
             and _sysfs(os.path.join(os.path.dirname(p), "device")) in _TPU_PCI_DEVICES]
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


def distributed_launch(env: dict | None = None) -> str | None:
    """Which launcher started this process as one of several ('coordinator', 'slurm',
    'tpu'), or None for a single-process run (`maybe_initialize_distributed`)."""
    env = os.environ if env is None else env
    if "JAX_COORDINATOR_ADDRESS" in env:
        return "coordinator"
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if any(env.get(k) for k in _TPU_POD_ENV) or (env is os.environ and on_cloud_tpu()):
        return "tpu"
    return None


def maybe_initialize_distributed(force: bool = False) -> None:
    """`jax.distributed.initialize()` when launched as one of several processes.

    Detects the launchers of `distributed_launch`: an explicit JAX_COORDINATOR_ADDRESS
    (with JAX_NUM_PROCESSES, JAX_PROCESS_ID), SLURM with several tasks, and Cloud TPU VMs
    (TPU chips on the PCI bus, or a TPU pod launcher's environment), where
    `jax.distributed.initialize()` finds the other hosts of the slice by itself (on a
    one-host TPU VM it sets up a one-process cluster). `force=True` (`--multihost`)
    initialises anywhere else. Any other single-process run does nothing.
    """
    env = os.environ
    if not (force or distributed_launch()):
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
    """`jax.make_mesh` of a 1-D `DATA_AXIS` over the first `num_devices` devices (all by
    default), axis type `Auto` where this JAX has axis types (its default is `Explicit`)."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices, only {len(devices)} available")
        devices = devices[:num_devices]
    axis_type = getattr(jax.sharding, "AxisType", None)
    kwargs = {} if axis_type is None else {"axis_types": (axis_type.Auto,)}
    if not hasattr(jax, "make_mesh"):
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices, **kwargs)


class InMesh:
    """A jitted function called, lowered and so traced inside `jax.set_mesh(mesh)` (where
    this JAX has it): the context `jaxdet.ops.per_shard` reads. `fn` is `.fn`."""

    def __init__(self, mesh: Mesh, fn: Callable[..., Any]):
        self.mesh, self.fn = mesh, fn
        functools.update_wrapper(self, fn)

    def _context(self) -> Any:
        setter = getattr(jax, "set_mesh", None)
        return setter(self.mesh) if setter is not None else contextlib.nullcontext()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._context():
            return self.fn(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        with self._context():
            return self.fn.lower(*args, **kwargs)


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
