"""RepPoints' pseudo-box transforms at small scale (Yang et al., ICCV 2019, Table 4):
RepPoints with the moment, min-max and partial min-max transforms against the box-based
9-anchor RetinaNet of the same backbone and FPN (the baseline the other experiments
share, trained in `recipe.baseline_workdir`), one schedule on `shapes`.

  python experiments/reppoints/run.py [--steps 1000] [--recipe adamw|config|sgd] \
      [--seeds 3] [--workdir runs/reppoints] [--out experiments/reppoints]

Every row trains with seeds 0..N-1 in `<workdir>/seed<k>/v<i>` (resumed when rerun).
Writes the table of mean ± std over the seeds into README.md (between markers) and
results.json (the aggregate and the per-seed values) into --out.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.reppoints import reppoints_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import ap_rows, recipe  # noqa: E402

BASELINE = "RetinaNet (#A=9, max-IoU, boxes)"


def variants(steps: int, recipe_name: str = "adamw"):
    def reppoints(transform: str):
        c = reppoints_tiny_shapes.get_config()
        c.reppoints.transform = transform
        return c

    rows = {
        BASELINE: retinanet_tiny_shapes.get_config(),
        "RepPoints (moment)": reppoints("moment"),
        "RepPoints (min-max)": reppoints("minmax"),
        "RepPoints (partial min-max)": reppoints("partial_minmax"),
    }
    for c in rows.values():
        recipe.apply(c, steps, recipe_name)
    return rows


def main() -> None:
    ap_rows.main(variants, lambda name: name == BASELINE, "runs/reppoints", HERE)


if __name__ == "__main__":
    main()
