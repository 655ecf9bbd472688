"""The reference figure of roi_align_bench: `torchvision.ops.roi_align`, same setting.

    python benchmarks/torchvision_roi_align.py [--rois 512] [--channels 256]

Runs with any Python that has torch and torchvision (not jaxdet's dependencies);
`roi_align_bench.py --torch-python PYTHON` runs it after its own variants and prints
the ratios. Same map ([2, C, 100, 152], NCHW as torchvision wants), the same random
RoIs (seeded as in roi_align_bench), 7x7, spatial_scale 1/8, aligned=True; prints one
line `sr<k>_ms=...` per sampling ratio (0 = adaptive, 2).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rois", type=int, default=512)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    b, h, w, c, r = 2, 100, 152, args.channels, args.rois
    stride = 8.0
    rng.normal(size=(b, h, w, c))  # keep the RoI draws equal to roi_align_bench's
    size = rng.uniform(4, 28, (r, 2)) * stride
    x1 = rng.uniform(0, w * stride - size[:, 0])
    y1 = rng.uniform(0, h * stride - size[:, 1])
    bidx = rng.integers(0, b, r)
    rois = torch.tensor(np.stack([bidx, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1),
                        dtype=torch.float32)
    feat = torch.randn(b, c, h, w)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} threads")
    for sr in (0, 2):
        def f(sr=sr):
            return torchvision.ops.roi_align(feat, rois, 7, 1 / stride, sr, True)

        f()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        print(f"sr{sr}_ms={statistics.median(times) * 1e3:.2f}")


if __name__ == "__main__":
    main()
