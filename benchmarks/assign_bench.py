"""Assigner speed: jitted, vmapped JAX vs a NumPy per-image loop, same process.

    python benchmarks/assign_bench.py                 # all assigners
    python benchmarks/assign_bench.py --only atss --batch 8 --boxes 100

Setting (default): B = 8 images of 800 x 1333 (feature shapes of strides 8..128,
N = 22,300 priors for one prior per location), M = 100 random valid GT boxes
each. Prints ms per image of the JAX version (after warm-up, median of `--repeats`
calls, `block_until_ready`; also its process CPU time, the steadier figure on a shared
machine) and of the NumPy reference (mmdetection's semantics line by line, median over
images), and their ratio; then the row's CPU time over that of ATSS in the same process:
`atss_grid` (`atss.assign_batch`, the lattice search the ATSS detector runs) and `atss`
(the per-image block search). Figures: benchmarks/README.md. Add a row to BENCHES.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.stand_in_predictions import (  # noqa: E402
    jittered_boxes,
    stand_in_boxes,
    stand_in_scores,
)
from jaxdet.assign import (  # noqa: E402
    anchor_bags,
    approx_max_iou,
    atss,
    center_region,
    center_region_lattice,
    fcos,
    fsaf_select,
    ga_targets,
    hambox,
    max_iou,
    noisy_anchor,
    point_assigner,
    yolo_grid,
)
from jaxdet.core import priors as priors_lib  # noqa: E402
from jaxdet.core.types import GroundTruth  # noqa: E402
from tests.assign import numpy_ref as ref  # noqa: E402
from tests.assign.test_approx_max_iou import ref_approx  # noqa: E402
from tests.assign.test_center_region import mmdet_center_region  # noqa: E402
from tests.assign.test_ga_targets import ref_loc  # noqa: E402
from tests.assign.test_noisy_anchor import reference_bags  # noqa: E402
from tests.assign.test_point_assigner import mmdet_point_assigner  # noqa: E402

IMAGE_HW = (800, 1333)
STRIDES = (8, 16, 32, 64, 128)
YOLO_ANCHORS = (((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)),
                ((116, 90), (156, 198), (373, 326)))


def make_priors(kind: str):
    shapes = priors_lib.feature_shapes(IMAGE_HW, STRIDES)
    if kind == "anchors1":  # ATSS: one square anchor of 8 * stride
        return priors_lib.make_anchors(
            shapes, STRIDES, octave_base_scale=8, scales_per_octave=1, ratios=(1.0,)
        )
    if kind == "anchors9":  # RetinaNet: 3 scales x 3 ratios
        return priors_lib.make_anchors(shapes, STRIDES)
    if kind == "anchors_ga":  # Guided Anchoring's squares: one 4 * stride square per location
        return priors_lib.make_anchors(
            shapes, STRIDES, octave_base_scale=4, scales_per_octave=1, ratios=(1.0,)
        )
    if kind == "anchors_stride":  # FSAF: one stride-sized square per location
        return priors_lib.make_anchors(
            shapes, STRIDES, octave_base_scale=1, scales_per_octave=1, ratios=(1.0,)
        )
    if kind == "anchors_hambox":  # HAMBox: one square anchor of 0.68 * 4 * stride
        return priors_lib.make_anchors(
            shapes, STRIDES, octave_base_scale=2.72, scales_per_octave=1, ratios=(1.0,)
        )
    if kind == "points":  # FCOS
        return priors_lib.make_points(shapes, STRIDES)
    if kind == "yolo":  # YOLOv3: the 9 COCO anchors on strides 8, 16, 32
        return priors_lib.make_yolo_anchors(shapes[:3], STRIDES[:3], YOLO_ANCHORS)
    raise ValueError(kind)


@functools.cache
def _approxs():
    """Guided Anchoring's approximate anchors: RetinaNet's 9 per location."""
    return make_priors("anchors9")


def fsaf_assign(p, g):
    """FSAF's whole per-image assignment as the detector runs it (`FSAF.af_assign` on a
    tiling lattice): bit-set regions, the level-agnostic candidates, the per-level mean
    of a (fixed, stand-in) per-prior loss, argmin, the final assignment. `ignore_labels`
    comes out packed (`IgnoreBits`): its [N, 80] expansion is elementwise and fuses into
    the loss that reads it, like the loss's own [N, 80] terms."""
    geo = center_region.regions(p, g)  # LatticeRegions on these priors
    cand, _ = center_region_lattice.resolve_bits(geo, g, p.level_sizes, num_classes=80)
    loss = np.abs(np.sin(np.arange(p.boxes.shape[0], dtype=np.float32)))
    sel, _ = fsaf_select.online_select(loss, cand.gt_index, p.levels, g.boxes.shape[0],
                                       len(p.level_sizes))
    return center_region_lattice.resolve_bits(geo, g, p.level_sizes, num_classes=80,
                                              selected_level=sel)


def fsaf_reference(p, b, v, i):
    """mmdetection's level-agnostic CenterRegionAssigner (0.2 / 0.5), NumPy, per prior."""
    return mmdet_center_region(np.asarray(p.boxes, np.float64), b[v & ~i].astype(np.float64),
                               np.zeros(int((v & ~i).sum()), np.int64),
                               b[v & i].astype(np.float64), 0.2, 0.5, 0.01, 0.5, False)


# name -> (JAX per-image fn(priors, gt), NumPy fn(priors, boxes, valid, ignore), priors kind
#          [, True: the JAX fn takes the whole batch itself, no vmap])
BENCHES = {
    "max_iou": (
        lambda p, g: max_iou.assign(p, g),
        lambda p, b, v, i: ref.max_iou(p.boxes, b, v, i),
        "anchors1",
    ),
    "fcos": (
        lambda p, g: fcos.assign(p, g),
        lambda p, b, v, i: ref.fcos(p.centers, p.strides, p.level_sizes, b, v, i),
        "points",
    ),
    # RepPoints' init stage: PointAssigner(scale 4, pos_num 1), every GT against the
    # points of its level.
    "reppoints_point": (
        lambda p, g: point_assigner.assign(p, g),
        lambda p, b, v, i: mmdet_point_assigner(np.asarray(p.centers), np.asarray(p.strides),
                                                b[v & ~i]),
        "points",
    ),
    "atss": (
        lambda p, g: atss.assign(p, g, topk=9),
        lambda p, b, v, i: ref.atss(p.boxes, p.level_sizes, b, v, i, topk=9),
        "anchors1",
    ),
    # ATSS with the lattice-window candidate search (`atss.assign_batch`, batched: the
    # exact block search runs only when some GT of the batch needs it).
    "atss_grid": (
        lambda p, g: atss.assign_batch(p, g, topk=9),
        lambda p, b, v, i: ref.atss(p.boxes, p.level_sizes, b, v, i, topk=9),
        "anchors1",
        True,
    ),
    # FSAF: both center-region passes + online level selection, on the prior lattice as
    # the detector runs them (the NumPy column is mmdetection's single level-agnostic
    # pass, so its ratio flatters NumPy).
    "fsaf_center_region": (fsaf_assign, fsaf_reference, "anchors_stride"),
    # YOLOv3: mmdetection's GridAssigner with its responsible cells (N = 3 levels x 3).
    "yolo_grid": (
        lambda p, g: yolo_grid.assign(p, g),
        lambda p, b, v, i: ref.yolo_grid(p.boxes, p.feature_shapes, STRIDES[:3], 3, b, v, i),
        "yolo",
    ),
    "max_iou_retinanet9": (
        lambda p, g: max_iou.assign(p, g),
        lambda p, b, v, i: ref.max_iou(p.boxes, b, v, i),
        "anchors9",
    ),
    # The dense folds (every GT against all N priors) of the rows above, whose default
    # ('auto') on an anchor lattice folds each GT only over the levels it can reach.
    "max_iou_dense": (
        lambda p, g: max_iou.assign(p, g, method="dense"),
        lambda p, b, v, i: ref.max_iou(p.boxes, b, v, i),
        "anchors1",
    ),
    "max_iou_retinanet9_dense": (
        lambda p, g: max_iou.assign(p, g, method="dense"),
        lambda p, b, v, i: ref.max_iou(p.boxes, b, v, i),
        "anchors9",
    ),
    # MAL / FreeAnchor: top-40 anchor bags, and the bags + P{a in A+} (80 classes, as
    # (class, prob) slots; the anchors stand in for the predicted boxes).
    "mal_bags": (
        lambda p, g: anchor_bags.build(p, g, bag_size=40),
        lambda p, b, v, i: _np_bags(p.boxes, b, v, i, 40),
        "anchors9",
    ),
    # The same bags with one anchor per location (N = 22,300).
    "mal_bags_a1": (
        lambda p, g: anchor_bags.build(p, g, bag_size=40),
        lambda p, b, v, i: _np_bags(p.boxes, b, v, i, 40),
        "anchors1",
    ),
    "mal_bags_prob": (
        lambda p, g: _mal_bags_prob(p, g),
        lambda p, b, v, i: (_np_bags(p.boxes, b, v, i, 40), _np_box_prob(p.boxes, b, v, i, 80)),
        "anchors9",
        True,
    ),
    # The same with one anchor per location (N = 22,300).
    "mal_bags_prob_a1": (
        lambda p, g: _mal_bags_prob(p, g),
        lambda p, b, v, i: (_np_bags(p.boxes, b, v, i, 40), _np_box_prob(p.boxes, b, v, i, 80)),
        "anchors1",
        True,
    ),
    # P{a in A+} alone (FreeAnchor's negative-loss weights, from the predicted boxes).
    "mal_prob_a1": (
        lambda p, g: _mal_bags_prob(p, g, bags=False),
        lambda p, b, v, i: _np_box_prob(p.boxes, b, v, i, 80),
        "anchors1",
        True,
    ),
    # ... bags + P{a in A+} expanded to the dense [B, N, 80] the detector's negative loss
    # reads (the extra is the write of that array, as large as the class logits: a
    # loss input; fused into the loss instead it made the loss's step slower).
    "mal_bags_prob_dense_a1": (
        lambda p, g: _mal_bags_prob(p, g, dense=True),
        lambda p, b, v, i: (_np_bags(p.boxes, b, v, i, 40), _np_box_prob(p.boxes, b, v, i, 80)),
        "anchors1",
        True,
    ),
    # ... with jittered predicted boxes (`jittered_boxes`).
    "mal_bags_prob_jittered_a1": (
        lambda p, g: _mal_bags_prob(p, g, pred=jittered_boxes(p.boxes)),
        lambda p, b, v, i: (_np_bags(p.boxes, b, v, i, 40),
                            _np_box_prob(jittered_boxes(p.boxes), b, v, i, 80)),
        "anchors1",
        True,
    ),
    # Learning from noisy anchors: top-50 candidate bags (lattice search over the 9-anchor
    # layout) + cleanliness from the predicted boxes (stand-in: anchors grown 1.2x) and
    # scores (80 classes).
    "noisy_anchor": (lambda p, g: _noisy_assign(p, g), lambda p, b, v, i: _noisy_ref(p, b, v, i),
                     "anchors9"),
    # The same with one anchor per location (N = 22,300).
    "noisy_anchor_a1": (lambda p, g: _noisy_assign(p, g), lambda p, b, v, i: _noisy_ref(p, b, v, i),
                        "anchors1"),
    # Guided Anchoring: ApproxMaxIoUAssigner (the max IoU over each location's 9
    # RetinaNet anchors, 0.5 / 0.4 / 0.4) and the location targets (`ga_loc_targets`).
    "ga_approx_max_iou": (
        lambda p, g: approx_max_iou.assign(p, _approxs(), g),
        lambda p, b, v, i: ref_approx(np.asarray(p.boxes), np.asarray(_approxs().boxes), 9, b, v,
                                      i, 0.5, 0.4, 0.4, 0.5),
        "anchors_ga",
    ),
    "ga_loc_targets": (
        lambda p, g: ga_targets.loc_targets(g, p.feature_shapes, STRIDES, octave_base_scale=4),
        lambda p, b, v, i: ref_loc(np.nan_to_num(b), v, i, 4, p.feature_shapes, STRIDES),
        "anchors_ga",
    ),
    # HAMBox: matching at 0.35 + online compensation (K = 5, T2 = 0.5) from the regressed
    # boxes (stand-in: anchors grown 1.2x), one 0.68 x 4 x stride anchor per location.
    "hambox": (
        lambda p, g: hambox.assign(p, g, stand_in_boxes(p.boxes)),
        lambda p, b, v, i: ref.hambox(p.boxes, b, v, i, np.asarray(stand_in_boxes(p.boxes))),
        "anchors_hambox",
    ),
    # ... with jittered predictions (`jittered_boxes`: sizes and places off by up to
    # 20%): the per-level bounds prune less than on the uniform stand-in.
    "hambox_jittered": (
        lambda p, g: hambox.assign(p, g, jittered_boxes(p.boxes, 1.2)),
        lambda p, b, v, i: ref.hambox(p.boxes, b, v, i, jittered_boxes(p.boxes, 1.2)),
        "anchors_hambox",
    ),
    # ... with both stages' dense folds.
    "hambox_dense": (
        lambda p, g: hambox.compensate(
            max_iou.assign(p, g, pos_iou_thr=0.35, neg_iou_thr=0.35, method="dense"), g,
            stand_in_boxes(p.boxes)),
        lambda p, b, v, i: ref.hambox(p.boxes, b, v, i, np.asarray(stand_in_boxes(p.boxes))),
        "anchors_hambox",
    ),
}


def _mal_bags_prob(p, g, dense=False, bags=True, pred=None):
    """A batch's MAL bags and P{a in A+} (the anchors stand in for the predicted boxes
    unless `pred` [N, 4] is given; a constant input as the stand-ins below), as (class,
    probability) slots or (dense) as [B, N, 80]; bags=False: P{a in A+} alone."""
    pred = np.asarray(p.boxes if pred is None else pred, np.float32)
    pred = np.broadcast_to(pred, g.boxes.shape[:1] + pred.shape)
    if not bags:
        return anchor_bags.positive_probability_slots(pred, g, priors=p)
    bags = jax.vmap(lambda g1: anchor_bags.build(p, g1, bag_size=40))(g)
    if dense:
        return bags, anchor_bags.positive_probability_batch(pred, g, 80,
                                                            priors=p)
    return bags, anchor_bags.positive_probability_slots(pred, g, priors=p)


def _noisy_assign(p, g):
    return noisy_anchor.assign(p, g, stand_in_boxes(p.boxes),
                               stand_in_scores(p.boxes.shape[0], 80), topk=50)


def _noisy_ref(p, boxes, valid, ignore):
    return reference_bags(np.asarray(p.boxes), boxes, valid, ignore, 50)


def _np_bags(priors, boxes, valid, ignore, k):
    """FreeAnchor's bags (mmdetection: topk of bbox_overlaps(gt, anchors))."""
    iou = ref.bbox_overlaps(boxes[valid & ~ignore], priors)
    return np.argpartition(-iou, k, axis=1)[:, :k]


def _np_box_prob(pred, boxes, valid, ignore, num_classes, thr=0.6):
    """FreeAnchor's P{a in A+} (labels all 0 here)."""
    iou = ref.bbox_overlaps(boxes[valid & ~ignore], pred)
    t2 = np.maximum(iou.max(1, keepdims=True), thr + 1e-12)
    out = np.zeros((len(pred), num_classes), np.float32)
    out[:, 0] = np.clip((iou - thr) / (t2 - thr), 0, 1).max(0)
    return out


def random_gt(rng, batch, m):
    h, w = IMAGE_HW
    wh = rng.uniform(8, 400, (batch, m, 2))
    xy = rng.uniform(0, 1, (batch, m, 2)) * (np.array([w, h]) - wh)
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    return (
        boxes,
        np.zeros((batch, m), np.int32),
        np.ones((batch, m), bool),
        np.zeros((batch, m), bool),
    )


def time_jax(fn, priors, gt, repeats, batched=False):
    f = jax.jit(lambda g: fn(priors, g)) if batched else jax.jit(jax.vmap(lambda g: fn(priors, g)))
    t0 = time.perf_counter()
    jax.block_until_ready(f(gt))
    compile_s = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(f(gt))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(times)), float(np.median(cpu)), compile_s


def time_numpy(fn, priors, gt_np, images):
    boxes, _, valid, ignore = gt_np
    times = []
    for b in range(images):
        t0 = time.perf_counter()
        fn(priors, boxes[b], valid[b], ignore[b])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--numpy-images", type=int, default=3, help="images timed for NumPy")
    args = parser.parse_args()

    gt_np = random_gt(np.random.default_rng(0), args.batch, args.boxes)
    gt = GroundTruth(*gt_np)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cpus; "
        f"B={args.batch}, M={args.boxes}, input {IMAGE_HW[0]}x{IMAGE_HW[1]}"
    )
    print(
        f"{'assigner':20s} {'N':>7s} {'jax ms/img':>11s} {'numpy ms/img':>13s} "
        f"{'numpy/jax':>10s} {'compile s':>10s} {'jax cpu-ms/img':>15s} {'/atss_grid':>11s} "
        f"{'/atss':>11s}"
    )
    cache = {}
    names = list(args.only)
    for ref_name in ("atss", "atss_grid"):  # first, so every row can be set against them
        if ref_name in names:
            names.remove(ref_name)
            names.insert(0, ref_name)
    ref_cpu = {}
    for name in names:
        jax_fn, np_fn, kind, *batched = BENCHES[name]
        if kind not in cache:
            cache[kind] = make_priors(kind)
        p = cache[kind]
        t_jax, cpu_jax, compile_s = time_jax(jax_fn, p, gt, args.repeats, bool(batched))
        t_np = time_numpy(np_fn, p, gt_np, min(args.numpy_images, args.batch))
        ms_jax = 1e3 * t_jax / args.batch
        if name in ("atss", "atss_grid"):
            ref_cpu[name] = cpu_jax
        ratios = [f"{cpu_jax / ref_cpu[r]:10.2f}x" if r in ref_cpu else f"{'-':>11s}"
                  for r in ("atss_grid", "atss")]
        print(
            f"{name:20s} {p.num_priors:7d} {ms_jax:11.3f} {1e3 * t_np:13.2f} "
            f"{1e3 * t_np / ms_jax:10.1f} {compile_s:10.1f} {1e3 * cpu_jax / args.batch:15.3f} "
            + " ".join(ratios)
        )


if __name__ == "__main__":
    main()
