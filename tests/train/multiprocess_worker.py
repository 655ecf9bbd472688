"""One process of the two-process training run in tests/train/test_multiprocess.py.

    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        python -m tests.train.multiprocess_worker DATA_DIR WORKDIR OUT_JSON

Trains the tiny ATSS config for a few steps over both processes (one CPU device
each), evaluates it and writes what the test compares into OUT_JSON.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from jaxdet.train import loop
from jaxdet.train import mesh as mesh_lib
from tests.tiny import tiny_config


def main() -> None:
    data_dir, workdir, out = sys.argv[1:4]
    mesh_lib.maybe_initialize_distributed()
    config = tiny_config("atss", data_dir, num_steps=4, checkpoint_every=2)
    state, parts = loop.train(config, workdir)
    stats = loop.evaluate(config, parts.detector, state.params, parts.mesh, workdir,
                          step=int(state.step), draw=0)
    leaves = jax.tree_util.tree_leaves(state.params)
    param_sum = float(sum(np.sum(np.asarray(x.addressable_data(0), np.float64)) for x in leaves))
    with open(out, "w") as f:
        json.dump(dict(process=jax.process_index(), count=jax.process_count(),
                       devices=jax.device_count(), step=int(state.step), stats=stats,
                       param_sum=param_sum), f)


if __name__ == "__main__":
    main()
