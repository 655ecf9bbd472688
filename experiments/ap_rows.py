"""The AP-per-row experiments (`atss_gap`, `reppoints`, `aligndet`): every row of a dict
of configs trained for seeds 0..N-1 (row by row) and evaluated, results.json written
after each training, and the mean ± std COCO table of the finished rows written into the
experiment's README between its markers after each row."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

from experiments import recipe, report
from jaxdet.train import loop

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SEGM_KEYS = ("segm_AP", "segm_AP50", "segm_AP75")  # columns added when a row has masks


def write_table(results: dict, schedule: str, out: str, template: str) -> None:
    """results: {row: aggregate_seeds cell per COCO key} -> `out`/README.md; rows
    without a column's key (a box detector's segm AP) show '–'."""
    keys = KEYS + tuple(k for k in SEGM_KEYS if any(k in s for s in results.values()))
    lines = [
        "<!-- results:start -->",
        f"Trained {schedule} on `shapes` (128 px), same schedule for all.",
        "",
        "| detector | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, s in results.items():
        cells = (report.pm(s[k]) if k in s else "–" for k in keys)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("<!-- results:end -->")
    report.write_results(os.path.join(out, "README.md"), lines, template=template)


def main(variants: Callable[[int, str], dict], is_baseline: Callable[[str], bool],
         default_workdir: str, here: str, default_steps: int = 1000,
         after: Callable[[argparse.Namespace], None] | None = None) -> None:
    """The command line of an AP-per-row experiment whose rows are `variants(steps,
    recipe)`; rows where `is_baseline(name)` share the baseline's workdir. `after(args)`,
    if given, runs once every row is trained and the table written (e.g. a figure)."""
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap, steps=default_steps)
    ap.add_argument("--workdir", default=default_workdir)
    ap.add_argument("--out", default=here, help="where results.json and README.md go")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_seed: dict[str, list] = {}
    names = list(variants(args.steps, args.recipe))
    for i, name in enumerate(names):  # row by row: a finished row has all its seeds
        for seed in range(args.seeds):
            config = variants(args.steps, args.recipe)[name]
            print(f"=== {name} (seed {seed})", flush=True)
            recipe.seeded(config, seed).data.val_split = args.val_split
            workdir = recipe.row_workdir(args.workdir, args.steps, args.recipe, seed, f"v{i}",
                                         baseline=is_baseline(name))
            per_seed.setdefault(name, []).append(loop.train_and_evaluate(config, workdir))
            results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"steps": args.steps, "recipe": args.recipe, "seeds": args.seeds,
                           "results": results, "per_seed": per_seed}, f, indent=2)
        # The table of the rows finished so far (all rows once the last one is).
        write_table(results, recipe.describe(args.steps, args.recipe, args.seeds), args.out,
                    os.path.join(here, "README.md"))
    if after is not None:
        after(args)
