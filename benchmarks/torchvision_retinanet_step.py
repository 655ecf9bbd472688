"""The reference figure of train_step_bench: torchvision's RetinaNet R50-FPN train step.

    python benchmarks/torchvision_retinanet_step.py [--steps 5] [--threads 2]

Runs with any Python that has torch and torchvision (not jaxdet's dependencies: e.g.
`pip install torch torchvision` in a separate venv); `train_step_bench.py
--torch-python PYTHON` runs it right after its own R50 setting and prints the ratio.
Setting: `retinanet_resnet50_fpn` (random weights, 91 classes), 2 images of 512x512
with 1-8 random boxes each, `min_size = max_size = 512` so no resizing changes the
input, SGD momentum 0.9; prints the median step time (forward + backward + update)
in seconds as the last line `step_s=...`.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    import torch
    import torchvision

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=512, max_size=512
    )
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 512, 512, generator=g) for _ in range(2)]
    targets = []
    for n in (3, 8):
        xy = torch.rand(n, 2, generator=g) * 350
        wh = 20 + torch.rand(n, 2, generator=g) * 140
        targets.append(dict(boxes=torch.cat([xy, xy + wh], 1),
                            labels=torch.randint(1, 91, (n,), generator=g)))
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
          f"{torch.get_num_threads()} threads")
    print(f"step_s={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
