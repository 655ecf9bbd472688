"""The tiny two-stage detectors against the tiny ATSS on `shapes`: box AP of Faster
R-CNN and Mask R-CNN (tiny ResNet-18/16 + FPN P2-P5) next to ATSS (the same backbone,
FPN P3-P5) after the same number of images seen, and Mask R-CNN's mask AP against its
own box AP.

  python experiments/two_stage/run.py [--steps 400] [--recipe adamw|config|sgd] \
      [--seeds 3] [--workdir runs/two_stage] [--out experiments/two_stage]

Every row trains with seeds 0..N-1 in `<workdir>/seed<k>/v<i>` (resumed when rerun).
Writes the table of mean ± std over the seeds into README.md (between markers) and
results.json (the aggregate and the per-seed values) into --out.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.atss import atss_tiny_shapes  # noqa: E402
from configs.faster_rcnn import faster_rcnn_tiny_shapes  # noqa: E402
from configs.mask_rcnn import mask_rcnn_tiny_shapes  # noqa: E402
from experiments import ap_rows, recipe  # noqa: E402


def variants(steps: int, recipe_name: str = "adamw"):
    rows = {
        "ATSS": atss_tiny_shapes.get_config(),
        "Faster R-CNN": faster_rcnn_tiny_shapes.get_config(),
        "Mask R-CNN": mask_rcnn_tiny_shapes.get_config(),
    }
    for c in rows.values():
        recipe.apply(c, steps, recipe_name)
    return rows


def main() -> None:
    ap_rows.main(variants, lambda name: False, "runs/two_stage", HERE, default_steps=400)


if __name__ == "__main__":
    main()
