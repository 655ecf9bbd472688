"""What the experiment scripts share for reporting: the results block of their
README (between `<!-- results:start -->` and `<!-- results:end -->`) and the NumPy
IoU of their analyses."""

from __future__ import annotations

import os

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
