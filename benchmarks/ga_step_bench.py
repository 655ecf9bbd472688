"""Guided Anchoring's train step against RetinaNet's, R50-FPN at 2 x 512 x 512, in one
process (the ratio is the figure; `train_step_bench.bench` compiles and times each).

  python benchmarks/ga_step_bench.py [--steps 5]

Prints compile time, median step time, images/s, temp memory and peak RSS of RetinaNet
R50-FPN (`configs/retinanet/retinanet_r50_fpn_1x_coco.py`) and GA-RetinaNet R50-FPN
(`configs/guided_anchoring/ga_retinanet_r50_fpn_1x_coco.py`, also without feature
adaption), random inputs with 1-100 boxes per image, and the step-time ratios.
Figures: benchmarks/README.md ("Guided Anchoring").
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_step_bench import bench  # noqa: E402
from configs.guided_anchoring import ga_retinanet_r50_fpn_1x_coco  # noqa: E402
from configs.retinanet import retinanet_r50_fpn_1x_coco  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--skip-plain", action="store_true", help="no feature-adaption ablation row")
    args = ap.parse_args()
    hw = (512, 512)
    base = bench("RetinaNet R50-FPN 2x512", retinanet_r50_fpn_1x_coco.get_config(), 2, hw,
                 args.steps)[0]
    rows = {"GA-RetinaNet": ga_retinanet_r50_fpn_1x_coco.get_config()}
    if not args.skip_plain:
        plain = ga_retinanet_r50_fpn_1x_coco.get_config()
        plain.ga.feature_adaption = False
        rows["GA-RetinaNet (plain 3x3)"] = plain
    for name, config in rows.items():
        t = bench(f"{name} R50-FPN 2x512", config, 2, hw, args.steps)[0]
        print(f"  {name} / RetinaNet step time = {t / base:.2f}x")


if __name__ == "__main__":
    main()
