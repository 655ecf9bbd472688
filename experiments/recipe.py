"""The training recipe the small-scale experiments share.

Every experiment compares detectors trained the same way. `apply` sets that way on
each config: `--recipe adamw` (default) is the demo's recipe (AdamW lr 4e-3, weight
decay 0.05, 200 warm-up steps, cosine; `configs/atss/atss_tiny_shapes.py` reaches box
AP 0.67 on `shapes` with it in 1800 steps), which converges far faster from scratch
than SGD; `--recipe config` keeps each config's own optimizer (SGD lr 0.02 for most
tiny configs, 5000 steps wanted); `--recipe sgd` is mmdetection's RetinaNet recipe
at batch 16 (SGD momentum 0.9, lr 0.01, weight decay 1e-4, linear warm-up from
0.001 x lr, no gradient clipping) with a cosine decay over the short schedule.

Every experiment trains each row with seeds 0..N-1 (`--seeds N`, default 3):
`config.seed` seeds the parameter initialisation, the order of the training data and
its augmentation (the grain sampler's seed, from which the per-example random flips
are drawn) and the loss's random key. Each seed trains in `<workdir>/seed<k>/<row>`
(`seed_workdir`), so an interrupted run resumes. `baseline_workdir` gives the
RetinaNet baseline one workdir per (recipe, steps, seed), so the experiments that
compare against it (FSAF, MAL, noisy anchors) train it once: `loop.train` on a
finished workdir only restores the last checkpoint.
"""

from __future__ import annotations

import argparse
import os

import ml_collections


def add_arguments(ap: argparse.ArgumentParser, steps: int = 1000) -> None:
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--recipe", choices=("adamw", "config", "sgd"), default="adamw",
                    help="adamw: AdamW lr 4e-3 cosine (default); config: the configs' own; "
                         "sgd: SGD lr 0.01, no gradient clipping")
    ap.add_argument("--seeds", type=int, default=3,
                    help="train every row with config.seed = 0..N-1; tables give mean ± std")


def apply(config: ml_collections.ConfigDict, steps: int, recipe: str = "adamw"
          ) -> ml_collections.ConfigDict:
    """Sets the schedule of `config` in place (and returns it)."""
    config.train.num_steps = steps
    if recipe == "adamw":
        o = config.optimizer
        o.name, o.lr, o.weight_decay = "adamw", 0.004, 0.05
        o.warmup_steps, o.schedule = min(200, max(steps // 5, 1)), "cosine"
    elif recipe == "sgd":
        o = config.optimizer
        o.name, o.lr, o.momentum, o.weight_decay = "sgd", 0.01, 0.9, 1e-4
        o.warmup_steps, o.warmup_ratio, o.schedule = min(200, max(steps // 5, 1)), 0.001, "cosine"
        o.grad_clip = 0.0
    elif recipe != "config":
        raise ValueError(f"recipe must be 'adamw', 'config' or 'sgd', got {recipe!r}")
    return config


def describe(steps: int, recipe: str, seeds: int | None = None) -> str:
    opt = {
        "adamw": "AdamW lr 4e-3, weight decay 0.05, cosine",
        "sgd": "SGD lr 0.01, momentum 0.9, cosine, no gradient clipping",
    }.get(recipe, "each config's own optimizer")
    text = f"{steps} steps at batch 16 ({opt})"
    if seeds:
        text += (f", seeds 0-{seeds - 1} (mean ± sample std over {seeds} seeds)" if seeds > 1
                 else ", seed 0 (one seed)")
    return text


def seed_workdir(workdir: str, seed: int) -> str:
    """runs/<x> -> runs/<x>/seed<k>: the rows of seed k train below it."""
    return os.path.join(workdir, f"seed{int(seed)}")


def baseline_workdir(workdir: str, steps: int, recipe: str, seed: int = 0) -> str:
    """runs/<x> -> runs/retinanet_baseline/<recipe>_<steps>/seed<k>: shared by the
    experiments (`workdir` is the experiment's root, not its seed folder)."""
    root = os.path.dirname(os.path.normpath(workdir)) or "."
    return os.path.join(root, "retinanet_baseline", f"{recipe}_{steps}", f"seed{int(seed)}")


def row_workdir(workdir: str, steps: int, recipe: str, seed: int, tag: str,
                baseline: bool) -> str:
    """Where one row of seed k trains: the shared RetinaNet baseline's workdir
    (`baseline_workdir`) for the baseline row, else <workdir>/seed<k>/<tag>."""
    if baseline:
        return baseline_workdir(workdir, steps, recipe, seed)
    return os.path.join(seed_workdir(workdir, seed), tag)


def seeded(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """Sets `config.seed` in place (and returns `config`)."""
    config.seed = int(seed)
    return config

