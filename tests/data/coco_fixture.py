"""A small COCO-format directory written by the tests (no download)."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 1, "name": "person"}, {"id": 7, "name": "kite"}]


def _rle_of_box(h, w, x1, y1, x2, y2, compressed):
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    # Uncompressed (list) RLE, column-major run lengths as in COCO crowd annotations.
    flat = m.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}


def write_coco_dir(root: str, *, num_train: int = 6, num_val: int = 3, size=(48, 64),
                   segmentation: bool = True) -> str:
    """root/annotations/instances_{train,val}2017.json + JPEGs. Each image has a polygon
    (category 1), a compressed-RLE box (category 7) and, on image 0, a crowd (list RLE,
    category 3), a NaN bbox, a degenerate bbox and a bbox outside the image.
    segmentation=False: the annotations have no `segmentation` key (boxes only)."""
    h, w = size
    rng = np.random.default_rng(0)
    for split, n in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(root, f"{split}2017"), exist_ok=True)
        images, anns = [], []
        for i in range(n):
            image_id = (100 if split == "val" else 1) + i
            name = f"{image_id:012d}.jpg"
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, f"{split}2017", name), quality=95)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})

            def add(**a):
                if not segmentation:
                    a.pop("segmentation")
                anns.append({"id": len(anns) + 1, "image_id": image_id, "iscrowd": 0, **a})

            add(category_id=1, bbox=[4, 6, 20, 16], area=320.0,
                segmentation=[[4, 6, 24, 6, 24, 22, 4, 22]])
            add(category_id=7, bbox=[30, 10, 14, 20], area=280.0,
                segmentation=_rle_of_box(h, w, 30, 10, 44, 30, compressed=True))
            if i == 0:
                add(category_id=3, bbox=[0, 30, 40, 18], area=720.0, iscrowd=1,
                    segmentation=_rle_of_box(h, w, 0, 30, 40, 48, compressed=False))
                add(category_id=1, bbox=[float("nan"), 2, 5, 5], area=25.0, segmentation=[])
                add(category_id=1, bbox=[10, 10, 0, 8], area=0.0, segmentation=[])
                add(category_id=7, bbox=[w + 5, 2, 10, 10], area=100.0, segmentation=[])
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        with open(os.path.join(root, "annotations", f"instances_{split}2017.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": CATEGORIES}, f)
    return root
