"""Draw detections (and optionally ground truth) on input images; save a PNG grid (PIL only).

    save_grid(path, batch, detections, class_names, mean=..., std=...)

Images are the pipeline's normalised network inputs (float32, undone with mean/std) or uint8
images; boxes are in the same (network) coordinates. Panels are cropped to image_hw.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxdet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


def to_uint8(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Undoes Normalize: float32 [H, W, 3] -> uint8 (uint8 input is returned as is)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    out = image * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def draw(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    class_names: Sequence[str] = (),
    gt_boxes: np.ndarray | None = None,
) -> Image.Image:
    """One uint8 image [H, W, 3] with boxes [K, 4] xyxy (coloured by class) and their
    'name score' labels; ground-truth boxes, if given, in thin white."""
    im = Image.fromarray(np.asarray(image, np.uint8))
    d = ImageDraw.Draw(im)
    if gt_boxes is not None:
        for box in np.asarray(gt_boxes, np.float32).reshape(-1, 4):
            d.rectangle(box.tolist(), outline=(255, 255, 255), width=1)
    for k, box in enumerate(np.asarray(boxes, np.float32).reshape(-1, 4)):
        c = int(classes[k])
        colour = _PALETTE[c % len(_PALETTE)]
        d.rectangle(box.tolist(), outline=colour, width=2)
        text = class_names[c] if c < len(class_names) else str(c)
        if scores is not None:
            text = f"{text} {float(scores[k]):.2f}"
        x, y = float(box[0]), max(float(box[1]) - 11, 0)
        left, top, right, bottom = d.textbbox((x, y), text)
        d.rectangle((left, top, right, bottom), fill=colour)
        d.text((x, y), text, fill=(0, 0, 0))
    return im


def _field(obj, name):
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def save_grid(
    path: str | os.PathLike,
    batch: Mapping,
    detections,
    class_names: Sequence[str] = (),
    *,
    score_thr: float = 0.3,
    max_images: int = 16,
    cols: int = 4,
    show_gt: bool = True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> Image.Image:
    """Draws the first `max_images` non-padding images of `batch` (the pipeline's batch
    dict: image, and optionally image_id, image_hw, boxes, valid) with their detections
    (Detections or dict, batched [B, K, ...]; valid and score >= score_thr) and the valid
    GT boxes (thin white), cropped to image_hw, and saves them as one PNG grid."""
    images = np.asarray(batch["image"])
    ids = np.asarray(batch.get("image_id", np.zeros(len(images))))
    keep_images = [i for i in range(len(images)) if ids[i] >= 0][:max_images]
    boxes = np.asarray(_field(detections, "boxes"))
    scores = np.asarray(_field(detections, "scores"))
    classes = np.asarray(_field(detections, "classes"))
    valid = _field(detections, "valid")
    valid = np.ones(scores.shape, bool) if valid is None else np.asarray(valid)
    panels = []
    for i in keep_images:
        sel = valid[i] & (scores[i] >= score_thr)
        gt = None
        if show_gt and "boxes" in batch and "valid" in batch:
            gt = np.asarray(batch["boxes"][i])[np.asarray(batch["valid"][i], bool)]
        panel = draw(
            to_uint8(images[i], mean, std), boxes[i][sel], classes[i][sel], scores[i][sel],
            class_names=class_names, gt_boxes=gt,
        )  # fmt: skip
        if "image_hw" in batch:
            h, w = (int(v) for v in batch["image_hw"][i])
            panel = panel.crop((0, 0, w, h))
        panels.append(panel)
    if not panels:
        raise ValueError("save_grid: no (non-padding) images in the batch")
    cw = max(p.width for p in panels)
    ch = max(p.height for p in panels)
    cols = min(cols, len(panels))
    rows = -(-len(panels) // cols)
    grid = Image.new("RGB", (cols * cw, rows * ch), (0, 0, 0))
    for n, p in enumerate(panels):
        grid.paste(p, ((n % cols) * cw, (n // cols) * ch))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return grid
