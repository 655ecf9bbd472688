"""Tiny configs for the end-to-end tests: the smallest model on the `shapes/tiny` data."""

from __future__ import annotations

import importlib

import ml_collections


def tiny_config(detector: str, data_dir: str, **train) -> ml_collections.ConfigDict:
    """The method's tiny config shrunk further: 64 px images, width 8, batch 4.

    `detector`: a method name ('atss' -> configs.atss.atss_tiny_shapes) or a config
    module path ('configs.fsaf.fsaf_ab_af_tiny_shapes'). `train`: num_steps,
    log_every, checkpoint_every, lr, and any other config.train field.
    """
    module = detector if "." in detector else f"configs.{detector}.{detector}_tiny_shapes"
    config = importlib.import_module(module).get_config()
    config.data.data_dir = str(data_dir)
    config.data.builder_config = "tiny"
    config.data.image_size = (64, 64)
    config.data.min_size = 64
    config.data.max_size = 64
    if "fpn" in config.model:
        config.model.backbone.width = 8
        config.model.backbone.gn_groups = 4
        config.model.fpn.channels = 16
        config.model.head.channels = 16
        config.model.head.gn_groups = 4
        config.model.head.num_convs = 1
    else:  # YOLO: Darknet + YOLOv3 neck / head
        config.model.backbone.update(dict(width=4, blocks=(1, 1, 1, 1, 1), gn_groups=4))
        config.model.neck.channels = (8, 16, 32)
        config.model.head.channels = (16, 32, 64)
    config.train.batch_size = 4
    config.eval.batch_size = 4
    config.train.num_steps = train.pop("num_steps", 6)
    config.train.log_every = train.pop("log_every", 1)
    config.train.checkpoint_every = train.pop("checkpoint_every", 3)
    config.train.async_checkpoint = False
    config.train.tensorboard = False
    # The tests check mechanics (resume, NaN stop, devices), not the recipe: plain SGD
    # for every method (the ATSS demo config itself trains with AdamW).
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_steps = 0
    config.optimizer.lr = train.pop("lr", 0.01)
    if "regress_ranges" in config.get("assigner", {}):
        config.assigner.regress_ranges = ((-1, 16), (16, 32), (32, 1e8))
    for k, v in train.items():
        config.train[k] = v
    return config


def synthetic_batch(config, boxes, labels, valid, seed: int = 0) -> dict:
    """A training batch of noise images with the given padded GT: boxes [B, M, 4],
    labels [B, M], valid [B, M] (no ignore rows), images of config.data.image_size."""
    import jax.numpy as jnp
    import numpy as np

    h, w = config.data.image_size
    valid = np.asarray(valid, bool)
    b = valid.shape[0]
    rng = np.random.default_rng(seed)
    return dict(
        image=jnp.asarray(rng.normal(size=(b, h, w, 3)), jnp.float32),
        image_hw=jnp.asarray(np.tile([h, w], (b, 1)), jnp.int32),
        boxes=jnp.asarray(boxes, jnp.float32),
        labels=jnp.asarray(labels, jnp.int32),
        valid=jnp.asarray(valid),
        ignore=jnp.zeros(valid.shape, bool),
    )


def train_tiny(detector: str, data_dir, workdir: str):
    """Trains the tiny config of `detector` for 12 steps (checkpoints at 6 and 12) and
    checks the mechanics every detector must pass: 12 finite losses, the last three
    lower on average than the first three. Returns (config, state, parts, metric rows)."""
    import json
    import os

    import numpy as np

    from jaxdet.train import loop

    config = tiny_config(detector, data_dir, num_steps=12, checkpoint_every=6, lr=0.01)
    state, parts = loop.train(config, workdir)
    assert int(state.step) == 12
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    return config, state, parts, rows


def check_restore_and_predict(config, state, parts, workdir: str) -> dict:
    """After `train_tiny`: the last checkpoint restores and evaluates with pycocotools to
    finite AP / AP50 / AR100, and the trained parameters predict [2, max_det] detections.
    Returns the COCO stats."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdet.train import loop

    stats = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AR100"):
        assert key in stats and np.isfinite(stats[key])
    images = jnp.zeros((2, *config.data.image_size, 3))
    hw = jnp.asarray([config.data.image_size] * 2, jnp.int32)
    dets = jax.jit(parts.detector.predict)(state.params, images, hw)
    k = config.test.max_det
    assert dets.boxes.shape == (2, k, 4)
    assert dets.scores.shape == dets.classes.shape == dets.valid.shape == (2, k)
    return stats


def recorded_gt(rec, batch: int, rows: int):
    """GroundTruth [batch, rows] of a recorded fixture's `gt_boxes_{b}` / `gt_labels_{b}`,
    with garbage (1e4) in the padding rows, which no assigner may read."""
    import jax.numpy as jnp
    import numpy as np

    from jaxdet.core.types import GroundTruth

    boxes = np.full((batch, rows, 4), 1e4, np.float32)
    labels = np.zeros((batch, rows), np.int32)
    valid = np.zeros((batch, rows), bool)
    for b in range(batch):
        g = np.asarray(rec[f"gt_boxes_{b}"]).reshape(-1, 4)
        boxes[b, : len(g)] = g
        labels[b, : len(g)] = rec[f"gt_labels_{b}"]
        valid[b, : len(g)] = True
    return GroundTruth(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels),
                       valid=jnp.asarray(valid), ignore=jnp.zeros((batch, rows), bool))
