"""MAL / FreeAnchor negative bag loss: P{a in A+} as a dense [B, N, C] input vs its
(class, prob) slots expanded inside the loss, same process.

    python benchmarks/mal_negative_loss_bench.py [--batch 8] [--repeats 10]

Setting: the 22,300 ATSS anchors of an 800 x 1333 input, M = 100 GT per image, C = 80,
the anchors standing in for the predicted boxes (as in assign_bench.py). Each variant
is jit(value_and_grad) of the summed negative loss with respect to the class logits,
P{a in A+} computed inside; the script prints process CPU-ms per image and the ratio
of each variant to the dense form (what `detectors/mal.py` runs) and to the loss alone
with P = 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.assign_bench import make_priors, random_gt  # noqa: E402
from jaxdet.assign import anchor_bags  # noqa: E402
from jaxdet.core.types import GroundTruth  # noqa: E402
from jaxdet.losses import mal as mal_loss  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    b, c = args.batch, 80
    p = make_priors("anchors1")
    gt = GroundTruth(*random_gt(np.random.default_rng(0), b, 100))
    pred = np.broadcast_to(np.asarray(p.boxes, np.float32), (b,) + p.boxes.shape)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(b, p.boxes.shape[0], c)),
                    jnp.float32)

    def no_prob(x):
        return jnp.sum(mal_loss.negative_bag_loss(x, jnp.zeros_like(x)))

    def dense(x):  # the detector's path
        box_prob = anchor_bags.positive_probability_batch(pred, gt, c, priors=p)
        return jnp.sum(mal_loss.negative_bag_loss(x, box_prob))

    def slots_in_loss(x):  # slots expanded inside the loss (exact only without overflow)
        slots = anchor_bags.positive_probability_slots(pred, gt, priors=p)
        return jnp.sum(mal_loss.negative_bag_loss(x, anchor_bags.slots_to_dense(slots, c)))

    cpu = {}
    for name, f in (("P = 0", no_prob), ("dense", dense), ("slots in the loss", slots_in_loss)):
        g = jax.jit(jax.value_and_grad(f))
        jax.block_until_ready(g(x))
        times = []
        for _ in range(args.repeats):
            c0 = time.process_time()
            jax.block_until_ready(g(x))
            times.append(time.process_time() - c0)
        cpu[name] = float(np.median(times))
    for name, t in cpu.items():
        print(f"{name:18s} {1e3 * t / b:8.2f} CPU-ms / image   /dense {t / cpu['dense']:5.2f}x"
              f"   /(P = 0) {t / cpu['P = 0']:5.2f}x")


if __name__ == "__main__":
    main()
