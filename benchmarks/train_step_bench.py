"""Train-step speed and memory: the tiny ATSS config (shapes, 128 px) and ATSS
R50-FPN at 2x512x512, on random inputs with realistic GT.

  python benchmarks/train_step_bench.py [--skip-r50] [--steps 20] [--torch-python PY]

Prints, per setting: compile time (s), median step time (ms), images/s, the
compiled step's temp memory (XLA memory analysis) and the process peak RSS; each
setting runs three times, with three `config.platform` values: the default (all
'auto': jaxdet.ops.conv's CPU kernels and XLA:CPU's YNNPACK fusions as
`jaxdet.platform.resolve` decides for this CPU), with `cpu_conv='off'` (XLA's conv
kernel gradients), and with `ynnpack` flipped (off where the default keeps it, on
where it turns it off); the ratios to the default's step time are printed.
The reference for the R50 setting is torchvision's RetinaNet R50-FPN train step at
2x512x512 (`benchmarks/torchvision_retinanet_step.py`). With `--torch-python PY` (a
Python with torch and torchvision, which jaxdet does not depend on) it is run right
after, on the same machine, and the ratio is printed; without it the ratio is taken
against `TORCHVISION_R50_STEP_S`, a figure measured on another machine (per-machine
figures: benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.atss import atss_r50_fpn_1x_coco, atss_tiny_shapes  # noqa: E402
from jaxdet import detectors  # noqa: E402
from jaxdet import platform as platform_lib  # noqa: E402
from jaxdet.train import optim  # noqa: E402
from jaxdet.train.step import create_train_state, train_step  # noqa: E402

TORCHVISION_R50_STEP_S = 2.2  # torchvision's step time (s), measured on another machine
HERE = os.path.dirname(os.path.abspath(__file__))


def random_batch(batch: int, hw: tuple[int, int], max_boxes: int, num_classes: int, seed=0):
    rng = np.random.default_rng(seed)
    h, w = hw
    n = rng.integers(1, max_boxes + 1, size=batch)
    xy = rng.uniform(0, 0.7, size=(batch, max_boxes, 2)) * [w, h]
    wh = rng.uniform(0.08, 0.3, size=(batch, max_boxes, 2)) * [w, h]
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
    valid = np.arange(max_boxes)[None] < n[:, None]
    return dict(
        image=rng.normal(size=(batch, h, w, 3)).astype(np.float32),
        image_hw=np.tile(np.asarray(hw, np.int32), (batch, 1)),
        boxes=boxes,
        labels=rng.integers(0, num_classes, size=(batch, max_boxes)).astype(np.int32),
        valid=valid,
        ignore=np.zeros((batch, max_boxes), bool),
    )


def bench(name: str, config, batch_size: int, hw: tuple[int, int], steps: int) -> float:
    config.data.image_size = hw
    config.data.num_classes = config.data.num_classes or 80  # COCO's (no dataset read here)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), hw)
    schedule = optim.make_schedule(config.optimizer, 1000, 100)
    tx = optim.make_optimizer(config.optimizer, schedule, det.trainable_mask(params))
    state = create_train_state(params, det_state, tx)
    step = jax.jit(functools.partial(train_step, detector=det, tx=tx), donate_argnums=(0,),
                   compiler_options=platform_lib.from_config(config).compiler_options())
    batch = jax.device_put(random_batch(batch_size, hw, config.data.max_boxes,
                                        config.data.num_classes))
    rng = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp_mb = getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem is not None else float("nan")
    state, m = compiled(state, batch, rng)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, batch, rng)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{name:32s} compile {compile_s:6.1f} s | step {med * 1e3:8.1f} ms | "
        f"{batch_size / med:7.1f} img/s | temp {temp_mb:8.1f} MiB | peak RSS {rss_mb:8.0f} MiB"
    )
    return med


def bench_both(name: str, get_config, batch_size: int, hw: tuple[int, int], steps: int):
    """The default step, then with XLA's conv kernel gradients, then with YNNPACK flipped."""
    default = platform_lib.from_config(get_config())
    flipped = "off" if default.ynnpack else "on"
    print(f"  default platform: {default}")
    runs = (("default", "auto", "auto"), ("xla kernel grads", "off", "auto"),
            (f"YNNPACK {flipped}", "auto", flipped))
    times = {}
    for label, cpu_conv, ynnpack in runs:
        config = get_config()
        config.platform.cpu_conv, config.platform.ynnpack = cpu_conv, ynnpack
        times[label] = bench(f"{name} [{label}]", config, batch_size, hw, steps)
    for label in times:
        if label != "default":
            print(f"  step time with {label} / default = {times[label] / times['default']:.2f}x")
    return times["default"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip-r50", action="store_true")
    ap.add_argument("--torch-python", default="",
                    help="a Python with torch + torchvision: measure the reference here")
    args = ap.parse_args()
    print(f"devices: {jax.devices()}")
    bench_both("ATSS tiny (16 x 128x128)", atss_tiny_shapes.get_config, 16, (128, 128),
               args.steps)
    if not args.skip_r50:
        med = bench_both("ATSS R50-FPN (2 x 512x512)", atss_r50_fpn_1x_coco.get_config, 2,
                         (512, 512), max(args.steps // 4, 3))
        ref, where = TORCHVISION_R50_STEP_S, "constant from another machine"
        if args.torch_python:
            out = subprocess.run(
                [args.torch_python, os.path.join(HERE, "torchvision_retinanet_step.py")],
                check=True, capture_output=True, text=True).stdout.strip().splitlines()
            print(f"torchvision RetinaNet R50-FPN (2 x 512x512): {out[0]}")
            ref, where = float(out[-1].split("=")[1]), "measured now"
        print(f"R50 step / torchvision reference ({ref:.2f} s, {where}): {med / ref:.2f}x")


if __name__ == "__main__":
    jnp.zeros(()).block_until_ready()
    main()
