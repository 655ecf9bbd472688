"""Sampling-free training at small scale: why BCE without sampling needs the
optimal bias and the guided loss (Chen et al., IEEE TIP 2021, arXiv 1909.04868).

Trains RetinaNet (tiny ResNet-18/16 + FPN P3-P5) on `shapes` (128 px) five ways:
  focal loss                        the baseline (focal 0.25/2, pi = 0.01)
  BCE + default bias                plain BCE over all priors, class bias 0 (pi = 0.5)
  BCE + optimal bias                class bias -log((1 - pi) / pi), pi measured on shapes
  BCE + optimal bias + guided loss  the full sampling-free method (the paper)
  ... + uncertainty weighting       the later version: learned loss weights
                                    sum_i L_i / (2 sigma_i^2) + log sigma_i
logs the foreground / background BCE per step (metrics bce_fg / bce_bg of
jaxdet.detectors.sampling_free, in every run's metrics.jsonl), evaluates each,
and writes results.json (mean ± std over the seeds and the per-seed values),
cls_loss.png (the curves of seed 0) and the table in README.md (between the results
markers) into --out. Every variant trains with seeds 0..N-1 in
`<workdir>/seed<k>/v<i>` (resumed when rerun).

  python experiments/sampling_free/run.py [--steps 1000] [--recipe adamw|config|sgd] \
      [--seeds 3] [--workdir runs/sampling_free] [--out experiments/sampling_free]
  python experiments/sampling_free/run.py --estimate-prior   # pi of each base on shapes
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.sampling_free import sampling_free_tiny_shapes as sf_config  # noqa: E402
from experiments import recipe, report  # noqa: E402
from jaxdet import detectors  # noqa: E402
from jaxdet.data import pipeline  # noqa: E402
from jaxdet.losses import guided  # noqa: E402
from jaxdet.train import loop  # noqa: E402

VARIANTS = {
    # name: (cls_loss, prior_prob or None = the measured pi, weighting)
    "focal loss": ("focal", 0.01, "none"),
    "BCE + default bias": ("bce", 0.5, "none"),
    "BCE + optimal bias": ("bce", None, "none"),
    "BCE + optimal bias + guided loss": ("bce", None, "guided"),
    "BCE + optimal bias + uncertainty weighting": ("bce", None, "uncertainty"),
}
COLORS = ("tab:blue", "tab:red", "tab:orange", "tab:green", "tab:purple")


def variant_configs(steps: int, log_every: int, recipe_name: str = "adamw",
                    names: list[str] | None = None) -> dict:
    rows = {}
    for name, (cls_loss, prior, weighting) in VARIANTS.items():
        if names and name not in names:
            continue
        c = sf_config.get_config("retinanet")
        recipe.apply(c, steps, recipe_name)
        c.train.log_every = log_every
        c.train.checkpoint_every = max(steps, 1)
        sf = c.sampling_free
        sf.cls_loss = cls_loss
        sf.weighting = weighting
        if prior is not None:
            sf.prior_prob = prior
        if cls_loss == "focal":  # the baseline's own inference: fixed 0.05
            sf.adaptive_threshold = False
            c.test.score_thr = 0.05
        rows[name] = c
    return rows


def estimate_prior(base: str, max_batches: int = 0) -> tuple[float, list[float]]:
    """(pi, [pi_c]) of `base` on the shapes training split: the assigner's
    (#fg / #(fg + bg)) / C over one epoch (or `max_batches` batches)."""
    config = sf_config.get_config(base)
    pipeline.prepare(config.data)
    det = detectors.build(config)
    count = jax.jit(det.count_priors)
    batch_size = int(config.train.batch_size)
    n = pipeline.num_examples(config.data, config.data.train_split) // batch_size
    n = min(n, max_batches) if max_batches else n
    it = pipeline.make_train_iterator(config.data, batch_size=batch_size, seed=0)
    fg, num_all = 0.0, 0.0
    for _ in range(n):
        batch = next(it)
        keys = ("image", "boxes", "labels", "valid", "ignore")
        f, a = count({k: batch[k] for k in keys})
        fg, num_all = fg + np.asarray(f, np.float64), num_all + float(a)
    pi, per_class = guided.estimate_prior(fg, num_all)
    return float(pi), [float(p) for p in per_class]


def read_metrics(workdir: str) -> dict[str, np.ndarray]:
    path = os.path.join(workdir, "metrics.jsonl")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f]
    # Keep the last row of each step (a resumed run logs the steps after its checkpoint again).
    by_step = {r["step"]: r for r in rows if "train/bce_fg" in r}
    rows = [by_step[s] for s in sorted(by_step)]
    keys = ("step", "train/bce_fg", "train/bce_bg", "train/loss", "train/guided_scale")
    return {k.split("/")[-1]: np.array([r.get(k, np.nan) for r in rows]) for k in keys}


def plot(curves: dict, results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for (name, c), color in zip(curves.items(), COLORS):
        if len(c["step"]) == 0:
            continue
        for ax, key in zip(axes[:2], ("bce_fg", "bce_bg")):
            ax.plot(c["step"], np.maximum(c[key], 1e-6), color=color, label=name, lw=1.2)
    for ax, title in zip(axes[:2], ("foreground", "background")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{title} classification loss (BCE / num_pos)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    names = list(results)
    aps = [report.mean_of(results[n]["AP"]) for n in names]
    aps = [a if np.isfinite(a) else 0.0 for a in aps]
    axes[2].barh(range(len(names)), aps, color=COLORS[: len(names)])
    axes[2].set_yticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlabel("COCO AP on shapes val (mean over seeds)")
    for i, ap in enumerate(aps):
        tag = " (diverged)" if any(results[names[i]].get("diverged") or []) else ""
        axes[2].text(ap, i, f" {ap:.3f}{tag}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_summary(c: dict) -> dict:
    """One run's BCE terms: at the first logged step and over the last 10 % of them."""
    if not len(c["step"]):
        return {}
    k = max(len(c["step"]) // 10, 1)
    return {"fg_first": float(c["bce_fg"][0]), "fg_last": float(np.mean(c["bce_fg"][-k:])),
            "bg_first": float(c["bce_bg"][0]), "bg_last": float(np.mean(c["bce_bg"][-k:]))}


def write_table(results: dict, schedule: str, prior: float, out: str, tag: str = "") -> None:
    """results: {variant: aggregate_seeds of {COCO key: value, 'bce': loss_summary}}."""
    start, end = report.markers(tag)
    lines = [
        start,
        f"RetinaNet (tiny), {schedule} on `shapes` (128 px), pi = {prior:g} for",
        "the optimal bias. fg / bg: the BCE foreground / background terms (/ num_pos) at the",
        "first logged step and averaged over the last 10% of the logged steps.",
        "",
        f"![classification losses](cls_loss{'_' + tag if tag else ''}.png)",
        "",
        "| variant | fg first | fg last | bg first | bg last | AP | AP50 | AP75 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results.items():
        b = s.get("bce") or {}
        cell = lambda key, b=b: report.pm(b[key], ".3g") if key in b else "-"
        diverged = [d for d in s.get("diverged", []) if d]
        note = f" (diverged in {len(diverged)} seed(s))" if diverged else ""
        lines.append(
            f"| {name}{note} | {cell('fg_first')} | {cell('fg_last')} | {cell('bg_first')} | "
            f"{cell('bg_last')} | {report.pm(s['AP'])} | {report.pm(s['AP50'])} | "
            f"{report.pm(s['AP75'])} |"
        )
    lines.append(end)
    report.write_results(os.path.join(out, "README.md"), lines, tag=tag,
                         template=os.path.join(HERE, "README.md"))


def main() -> None:
    ap = argparse.ArgumentParser()
    recipe.add_arguments(ap)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--workdir", default="runs/sampling_free")
    ap.add_argument("--only", nargs="*", help="variant names to (re)run; others are read back")
    ap.add_argument("--variants", nargs="*", help="variant names to include (default: all)")
    ap.add_argument("--estimate-prior", action="store_true")
    ap.add_argument("--max-batches", type=int, default=0, help="for --estimate-prior")
    ap.add_argument("--out", default=HERE, help="where results.json, the PNG and README go")
    ap.add_argument("--val-split", default="val", help="e.g. 'val[:64]' for a quick check")
    args = ap.parse_args()
    if args.estimate_prior:
        for base in ("retinanet", "fcos", "atss"):
            pi, per_class = estimate_prior(base, args.max_batches)
            print(f"{base}: pi = {pi:.3g}, per class = {[f'{p:.3g}' for p in per_class]}")
        return

    os.makedirs(args.out, exist_ok=True)
    prior = float(sf_config.SHAPES_PRIOR["retinanet"])
    # The AdamW recipe writes results.json / cls_loss.png / the first README block; any
    # other recipe its own (results_sgd.json, cls_loss_sgd.png, block `sgd`).
    tag = "" if args.recipe == "adamw" else args.recipe
    suffix = f"_{tag}" if tag else ""
    results_path = os.path.join(args.out, f"results{suffix}.json")
    old = {}
    if args.only and os.path.exists(results_path):
        old = json.load(open(results_path)).get("per_seed", {})
    per_seed: dict[str, list] = {}
    curves = {}  # seed 0's, for the plot
    for seed in range(args.seeds):
        configs = variant_configs(args.steps, args.log_every, args.recipe, args.variants)
        for i, (name, config) in enumerate(configs.items()):
            recipe.seeded(config, seed).data.val_split = args.val_split
            workdir = os.path.join(recipe.seed_workdir(args.workdir + suffix, seed), f"v{i}")
            if args.only and name not in args.only and len(old.get(name, [])) > seed:
                row = old[name][seed]
            else:
                print(f"=== {name} (seed {seed})", flush=True)
                try:
                    row = dict(loop.train_and_evaluate(config, workdir), diverged="")
                except loop.NonFiniteLossError as e:  # the collapse the paper describes
                    print(f"diverged: {e}", flush=True)
                    row = dict(AP=0.0, AP50=0.0, AP75=0.0, diverged=str(e))
                row["bce"] = loss_summary(read_metrics(workdir))
            per_seed.setdefault(name, []).append(row)
            if seed == 0:
                curves[name] = read_metrics(workdir)
            results = {n: report.aggregate_seeds(v) for n, v in per_seed.items()}
            with open(results_path, "w") as f:
                json.dump({"steps": args.steps, "prior_prob": prior, "seeds": args.seeds,
                           "results": results, "per_seed": per_seed}, f, indent=2)
    plot(curves, results, os.path.join(args.out, f"cls_loss{suffix}.png"))
    write_table(results, recipe.describe(args.steps, args.recipe, args.seeds), prior,
                args.out, tag)


if __name__ == "__main__":
    main()
