"""Train-step speed and memory: the tiny ATSS config (shapes, 128 px), ATSS R50-FPN
and Faster / Mask R-CNN R50-FPN at 2x512x512, on random inputs with realistic GT.

  python benchmarks/train_step_bench.py [--detectors atss,faster_rcnn,mask_rcnn,...]
      [--skip-r50] [--steps 20] [--torch-python PY] [--size 512]

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

`--detectors` (default `atss`, the settings above) also selects the two-stage
settings: Faster R-CNN and Mask R-CNN R50-FPN (`configs/faster_rcnn/
faster_rcnn_r50_fpn_1x_coco.py`, `configs/mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py`), 2
images with torchvision's reference GT (3 and 8 random boxes: `torchvision_batch`), for
Mask R-CNN with box-shaped instance masks at the config's `data.mask_stride`; the
default platform only. Their references are
torchvision's `fasterrcnn_resnet50_fpn` / `maskrcnn_resnet50_fpn` train steps
(`benchmarks/torchvision_rcnn_step.py`, run with `--torch-python`); the step-time and
the peak-RSS ratios jaxdet / torchvision are printed. With several detectors each
runs in its own process, so that each peak RSS is its own. `aligndet`, `ga_retinanet`,
`ga_retinanet_plain` (feature adaption by a plain 3x3 conv), `reppoints` and
`ga_faster_rcnn` time the method's R50-FPN config
(`configs/{aligndet,guided_anchoring,reppoints}/*_r50_fpn_1x_coco.py`)
after jaxdet's RetinaNet R50-FPN (`configs/retinanet/retinanet_r50_fpn_1x_coco.py`), all in
one process, at 2 x size x size with `random_batch`'s GT, default platform, and print
each ratio of step times method / RetinaNet.
`yolov3` times YOLOv3 Darknet-53 (`configs/yolov3/yolov3_d53_coco.py`, GN for BN) at
2 x 416 x 416 against mmdetection 3.3's YOLOv3 train step
(`benchmarks/mmdet_yolov3_step.py`, with `--torch-python` a Python with torch and
mmdetection).
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

from configs.aligndet import aligndet_r50_fpn_1x_coco  # noqa: E402
from configs.atss import atss_r50_fpn_1x_coco, atss_tiny_shapes  # noqa: E402
from configs.faster_rcnn import faster_rcnn_r50_fpn_1x_coco  # noqa: E402
from configs.guided_anchoring import (  # noqa: E402
    ga_faster_rcnn_r50_fpn_1x_coco,
    ga_retinanet_r50_fpn_1x_coco,
)
from configs.mask_rcnn import mask_rcnn_r50_fpn_1x_coco  # noqa: E402
from configs.reppoints import reppoints_moment_r50_fpn_1x_coco  # noqa: E402
from configs.retinanet import retinanet_r50_fpn_1x_coco  # noqa: E402
from configs.yolov3 import yolov3_d53_coco  # noqa: E402
from jaxdet import detectors  # noqa: E402
from jaxdet import platform as platform_lib  # noqa: E402
from jaxdet.train import optim  # noqa: E402
from jaxdet.train.step import create_train_state, train_step  # noqa: E402

TORCHVISION_R50_STEP_S = 2.2  # torchvision's step time (s), measured on another machine
HERE = os.path.dirname(os.path.abspath(__file__))
TWO_STAGE = {  # --detectors name: (config, title)
    "faster_rcnn": (faster_rcnn_r50_fpn_1x_coco.get_config, "Faster R-CNN R50-FPN"),
    "mask_rcnn": (mask_rcnn_r50_fpn_1x_coco.get_config, "Mask R-CNN R50-FPN"),
}
# One-stage R50-FPN methods timed against jaxdet's RetinaNet R50-FPN step in the same run.


def _ga_plain():
    config = ga_retinanet_r50_fpn_1x_coco.get_config()
    config.ga.feature_adaption = False
    return config


AGAINST_RETINANET = {  # --detectors name: (config, title)
    "aligndet": (aligndet_r50_fpn_1x_coco.get_config, "AlignDet R50-FPN"),
    "ga_retinanet": (ga_retinanet_r50_fpn_1x_coco.get_config, "GA-RetinaNet R50-FPN"),
    "ga_retinanet_plain": (_ga_plain, "GA-RetinaNet R50-FPN, plain 3x3 adaption"),
    "reppoints": (reppoints_moment_r50_fpn_1x_coco.get_config, "RepPoints (moment) R50-FPN"),
    "ga_faster_rcnn": (ga_faster_rcnn_r50_fpn_1x_coco.get_config, "GA-Faster R-CNN R50-FPN"),
}
# YOLOv3 Darknet-53 at 2 x 416 x 416, against mmdetection's (`mmdet_yolov3_step.py`).
YOLO_SIZE = 416
DETECTORS = ("atss", *TWO_STAGE, *AGAINST_RETINANET, "yolov3")


def peak_rss_mb() -> float:
    """The process's peak resident memory (MiB): Linux's VmHWM (since exec; getrusage's
    ru_maxrss also counts the parent's pages at the fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_batch(batch: int, hw: tuple[int, int], max_boxes: int, num_classes: int, seed=0,
                 mask_stride: int = 0) -> dict[str, np.ndarray]:
    """1 to max_boxes random boxes per image (8-30 % of the side); with mask_stride > 0
    also 'masks' [batch, max_boxes, h / s, w / s] uint8, each box filled."""
    rng = np.random.default_rng(seed)
    h, w = hw
    n = rng.integers(1, max_boxes + 1, size=batch)
    xy = rng.uniform(0, 0.7, size=(batch, max_boxes, 2)) * [w, h]
    wh = rng.uniform(0.08, 0.3, size=(batch, max_boxes, 2)) * [w, h]
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
    valid = np.arange(max_boxes)[None] < n[:, None]
    out = dict(
        image=rng.normal(size=(batch, h, w, 3)).astype(np.float32),
        image_hw=np.tile(np.asarray(hw, np.int32), (batch, 1)),
        boxes=boxes,
        labels=rng.integers(0, num_classes, size=(batch, max_boxes)).astype(np.int32),
        valid=valid,
        ignore=np.zeros((batch, max_boxes), bool),
    )
    if mask_stride:
        s = mask_stride
        masks = np.zeros((batch, max_boxes, h // s, w // s), np.uint8)
        for b, m in zip(*np.nonzero(valid)):
            x1, y1 = np.floor(boxes[b, m, :2] / s).astype(int)
            x2, y2 = np.ceil(boxes[b, m, 2:] / s).astype(int)
            masks[b, m, y1:y2, x1:x2] = 1
        out["masks"] = masks
    return out


def torchvision_batch(hw: tuple[int, int], max_boxes: int, num_classes: int, seed=0,
                      mask_stride: int = 0, counts: tuple[int, ...] = (3, 8)
                      ) -> dict[str, np.ndarray]:
    """`torchvision_rcnn_step.py`'s GT: image i holds counts[i] random boxes (corner
    uniform in [0, 350), side 20-160 px, scaled by side / 512), box-shaped masks."""
    out = random_batch(len(counts), hw, max_boxes, num_classes, seed, mask_stride)
    rng = np.random.default_rng(seed)
    h, w = hw
    scale = np.asarray([w, h]) / 512
    valid = np.arange(max_boxes)[None] < np.asarray(counts)[:, None]
    xy = rng.uniform(0, 350, size=(len(counts), max_boxes, 2)) * scale
    wh = (20 + rng.uniform(0, 140, size=(len(counts), max_boxes, 2))) * scale
    boxes = np.where(valid[..., None], np.concatenate([xy, xy + wh], -1), 0).astype(np.float32)
    out.update(boxes=boxes, valid=valid)
    if mask_stride:
        masks = np.zeros_like(out["masks"])
        for b, m in zip(*np.nonzero(valid)):
            x1, y1, x2, y2 = np.round(boxes[b, m] / mask_stride).astype(int)
            masks[b, m, y1:y2, x1:x2] = 1
        out["masks"] = masks
    return out


def bench(name: str, config, batch_size: int, hw: tuple[int, int], steps: int,
          make_batch=random_batch) -> tuple[float, float]:
    """Compiles and times the train step; prints the figures, returns (median step s,
    the process's peak RSS MiB so far)."""
    config.data.image_size = hw
    config.data.num_classes = config.data.num_classes or 80  # COCO's (no dataset read here)
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), hw)
    schedule = optim.make_schedule(config.optimizer, 1000, 100)
    tx = optim.make_optimizer(config.optimizer, schedule, det.trainable_mask(params))
    state = create_train_state(params, det_state, tx)
    step = jax.jit(functools.partial(train_step, detector=det, tx=tx), donate_argnums=(0,),
                   compiler_options=platform_lib.from_config(config).compiler_options())
    mask_stride = int(config.data.mask_stride) if config.data.with_masks else 0
    if make_batch is random_batch:
        batch = random_batch(batch_size, hw, config.data.max_boxes, config.data.num_classes,
                             mask_stride=mask_stride)
    else:
        batch = make_batch(hw, config.data.max_boxes, config.data.num_classes,
                           mask_stride=mask_stride)
    batch = jax.device_put(batch)
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
    rss_mb = peak_rss_mb()
    print(
        f"{name:32s} compile {compile_s:6.1f} s | step {med * 1e3:8.1f} ms | "
        f"{batch_size / med:7.1f} img/s | temp {temp_mb:8.1f} MiB | peak RSS {rss_mb:8.0f} MiB"
    )
    return med, rss_mb


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
        times[label] = bench(f"{name} [{label}]", config, batch_size, hw, steps)[0]
    for label in times:
        if label != "default":
            print(f"  step time with {label} / default = {times[label] / times['default']:.2f}x")
    return times["default"]


def run_atss(args: argparse.Namespace) -> None:
    bench_both("ATSS tiny (16 x 128x128)", atss_tiny_shapes.get_config, 16, (128, 128),
               args.steps)
    if args.skip_r50:
        return
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


def run_two_stage(key: str, args: argparse.Namespace) -> None:
    """One two-stage setting (default platform), then its torchvision reference."""
    get_config, title = TWO_STAGE[key]
    ref_cmd = [os.path.join(HERE, "torchvision_rcnn_step.py"), "--model", key,
               "--size", str(args.size)]
    run_referenced(get_config, title, args.size, ref_cmd, "torchvision", args)


def run_against_retinanet(keys: list[str], args: argparse.Namespace) -> None:
    """jaxdet's RetinaNet R50-FPN step, then each method's (2 x size x size, random GT,
    default platform), all in this process; prints each step-time ratio method /
    RetinaNet (the peak RSS after the first is the process's so far)."""
    hw, steps = (args.size, args.size), max(args.steps // 4, 3)
    size = f"(2 x {args.size}x{args.size})"
    ref, _ = bench(f"RetinaNet R50-FPN {size}", retinanet_r50_fpn_1x_coco.get_config(), 2, hw,
                   steps)
    for key in keys:
        get_config, title = AGAINST_RETINANET[key]
        med, _ = bench(f"{title} {size}", get_config(), 2, hw, steps)
        print(f"{title} step / RetinaNet R50-FPN step: {med / ref:.2f}x", flush=True)


def run_yolov3(args: argparse.Namespace) -> None:
    """YOLOv3 D53 (default platform), then mmdetection's YOLOv3 step."""
    ref_cmd = [os.path.join(HERE, "mmdet_yolov3_step.py"), "--size", str(YOLO_SIZE)]
    run_referenced(yolov3_d53_coco.get_config, "YOLOv3 Darknet-53", YOLO_SIZE, ref_cmd,
                   "mmdetection", args)


def run_referenced(get_config, title: str, size: int, ref_cmd: list[str], ref_name: str,
                   args: argparse.Namespace) -> None:
    """2 images of size x size (default platform), then the reference run by
    `--torch-python` (`ref_cmd`: its script and arguments); prints the ratios."""
    name = f"{title} (2 x {size}x{size})"
    print(f"  platform: {platform_lib.from_config(get_config())}")
    med, rss = bench(name, get_config(), 2, (size, size), max(args.steps // 4, 3),
                     make_batch=torchvision_batch)
    if not args.torch_python:
        print(f"{title}: no {ref_name} reference (--torch-python)")
        return
    out = subprocess.run(
        [args.torch_python, *ref_cmd, "--threads", str(args.threads)],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()
    ref = dict(line.split("=") for line in out if "=" in line)
    ref_s, ref_rss = float(ref["step_s"]), float(ref["peak_rss_mb"])
    print(f"{ref_name} {title} ({out[0]}): step {ref_s * 1e3:.1f} ms, "
          f"peak RSS {ref_rss:.0f} MiB")
    print(f"{title} jaxdet / {ref_name}: step time {med / ref_s:.2f}x, "
          f"peak RSS {rss / ref_rss:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--detectors", default="atss",
                    help=f"comma-separated, of {','.join(DETECTORS)}")
    ap.add_argument("--skip-r50", action="store_true", help="ATSS: the tiny setting only")
    ap.add_argument("--size", type=int, default=512, help="image side of the two-stage settings")
    ap.add_argument("--torch-python", default="",
                    help="a Python with torch + torchvision: measure the reference here")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of the two-stage references (0: torch's default)")
    args = ap.parse_args()
    names = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = sorted(set(names) - set(DETECTORS))
    if unknown or not names:
        ap.error(f"--detectors: unknown {unknown}, choose from {DETECTORS}")
    if len(names) > 1 and set(names) <= set(AGAINST_RETINANET):  # one RetinaNet reference
        run_against_retinanet(names, args)
        return
    if len(names) > 1:  # one process each: each peak RSS is its own
        argv = [f"--steps={args.steps}", f"--size={args.size}", f"--threads={args.threads}",
                f"--torch-python={args.torch_python}", *(["--skip-r50"] * args.skip_r50)]
        for name in names:
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv,
                            f"--detectors={name}"], check=True)
        return
    print(f"devices: {jax.devices()}")
    if names[0] == "atss":
        run_atss(args)
    elif names[0] == "yolov3":
        run_yolov3(args)
    elif names[0] in AGAINST_RETINANET:
        run_against_retinanet(names, args)
    else:
        run_two_stage(names[0], args)


if __name__ == "__main__":
    jnp.zeros(()).block_until_ready()
    main()
