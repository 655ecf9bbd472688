"""Training and evaluation loops (read top to bottom).

`train_and_evaluate(config, workdir)`: set up the mesh, the input pipeline,
the detector and the optimizer; resume from the last checkpoint in
`workdir/checkpoints` if any; train; save; evaluate the final parameters with
pycocotools. `evaluate_checkpoint(config, workdir, step)`: eval only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxdet import detectors
from jaxdet import platform as platform_lib
from jaxdet.data import pipeline
from jaxdet.detectors import Detector
from jaxdet.eval import coco_eval, proposal_recall, visualize
from jaxdet.train import checkpoint as ckpt_lib
from jaxdet.train import mesh as mesh_lib
from jaxdet.train import multiscale, optim
from jaxdet.train.device_prefetch import DevicePrefetch
from jaxdet.train.metrics import MetricWriter, Progress
from jaxdet.train.step import TrainState, create_train_state, predict_step, train_step


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or gradient turned NaN/Inf; the last good checkpoint is kept."""


def _image_hw(config: Any) -> tuple[int, int]:
    h, w = config.data.image_size
    return int(h), int(w)


def training_length(config: Any, num_train_examples: int) -> tuple[int, int]:
    """(total_steps, steps_per_epoch) from config.train.{num_steps | epochs}."""
    steps_per_epoch = max(num_train_examples // int(config.train.batch_size), 1)
    if config.train.num_steps:
        return int(config.train.num_steps), steps_per_epoch
    return int(round(float(config.train.epochs) * steps_per_epoch)), steps_per_epoch


def prepare_data(config: Any) -> None:
    """Builds the dataset if missing (on process 0 only, the others wait); checks that it
    carries the fields the config asks for (instance masks for data.with_masks: a
    ValueError naming `masks` otherwise); sets config.data.num_classes=0 to the dataset's
    category count (before the detector is built)."""
    if jax.process_index() == 0:
        pipeline.prepare(config.data)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxdet: dataset prepared")
    pipeline.check_masks(config.data)
    pipeline.resolve_num_classes(config.data)


@dataclasses.dataclass(frozen=True)
class TrainParts:
    """Everything `train` needs, built once by `setup` (tests and experiments use it too).

    state: the replicated TrainState (the initial one; `train` returns the trained one).
    step_fn: the jitted `train_step(state, batch, train_rng) -> (state, metrics)`.
    """

    mesh: jax.sharding.Mesh
    detector: Detector
    tx: Any
    schedule: Any
    state: TrainState
    train_iter: Any
    step_fn: Any
    train_rng: jax.Array
    total_steps: int
    steps_per_epoch: int


def setup(config: Any, workdir: str, mesh=None) -> TrainParts:
    """Builds everything training needs (mesh, data, detector, optimizer, jitted step)."""
    mesh = mesh or mesh_lib.make_mesh(config.num_devices or None)
    local_batch = mesh_lib.check_batch_size(int(config.train.batch_size), mesh)
    prepare_data(config)
    train_iter = pipeline.from_config(
        config.data, batch_size=local_batch, train=True, seed=int(config.seed)
    )
    num_train = pipeline.num_examples(config.data, config.data.train_split)
    total_steps, steps_per_epoch = training_length(config, num_train)

    detector = detectors.build(config)
    rng = jax.random.PRNGKey(int(config.seed))
    init_rng, train_rng = jax.random.split(rng)
    params, det_state = detector.init(init_rng, _image_hw(config))
    schedule = optim.make_schedule(config.optimizer, total_steps, steps_per_epoch)
    tx = optim.make_optimizer(config.optimizer, schedule, detector.trainable_mask(params))
    state = mesh_lib.replicate(create_train_state(params, det_state, tx), mesh)
    step_fn = mesh_lib.InMesh(mesh, jax.jit(
        functools.partial(train_step, detector=detector, tx=tx),
        in_shardings=(
            mesh_lib.replicated(mesh),
            mesh_lib.data_sharded(mesh),
            mesh_lib.replicated(mesh),
        ),
        out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=platform_lib.from_config(config).compiler_options(),
    ))
    return TrainParts(
        mesh=mesh,
        detector=detector,
        tx=tx,
        schedule=schedule,
        state=state,
        train_iter=train_iter,
        step_fn=step_fn,
        train_rng=mesh_lib.replicate(train_rng, mesh),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )


def train(config: Any, workdir: str, parts: TrainParts | None = None,
          stop_at: int | None = None) -> tuple[TrainState, TrainParts]:
    """Trains to `total_steps`. `stop_at` simulates a kill: the loop just stops
    after that step, without a final checkpoint.

    Returns (state, parts). Raises NonFiniteLossError if the loss turns NaN/Inf.
    """
    parts = parts or setup(config, workdir)
    mesh, state, train_iter = parts.mesh, parts.state, parts.train_iter
    total = parts.total_steps
    ckpt = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=int(config.train.keep_checkpoints),
        async_save=bool(config.train.async_checkpoint),
    )
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state, train_iter)
        logging.info("resumed from step %d", int(state.step))
        if jax.process_index() == 0:
            print(f"Resumed from checkpoint at step {int(state.step)} in {ckpt.directory}")
    batches = DevicePrefetch(train_iter, mesh, int(config.train.get("device_prefetch", 1)))
    writer = MetricWriter(workdir, tensorboard=bool(config.train.tensorboard))
    start = int(state.step)
    end = total if stop_at is None else min(stop_at, total)
    progress = Progress(total, int(config.train.batch_size), start)
    log_every = int(config.train.log_every)
    ckpt_every = int(config.train.checkpoint_every)
    all_finite = jnp.array(True)
    pending: list[dict] = []
    step = start
    sizes = multiscale.train_sizes(config.data)
    while step < end:
        batch = next(batches)  # already on the devices; the next one is on its way
        if sizes:  # multi-scale training: one of a fixed set of sizes per step
            batch = multiscale.rescale_batch(
                batch, multiscale.pick_size(sizes, int(config.seed), step))
        state, metrics = parts.step_fn(state, batch, parts.train_rng)
        all_finite = jnp.logical_and(all_finite, metrics["finite"])
        step += 1
        pending.append(metrics)
        if step == start + 1:
            jax.block_until_ready(state)
            progress.reset_clock(step)  # exclude compilation from images/s
        must_log = step % log_every == 0 or step == end
        must_save = step % ckpt_every == 0 or step == total
        if must_log or must_save:
            if not bool(all_finite):
                ckpt.close()
                batches.close()
                last = ckpt.latest_step()
                raise NonFiniteLossError(
                    f"loss or gradient became NaN/Inf between steps {step - len(pending)} and "
                    f"{step}; training stopped. Last good checkpoint: "
                    f"{'step ' + str(last) if last is not None else 'none'} in {ckpt.directory}."
                )
            if must_log and pending:
                means = jax.tree_util.tree_map(lambda *xs: np.mean(np.stack(xs)), *pending)
                means["lr"] = parts.schedule(step - 1)
                values = writer.write(step, means, prefix="train/")
                progress.report(step, {k.split("/", 1)[1]: v for k, v in values.items()})
                pending = []
            if must_save:
                ckpt.save(step, state, batches)
    if step > start + 1:
        progress.summary(step)
    batches.close()  # train_iter continues after the last batch trained on
    ckpt.close()
    writer.close()
    return state, parts


def make_evaluator(config: Any, *, with_masks: bool = False) -> coco_eval.CocoEvaluator:
    """The val-split evaluator of `config.test.metric`: 'bbox' (COCO AP; with_masks: the
    detections carry masks at 1/config.test.mask_stride, 'segm' too) or 'proposal'
    (class-agnostic AR@100/300/1000). Its add() takes (detections, batch) with the
    batch's image_id, scale and image_hw."""
    metric = config.test.metric
    if metric == "proposal":
        return proposal_recall.evaluator_for(config.data)
    if metric != "bbox":
        raise ValueError(f"config.test.metric={metric!r}: expected 'bbox' or 'proposal'")
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    return coco_eval.evaluator_for(config.data, iou_types=iou_types,
                                   mask_stride=int(config.test.mask_stride))  # fmt: skip


def evaluate(
    config: Any, detector: Detector, params: Any, mesh, workdir: str, *, step: int,
    draw: int = 8,
) -> dict[str, float]:
    """Runs COCO evaluation of `params` on the val split (`make_evaluator`: bbox, plus segm
    when the detections carry masks, or proposal recall); prints and saves the summary."""
    batch_size = int(config.eval.batch_size)
    local_batch = mesh_lib.check_batch_size(batch_size, mesh)
    predict = mesh_lib.InMesh(mesh, jax.jit(
        functools.partial(predict_step, detector=detector),
        in_shardings=(
            mesh_lib.replicated(mesh),
            mesh_lib.data_sharded(mesh),
            mesh_lib.data_sharded(mesh),
        ),
        compiler_options=platform_lib.from_config(config).compiler_options(),
    ))
    evaluator = None
    first: tuple[dict, Any] | None = None
    t0 = time.time()
    for local in pipeline.from_config(config.data, batch_size=local_batch, train=False):
        batch = mesh_lib.global_batch({k: local[k] for k in ("image", "image_hw")}, mesh)
        dets = predict(params, batch["image"], batch["image_hw"])
        dets = jax.tree_util.tree_map(
            np.asarray, multihost_utils.process_allgather(dets, tiled=True)
        )
        meta = multihost_utils.process_allgather(
            {k: local[k] for k in ("image_id", "scale", "image_hw")}, tiled=True
        )
        if evaluator is None:
            evaluator = make_evaluator(config, with_masks=getattr(dets, "masks", None) is not None)
        evaluator.add(dets, {k: np.asarray(v) for k, v in meta.items()})
        if first is None:
            first = (local, dets)
    stats: dict[str, float] = {}
    evaluator = evaluator or make_evaluator(config)
    if jax.process_index() == 0:
        eval_dir = os.path.join(workdir, "eval")
        os.makedirs(eval_dir, exist_ok=True)
        stats = evaluator.evaluate(results_path=os.path.join(eval_dir, f"results_{step}.json"))
        stats["eval_seconds"] = time.time() - t0
        with open(os.path.join(eval_dir, f"coco_stats_{step}.json"), "w") as f:
            json.dump(stats, f, indent=2)
        if first is not None and draw:
            n = first[0]["image"].shape[0]  # process 0's rows come first in the gather
            visualize.save_grid(
                os.path.join(workdir, f"predictions_{step}.png"),
                first[0],
                jax.tree_util.tree_map(lambda a: a[:n], first[1]),
                class_names=pipeline.class_names(config.data),
                max_images=draw, mean=config.data.mean, std=config.data.std,
            )
        MetricWriter(workdir, tensorboard=False).write(step, stats, prefix="eval/")
    return stats


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
    state, parts = train(config, workdir)
    return evaluate(
        config, parts.detector, state.params, parts.mesh, workdir, step=int(state.step)
    )


def evaluate_checkpoint(config: Any, workdir: str, step: int | None = None) -> dict[str, float]:
    """Evaluates checkpoint `step` (default latest) of `workdir`."""
    mesh = mesh_lib.make_mesh(config.num_devices or None)
    prepare_data(config)
    detector = detectors.build(config)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint to evaluate in {ckpt.directory}")
    params, det_state = detector.init(jax.random.PRNGKey(0), _image_hw(config))
    template = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=None, det_state=det_state
    )
    restored = ckpt.restore_params(step)
    params = jax.tree_util.tree_map(
        lambda t, r: jnp.asarray(r, t.dtype), template.params, restored["params"]
    )
    ckpt.close()
    params = mesh_lib.replicate(params, mesh)
    return evaluate(config, detector, params, mesh, workdir, step=step)
