"""What the experiment scripts share for reporting: the results block of their
README (between `<!-- results:start -->` and `<!-- results:end -->`), the mean ± std
over seeds of every number they report (`aggregate_seeds`, formatted by `pm`) and
the NumPy IoU of their analyses, and compact PNGs of figures drawn over images."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

START, END = "<!-- results:start -->", "<!-- results:end -->"


def markers(tag: str = "") -> tuple[str, str]:
    """The (start, end) markers of a README's results block; `tag` names a second block
    (`<!-- results:start:sgd -->`)."""
    return (START, END) if not tag else (f"<!-- results:start:{tag} -->",
                                         f"<!-- results:end:{tag} -->")


def write_results(readme: str, lines: list[str], template: str | None = None,
                  tag: str = "") -> None:
    """Replaces the results block `tag` of `readme` (read from `template` if given and
    readme does not exist yet) by `lines`, which start and end with `markers(tag)`."""
    source = readme if os.path.exists(readme) or template is None else template
    with open(source) as f:
        text = f.read()
    start_marker, end_marker = markers(tag)
    start, end = text.index(start_marker), text.index(end_marker)
    text = text[:start] + "\n".join(lines) + text[end + len(end_marker):]
    with open(readme, "w") as f:
        f.write(text)


def np_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[K, 4] x [M, 4] -> [K, M] IoU (xyxy)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-6)


def aggregate_seeds(per_seed: list) -> Any:
    """Mean and spread over seeds of a list of same-shaped results (one per seed).

    Nested dicts are walked key by key (keys missing in some seeds use the seeds that
    have them); every number (int, float, bool, NumPy scalar) becomes
    `{"mean", "std", "n", "per_seed"}`: mean and sample standard deviation (ddof 1; 0
    for one seed) over the finite values, n = how many were finite, per_seed = all
    values in seed order. Anything else (strings, lists) becomes the list of the
    seeds' values. `pm` formats such a cell.
    """
    present = [r for r in per_seed if r is not None]
    if present and all(isinstance(r, dict) for r in present):
        keys = list(dict.fromkeys(k for r in present for k in r))
        return {k: aggregate_seeds([r[k] for r in present if k in r]) for k in keys}
    if present and all(isinstance(r, (int, float, bool, np.number)) for r in present):
        values = [float(r) for r in present]
        finite = [v for v in values if np.isfinite(v)]
        mean = float(np.mean(finite)) if finite else float("nan")
        std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0 if finite else float("nan")
        return {"mean": mean, "std": std, "n": len(finite), "per_seed": values}
    return present


def pm(cell: Any, spec: str = ".3f") -> str:
    """'mean ± std' of an `aggregate_seeds` cell (a plain number prints alone)."""
    if not isinstance(cell, dict):
        return f"{cell:{spec}}"
    if cell["n"] < 2:
        return f"{cell['mean']:{spec}}"
    return f"{cell['mean']:{spec}} ± {cell['std']:{spec}}"


def mean_of(cell: Any) -> float:
    """The mean of an `aggregate_seeds` cell (a plain number passes through)."""
    return float(cell["mean"]) if isinstance(cell, dict) else float(cell)


def save_image_figure(fig: Any, path: str, dpi: int = 100, colors: int = 128) -> None:
    """Saves a figure of photographs (noisy pixels compress badly) as a palette PNG of
    `colors` colours, about a tenth of matplotlib's RGBA file."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    image = Image.open(buf).convert("RGB")
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
