"""jaxdet command line.

  python -m jaxdet.main --config=configs/atss/atss_tiny_shapes.py --workdir=runs/demo
  python -m jaxdet.main --config=configs/atss/atss_r50_fpn_1x_coco.py \
      --config.data.coco_dir=/path/to/coco --workdir=runs/atss
  python -m jaxdet.main --config=... --workdir=runs/atss --mode=eval [--step=N]

Every config field can be overridden (`--config.train.batch_size=8`); unknown
fields are an error. Restarting with the same workdir resumes from the last
checkpoint. Multi-process (TPU pods, SLURM, JAX_COORDINATOR_ADDRESS): each
process runs the same command; `jax.distributed.initialize()` is called first.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (then eval) or eval only.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --mode=eval (default: latest).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Force jax.distributed.initialize().")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (orbax's per-save lines, tfds) drown the progress lines;
        # `--verbosity=0` brings them back.
        absl_logging.set_verbosity(absl_logging.WARNING)
    from jaxdet.train import mesh as mesh_lib

    mesh_lib.maybe_initialize_distributed(force=_MULTIHOST.value)
    import jax

    from jaxdet.eval import coco_eval
    from jaxdet.train import loop

    config = _CONFIG.value
    workdir = os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    logging.info("devices: %s", jax.devices())
    try:
        if _MODE.value == "train":
            stats = loop.train_and_evaluate(config, workdir)
        else:
            stats = loop.evaluate_checkpoint(config, workdir, _STEP.value)
    except loop.NonFiniteLossError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 3
    if jax.process_index() == 0 and stats:
        print(coco_eval.format_stats(stats))
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
