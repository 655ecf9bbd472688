"""The ATSS paper's central experiment at small scale (Table 1/2 of Zhang et al.):
RetinaNet with one anchor per location and max-IoU assignment, the same
detector with ATSS assignment, and FCOS, trained with one schedule on `shapes`;
the 9-anchor RetinaNet the other experiments compare against is the first row (it
trains in the shared baseline workdir, `recipe.baseline_workdir`).

  python experiments/atss_gap/run.py [--steps 1000] [--recipe adamw|config] \
      [--seeds 3] [--workdir runs/atss_gap] [--out experiments/atss_gap]

Every row trains with seeds 0..N-1 in `<workdir>/seed<k>/v<i>` (resumed when rerun).
Writes the table of mean ± std over the seeds into README.md (between markers) and
results.json (the aggregate and the per-seed values) into --out.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.fcos import fcos_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import ap_rows, recipe  # noqa: E402


def variants(steps: int, recipe_name: str = "adamw"):
    def retina(assigner: str):
        c = retinanet_tiny_shapes.get_config()
        c.anchor.scales_per_octave = 1
        c.anchor.ratios = (1.0,)
        c.anchor.octave_base_scale = 4
        c.assigner.name = assigner
        c.test.nms_iou = 0.6
        return c

    nine = retinanet_tiny_shapes.get_config()  # the 9-anchor baseline of the other experiments
    rows = {
        "RetinaNet (#A=9, max-IoU)": nine,
        "RetinaNet (#A=1, max-IoU)": retina("max_iou"),
        "RetinaNet (#A=1, ATSS)": retina("atss"),
        "FCOS (centre sampling)": fcos_tiny_shapes.get_config(),
    }
    for c in rows.values():
        recipe.apply(c, steps, recipe_name)
        c.test.nms_iou = 0.6
    return rows


def main() -> None:
    ap_rows.main(variants, lambda name: name.startswith("RetinaNet (#A=9"), "runs/atss_gap", HERE)


if __name__ == "__main__":
    main()
