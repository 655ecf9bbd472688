"""jaxdet command line.

  python -m jaxdet.main --config=configs/atss/atss_tiny_shapes.py --workdir=runs/demo
  python -m jaxdet.main --config=configs/atss/atss_r50_fpn_1x_coco.py \
      --config.data.coco_dir=/path/to/coco --workdir=runs/atss
  python -m jaxdet.main --config=... --workdir=runs/atss --mode=eval [--step=N]
  python -m jaxdet.main --workdir=runs/atss --mode=predict --images=DIR_OR_GLOB \
      [--config=...] [--step=N] [--score_thr=0.3] [--out=DIR]

Training writes the config to `workdir/config.json` (num_classes=0, "from the
dataset", resolved), which `--mode=predict` reads when no --config is given.

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
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (then eval), eval only, or predict on --images.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for eval/predict (default: latest).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Force jax.distributed.initialize().")
_IMAGES = flags.DEFINE_string("images", None, "predict: an image folder, a glob or one file.")
_SCORE_THR = flags.DEFINE_float("score_thr", 0.3, "predict: the lowest score kept.")
_OUT = flags.DEFINE_string("out", None, "predict: output folder (default workdir/predictions).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MODE.value == "predict" and not _IMAGES.value:
        raise app.UsageError("--mode=predict needs --images=DIR_OR_GLOB")
    if _MODE.value != "predict" and _CONFIG.value is None:
        raise app.UsageError("--config is required")
    if not flags.FLAGS["verbosity"].present:
        # Library INFO logs (orbax's per-save lines, tfds) drown the progress lines;
        # `--verbosity=0` brings them back.
        absl_logging.set_verbosity(absl_logging.WARNING)
    from jaxdet.train import mesh as mesh_lib

    mesh_lib.maybe_initialize_distributed(force=_MULTIHOST.value)
    import jax

    from jaxdet import predict
    from jaxdet.eval import coco_eval
    from jaxdet.train import loop

    config = _CONFIG.value
    workdir = os.path.abspath(_WORKDIR.value)
    if _MODE.value == "predict":
        try:
            predict.run(workdir, _IMAGES.value, config=config, step=_STEP.value,
                        score_thr=_SCORE_THR.value, out=_OUT.value)
        except predict.ImageInputError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 2
        return 0
    os.makedirs(workdir, exist_ok=True)
    loop.prepare_data(config)  # builds the dataset if missing; resolves num_classes=0
    if jax.process_index() == 0:
        predict.save_config(config, workdir)
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
