"""The ATSS paper's central experiment at small scale (Table 1/2 of Zhang et al.):
RetinaNet with one anchor per location and max-IoU assignment, the same
detector with ATSS assignment, and FCOS, trained with one schedule on `shapes`.

  python experiments/atss_gap/run.py [--steps 1000] [--recipe adamw|config] \
      [--workdir runs/atss_gap]

Writes the AP table into experiments/atss_gap/README.md (between markers) and
results.json beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.fcos import fcos_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet.train import loop  # noqa: E402


def variants(steps: int, recipe_name: str = "adamw"):
    def retina(assigner: str):
        c = retinanet_tiny_shapes.get_config()
        c.anchor.scales_per_octave = 1
        c.anchor.ratios = (1.0,)
        c.anchor.octave_base_scale = 4
        c.assigner.name = assigner
        c.test.nms_iou = 0.6
        return c

    rows = {
        "RetinaNet (#A=1, max-IoU)": retina("max_iou"),
        "RetinaNet (#A=1, ATSS)": retina("atss"),
        "FCOS (centre sampling)": fcos_tiny_shapes.get_config(),
    }
    for c in rows.values():
        recipe.apply(c, steps, recipe_name)
        c.test.nms_iou = 0.6
    return rows


def write_table(results: dict, steps: str) -> None:
    lines = [
        "<!-- results:start -->",
        f"Trained {steps} on `shapes` (128 px), same schedule for all.",
        "",
        "| detector | AP | AP50 | AP75 | APs | APm | APl |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        lines.append(
            f"| {name} | {s['AP']:.3f} | {s['AP50']:.3f} | {s['AP75']:.3f} | "
            f"{s['APs']:.3f} | {s['APm']:.3f} | {s['APl']:.3f} |"
        )
    lines.append("<!-- results:end -->")
    report.write_results(os.path.join(HERE, "README.md"), lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/atss_gap")
    args = ap.parse_args()
    results = {}
    for i, (name, config) in enumerate(variants(args.steps, args.recipe).items()):
        print(f"=== {name}")
        stats = loop.train_and_evaluate(config, os.path.join(args.workdir, f"v{i}"))
        results[name] = stats
        with open(os.path.join(HERE, "results.json"), "w") as f:
            json.dump({"steps": args.steps, "results": results}, f, indent=2)
    write_table(results, recipe.describe(args.steps, args.recipe))


if __name__ == "__main__":
    main()
