"""The reference figures of train_step_bench's two-stage settings: torchvision's Faster /
Mask R-CNN R50-FPN train step.

    python benchmarks/torchvision_rcnn_step.py --model faster_rcnn|mask_rcnn [--steps 5]
        [--threads 2] [--size 512]

Runs with any Python that has torch and torchvision (not jaxdet's dependencies);
`train_step_bench.py --detectors faster_rcnn,mask_rcnn --torch-python PYTHON` runs it
right after each of its own settings and prints the ratios. Setting:
`fasterrcnn_resnet50_fpn` / `maskrcnn_resnet50_fpn` (weights=None,
weights_backbone=None: random weights, every backbone stage trained with BatchNorm;
91 classes; torchvision's default RPN and RoI settings), 2 images of 512 x 512 with 3
and 8 random boxes (and, for Mask R-CNN, box-shaped masks at the input resolution),
`min_size = max_size = 512` so no resizing changes the input, SGD momentum 0.9. Prints
the median step time (forward + backward + update) in seconds, `step_s=...`, and the
process's peak resident memory, `peak_rss_mb=...`.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time


def peak_rss_mb() -> float:
    """The process's peak resident memory (MiB): Linux's VmHWM (since exec; getrusage's
    ru_maxrss also counts the parent's pages at the fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("faster_rcnn", "mask_rcnn"), required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--size", type=int, default=512, help="image side (min_size = max_size)")
    args = ap.parse_args()
    import torch
    import torchvision

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build = {"faster_rcnn": torchvision.models.detection.fasterrcnn_resnet50_fpn,
             "mask_rcnn": torchvision.models.detection.maskrcnn_resnet50_fpn}[args.model]
    size = args.size
    model = build(weights=None, weights_backbone=None, num_classes=91, min_size=size,
                  max_size=size)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    targets = []
    scale = size / 512
    for n in (3, 8):
        xy = torch.rand(n, 2, generator=g) * 350 * scale
        wh = (20 + torch.rand(n, 2, generator=g) * 140) * scale
        boxes = torch.cat([xy, xy + wh], 1)
        target = dict(boxes=boxes, labels=torch.randint(1, 91, (n,), generator=g))
        if args.model == "mask_rcnn":
            masks = torch.zeros(n, size, size, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
                masks[i, y1:y2, x1:x2] = 1
            target["masks"] = masks
        targets.append(target)
    times = []
    for i in range(args.steps + 1):
        t = time.perf_counter()
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} threads, {args.model}")
    print(f"step_s={statistics.median(times):.3f}")
    print(f"peak_rss_mb={peak_rss_mb():.0f}")


if __name__ == "__main__":
    main()
