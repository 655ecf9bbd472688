"""Run a batched function per data shard, so that XLA never gathers the global batch.

Under `jax.jit` over a data-parallel mesh, XLA's sharding propagation does not always
keep the batch axis sharded through per-image work: a batched `lax.top_k` (the ATSS
assigner's, the RPN's, the samplers') was partitioned by all-gathering its `[B, ...]`
operand onto every device, and RoIAlign by gathering the features of all images.
`per_shard(fn, *args)` runs `fn` under `jax.shard_map` over the context mesh's
`DATA_AXIS`, each device on its own rows of the leading axis, when the function is traced
inside `jax.set_mesh(mesh)` (what `jaxdet.train.loop` does) and that axis has more than
one device; otherwise it calls `fn(*args)`. `fn` must treat the rows of its arguments
independently (a `jax.vmap`-ed per-image function does): then the result is the same on
any mesh. Every leaf of `args` and of the result has the batch as its leading axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec

# The mesh axis the batch is sharded over (`jaxdet.train.mesh`).
DATA_AXIS = "data"


def data_axis_size() -> int:
    """Devices on `DATA_AXIS` of the mesh in context (1 without one)."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    if mesh is None or getattr(mesh, "empty", True) or DATA_AXIS not in mesh.axis_names:
        return 1
    return int(dict(zip(mesh.axis_names, mesh.axis_sizes))[DATA_AXIS])


def per_shard(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, run on each device's rows of the leading axis (module docstring)."""
    if data_axis_size() <= 1 or not hasattr(jax, "shard_map"):
        return fn(*args)
    spec = PartitionSpec(DATA_AXIS)
    mesh = jax.sharding.get_abstract_mesh()
    # check_vma=False: loops whose carries start from constants (the assigners' folds over
    # GT rows) would otherwise need every initial carry marked as varying over the shards.
    return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(*args)
