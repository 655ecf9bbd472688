"""Assigner speed: jitted, vmapped JAX vs a NumPy per-image loop, same process.

    python benchmarks/assign_bench.py                 # all assigners
    python benchmarks/assign_bench.py --only atss --batch 8 --boxes 100

Setting (default): B = 8 images of 800 x 1333 (feature shapes of strides 8..128,
N = 22,300 priors for one prior per location), M = 100 random valid GT boxes
each. Prints ms per image of the JAX version (after warm-up, median of
`--repeats` calls, `block_until_ready`; also its process CPU time, which is
the steadier figure on a shared machine) and of the NumPy reference
(tests/assign/numpy_ref.py, mmdetection's semantics line by line, median over
images), and their ratio. Add an assigner by adding a row to BENCHES.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from jaxdet.assign import atss, fcos, max_iou  # noqa: E402
from jaxdet.core import priors as priors_lib  # noqa: E402
from jaxdet.core.types import GroundTruth  # noqa: E402
from tests.assign import numpy_ref as ref  # noqa: E402

IMAGE_HW = (800, 1333)
STRIDES = (8, 16, 32, 64, 128)


def make_priors(kind: str):
    shapes = priors_lib.feature_shapes(IMAGE_HW, STRIDES)
    if kind == "anchors1":  # ATSS: one square anchor of 8 * stride
        return priors_lib.make_anchors(
            shapes, STRIDES, octave_base_scale=8, scales_per_octave=1, ratios=(1.0,)
        )
    if kind == "anchors9":  # RetinaNet: 3 scales x 3 ratios
        return priors_lib.make_anchors(shapes, STRIDES)
    if kind == "points":  # FCOS
        return priors_lib.make_points(shapes, STRIDES)
    raise ValueError(kind)


# name -> (JAX per-image fn(priors, gt), NumPy fn(priors, boxes, valid, ignore), priors kind)
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
    "atss": (
        lambda p, g: atss.assign(p, g, topk=9),
        lambda p, b, v, i: ref.atss(p.boxes, p.level_sizes, b, v, i, topk=9),
        "anchors1",
    ),
    "max_iou_retinanet9": (
        lambda p, g: max_iou.assign(p, g),
        lambda p, b, v, i: ref.max_iou(p.boxes, b, v, i),
        "anchors9",
    ),
}


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


def time_jax(fn, priors, gt, repeats):
    f = jax.jit(jax.vmap(lambda g: fn(priors, g)))
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
        f"{'numpy/jax':>10s} {'compile s':>10s} {'jax cpu-ms/img':>15s}"
    )
    cache = {}
    for name in args.only:
        jax_fn, np_fn, kind = BENCHES[name]
        if kind not in cache:
            cache[kind] = make_priors(kind)
        p = cache[kind]
        t_jax, cpu_jax, compile_s = time_jax(jax_fn, p, gt, args.repeats)
        t_np = time_numpy(np_fn, p, gt_np, min(args.numpy_images, args.batch))
        ms_jax = 1e3 * t_jax / args.batch
        print(
            f"{name:20s} {p.num_priors:7d} {ms_jax:11.3f} {1e3 * t_np:13.2f} "
            f"{1e3 * t_np / ms_jax:10.1f} {compile_s:10.1f} {1e3 * cpu_jax / args.batch:15.3f}"
        )


if __name__ == "__main__":
    main()
