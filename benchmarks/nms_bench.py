"""Benchmark: jaxdet `batched_nms` (jitted) vs a NumPy greedy NMS, same process, same inputs.

Run: python benchmarks/nms_bench.py [--n 1000] [--classes 80] [--reps 30]

Inputs are detector-like: jittered copies of a few dozen objects (heavy overlap),
uniform scores, classes drawn near each object's class. Prints the median ms of
  - numpy:  classical greedy loop (Detectron's py_cpu_nms) with mmcv's class
            offset trick, float64, run to completion;
  - jax:    jaxdet.ops.nms.batched_nms, jitted, for max_output 100 and N;
  - matrix: the alternative jittable form (full [N, N] IoU matrix, then a
            fori_loop sweep over rows), for the record of why it was not chosen;
and the ratio numpy / jax. Checks that the kept sets agree.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdet.core.boxes import pairwise_iou
from jaxdet.ops.nms import batched_nms


def numpy_batched_nms(boxes, scores, classes, iou_threshold):
    boxes = boxes.astype(np.float64)
    boxes = boxes + (classes * (boxes.max() + 1.0))[:, None]
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-6)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep)


@functools.partial(jax.jit, static_argnames=("max_output",))
def matrix_batched_nms(boxes, scores, classes, valid, iou_threshold, max_output):
    n = boxes.shape[0]
    order = jnp.argsort(-scores, stable=True)
    b, c = boxes[order], classes[order]
    upper = jnp.arange(n)[:, None] < jnp.arange(n)[None, :]
    sup = (pairwise_iou(b, b) > iou_threshold) & (c[:, None] == c[None, :]) & upper
    keep = lax.fori_loop(0, n, lambda i, k: jnp.where(k[i], k & ~sup[i], k), valid[order])
    rank = jnp.where(keep, jnp.cumsum(keep) - 1, max_output)
    slots = jnp.zeros(max_output + 1, jnp.int32).at[rank].set(jnp.arange(n, dtype=jnp.int32))
    return order[slots[:max_output]], jnp.arange(max_output) < keep.sum()


def make_inputs(n, num_classes, seed, num_objects=60, size=800.0):
    rng = np.random.default_rng(seed)
    obj = rng.uniform(0, size, (num_objects, 2))
    wh = rng.uniform(16, size / 4, (num_objects, 2))
    j = rng.integers(0, num_objects, n)
    ctr = obj[j] + rng.normal(0, 0.1, (n, 2)) * wh[j]
    s = wh[j] * rng.uniform(0.7, 1.3, (n, 2))
    boxes = np.concatenate([ctr - s / 2, ctr + s / 2], axis=1).astype(np.float32)
    scores = rng.uniform(size=n).astype(np.float32)
    obj_class = rng.integers(0, num_classes, num_objects)
    classes = ((obj_class[j] + rng.integers(0, 3, n)) % num_classes).astype(np.int32)
    return boxes, scores, classes


def median_ms(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    boxes, scores, classes = make_inputs(args.n, args.classes, args.seed)
    valid = np.ones(args.n, bool)
    jb, js, jc, jv = map(jnp.asarray, (boxes, scores, classes, valid))
    ref = numpy_batched_nms(boxes, scores, classes, args.iou)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; N={args.n} boxes, "
        f"{args.classes} classes, IoU thr {args.iou}: greedy keeps {len(ref)}"
    )

    t_np = median_ms(lambda: numpy_batched_nms(boxes, scores, classes, args.iou), args.reps)
    print(f"numpy greedy (offset trick, to completion): {t_np:8.2f} ms")
    for max_output in sorted({100, args.n}):
        variants = (("jax batched_nms", batched_nms), ("jax matrix sweep", matrix_batched_nms))
        for name, fn in variants:
            run = lambda fn=fn, m=max_output: fn(
                jb, js, jc, jv, iou_threshold=args.iou, max_output=m
            )
            idx, kv = run()  # compile
            kept = np.asarray(idx)[np.asarray(kv)]
            assert np.array_equal(kept, ref[:max_output]), f"{name}: kept set differs"
            t = median_ms(run, args.reps)
            print(
                f"{name:17s} max_output={max_output:5d}: {t:8.2f} ms   numpy/jax = {t_np / t:6.2f}x"
            )


if __name__ == "__main__":
    main()
