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

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from configs.reppoints import reppoints_tiny_shapes  # noqa: E402
from configs.retinanet import retinanet_tiny_shapes  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet.train import loop  # noqa: E402

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


KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def write_table(results: dict, schedule: str, out: str) -> None:
    """results: {row: aggregate_seeds cell per COCO key}."""
    lines = [
        "<!-- results:start -->",
        f"Trained {schedule} on `shapes` (128 px), same schedule for all.",
        "",
        "| detector | " + " | ".join(KEYS) + " |",
        "|---|" + "---|" * len(KEYS),
    ]
    for name, s in results.items():
        lines.append(f"| {name} | " + " | ".join(report.pm(s[k]) for k in KEYS) + " |")
    lines.append("<!-- results:end -->")
    report.write_results(os.path.join(out, "README.md"), lines,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--workdir", default="runs/reppoints")
    ap.add_argument("--out", default=HERE, help="where results.json and README.md go")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict[str, list] = {}
    for seed in range(args.seeds):
        for i, (name, config) in enumerate(variants(args.steps, args.recipe).items()):
            print(f"=== {name} (seed {seed})", flush=True)
            recipe.seeded(config, seed).data.val_split = args.val_split
            workdir = recipe.row_workdir(args.workdir, args.steps, args.recipe, seed, f"v{i}",
                                         baseline=name == BASELINE)
            per_seed.setdefault(name, []).append(loop.train_and_evaluate(config, workdir))
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "recipe": args.recipe, "seeds": args.seeds,
                           "results": {n: report.aggregate_seeds(v) for n, v in per_seed.items()},
                           "per_seed": per_seed}, f, indent=2)
    results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
    write_table(results, recipe.describe(args.steps, args.recipe, args.seeds), args.out)


if __name__ == "__main__":
    main()
