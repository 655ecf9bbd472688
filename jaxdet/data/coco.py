"""COCO-format annotations: loading, validation, category maps, masks, GT for COCOeval.

The record format shared by every jaxdet dataset (see `shapes.record_features`):
  image (encoded bytes or [h, w, 3] uint8), image_id int, file_name str,
  boxes [n, 4] float32 xyxy pixels, labels [n] int64 contiguous in [0, K),
  is_crowd [n] bool, masks [n, h, w] uint8 (may be [0, 0, 0] when not stored).

COCO category ids (1..90 with gaps) map to contiguous labels by sorted id
(`CategoryMap`) and back for evaluation. Crowd annotations become `is_crowd`
(-> GroundTruth.ignore). Masks come from polygons, uncompressed RLE (list counts)
or compressed RLE (string counts), as pycocotools' `annToMask`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# tfds coco/2017's 80 labels in order -> their COCO category ids.
COCO80_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CategoryMap:
    """Contiguous label k <-> COCO category id `category_ids[k]`, name `names[k]`."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping]) -> CategoryMap:
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls(tuple(int(c["id"]) for c in cats),
                   tuple(str(c.get("name", c["id"])) for c in cats))  # fmt: skip

    def label_of(self) -> dict[int, int]:
        return {cid: k for k, cid in enumerate(self.category_ids)}

    def to_json(self) -> dict:
        return {"category_ids": list(self.category_ids), "names": list(self.names)}


def load_coco_json(path: str | os.PathLike) -> dict:
    """Reads and validates a COCO annotation file; errors name the file."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read COCO annotation file {path}: {e}") from e
    try:
        validate_coco_dict(data, need_files=False)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return data


def validate_coco_dict(data: Mapping, *, need_files: bool = True) -> None:
    """Checks the structure of a COCO dict: images/annotations/categories, unique ids,
    annotations pointing at known images and categories, 4-number bboxes. Raises
    ValueError naming the first problem. need_files: images must have 'file_name'."""
    for key in ("images", "annotations", "categories"):
        if key not in data or not isinstance(data[key], list):
            raise ValueError(f"COCO dict has no '{key}' list")
    image_ids = set()
    for im in data["images"]:
        for key in ("id", "height", "width") + (("file_name",) if need_files else ()):
            if key not in im:
                raise ValueError(f"image entry {im!r:.200} has no '{key}'")
        if im["id"] in image_ids:
            raise ValueError(f"duplicate image id {im['id']}")
        image_ids.add(im["id"])
    cat_ids = {c["id"] for c in data["categories"]}
    if len(cat_ids) != len(data["categories"]):
        raise ValueError("duplicate category ids")
    for ann in data["annotations"]:
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"annotation {ann.get('id')} refers to unknown image "
                             f"{ann.get('image_id')}")  # fmt: skip
        if ann.get("category_id") not in cat_ids:
            raise ValueError(f"annotation {ann.get('id')} has unknown category "
                             f"{ann.get('category_id')}")  # fmt: skip
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"annotation {ann.get('id')} has no 4-number 'bbox'")


MIN_BOX_SIZE = 1.0  # px, after clipping; mmdetection's COCO loader drops w < 1 or h < 1


def valid_boxes(boxes, height: int, width: int, min_box_size: float = MIN_BOX_SIZE):
    """The one rule for which annotated boxes are usable: finite, and at least
    `min_box_size` px wide and high after clipping to the image.

    boxes [n, 4] xyxy -> (keep [n] bool, clipped [n, 4] float32; NaN rows zeroed)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    clipped = np.clip(np.nan_to_num(boxes), 0, [width, height, width, height])
    clipped = clipped.astype(np.float32)
    size_ok = ((clipped[:, 2] - clipped[:, 0] >= min_box_size)
               & (clipped[:, 3] - clipped[:, 1] >= min_box_size))  # fmt: skip
    return finite & size_ok, clipped


def ignore_invalid_annotations(data: dict, min_box_size: float = MIN_BOX_SIZE) -> int:
    """Marks (in place) the annotations the pipeline drops (`valid_boxes`) as ignore
    regions for COCOeval (`iscrowd=1`, the only ignore flag COCOeval honours). They can
    never be detected, so they are neither hits nor misses. Returns how many."""
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in data["images"]}
    count = 0
    for ann in data["annotations"]:
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        keep, _ = valid_boxes([[x, y, x + bw, y + bh]], *sizes[ann["image_id"]], min_box_size)
        if not keep[0]:
            ann["iscrowd"] = 1
            count += 1
    return count


def empty_segmentations(data: dict) -> int:
    """Replaces (in place) every polygon segmentation without a usable polygon (an empty
    list, or polygons of fewer than 3 points, which pycocotools cannot rasterise) by the
    compressed RLE of an empty mask: the mask `segmentation_to_mask` gives for it in
    training, now one COCOeval's `segm` evaluation can read. Returns how many."""
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in data["images"]}
    count = 0
    for ann in data["annotations"]:
        segm = ann.get("segmentation")
        if not isinstance(segm, list):
            continue
        polys = [p for p in segm if len(p) >= 6]
        if polys:
            ann["segmentation"] = polys
            continue
        h, w = sizes[ann["image_id"]]
        rle = mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
        ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode()}
        count += 1
    return count


def segmentation_to_mask(segm, height: int, width: int) -> np.ndarray:
    """[h, w] uint8 mask of a COCO segmentation: polygons, list-RLE or compressed RLE."""
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, Mapping) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(dict(segm), height, width)
    elif isinstance(segm, Mapping):
        counts = segm["counts"]
        rle = {"size": list(segm["size"]),
               "counts": counts.encode() if isinstance(counts, str) else counts}  # fmt: skip
    else:
        raise ValueError(f"unknown segmentation format {type(segm).__name__}")
    return np.asarray(mask_utils.decode(rle), np.uint8)


def read_image_bytes(path: str) -> tuple[bytes, int, int]:
    """(bytes, height, width) of an image file, fully decoded once to catch corrupt files.
    Raises ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            width, height = im.size
    except Exception as e:  # PIL raises many types for truncated / corrupt files
        raise ValueError(f"corrupt or unreadable image file {path}: {e}") from e
    return data, height, width


def image_record(
    image_info: Mapping,
    anns: Sequence[Mapping],
    categories: CategoryMap,
    image_dir: str,
    *,
    with_masks: bool,
) -> dict:
    """One COCO image + its annotations -> a record (see module docstring). Boxes are
    stored as given (xywh -> xyxy); invalid ones are dropped later by the pipeline."""
    path = os.path.join(image_dir, image_info["file_name"])
    data, h, w = read_image_bytes(path)
    if (h, w) != (int(image_info["height"]), int(image_info["width"])):
        raise ValueError(f"{path}: image is {h}x{w} but the annotation says "
                         f"{image_info['height']}x{image_info['width']}")  # fmt: skip
    label_of = categories.label_of()
    boxes, labels, crowd, masks = [], [], [], []
    for ann in anns:
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        boxes.append([x, y, x + bw, y + bh])
        labels.append(label_of[int(ann["category_id"])])
        crowd.append(bool(ann.get("iscrowd", 0)))
        if with_masks:
            segm = ann.get("segmentation")
            if segm is None or (isinstance(segm, list) and not segm):
                m = np.zeros((h, w), np.uint8)  # no segmentation: the box as the mask
                if all(math.isfinite(v) for v in (x, y, bw, bh)):
                    m[max(int(y), 0):max(int(math.ceil(y + bh)), 0),
                      max(int(x), 0):max(int(math.ceil(x + bw)), 0)] = 1  # fmt: skip
            else:
                m = segmentation_to_mask(segm, h, w)
            masks.append(m)
    n = len(boxes)
    return dict(
        image=data,
        image_id=int(image_info["id"]),
        file_name=str(image_info["file_name"]),
        boxes=np.asarray(boxes, np.float32).reshape(n, 4),
        labels=np.asarray(labels, np.int64).reshape(n),
        is_crowd=np.asarray(crowd, bool).reshape(n),
        masks=(np.asarray(masks, np.uint8).reshape(n, h, w) if with_masks
               else np.zeros((0, 0, 0), np.uint8)),
    )  # fmt: skip


def image_size_of(image) -> tuple[int, int]:
    """(height, width) of a decoded [h, w, 3] array or of encoded bytes (header only)."""
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as im:
            return im.size[1], im.size[0]
    return int(np.shape(image)[0]), int(np.shape(image)[1])


def coco2017_to_record(ex: Mapping) -> dict:
    """A tfds `coco/2017` example -> a record (normalised yxyx boxes -> xyxy pixels)."""
    h, w = image_size_of(ex["image"])
    objects = ex["objects"]
    bbox = np.asarray(objects["bbox"], np.float32).reshape(-1, 4)
    boxes = bbox[:, [1, 0, 3, 2]] * np.asarray([w, h, w, h], np.float32)
    name = ex.get("image/filename", b"")
    return dict(
        image=ex["image"],
        image_id=int(ex["image/id"]),
        file_name=name.decode() if isinstance(name, bytes) else str(name),
        boxes=boxes,
        labels=np.asarray(objects["label"], np.int64).reshape(-1),
        is_crowd=np.asarray(objects["is_crowd"], bool).reshape(-1),
        masks=np.zeros((0, 0, 0), np.uint8),
    )


def records_to_coco_gt(
    records: Iterable[Mapping], categories: CategoryMap, *, use_masks: bool = False
) -> dict:
    """COCO GT dict (for COCOeval) from records: boxes clipped, the ones `valid_boxes`
    rejects left out (as the pipeline drops them), crowd -> iscrowd, masks -> RLE
    segmentation if use_masks."""
    images, anns = [], []
    for r in records:
        h, w = image_size_of(r["image"])
        image_id = int(r["image_id"])
        fname = r.get("file_name", "")
        images.append({"id": image_id, "height": h, "width": w,
                       "file_name": fname.decode() if isinstance(fname, bytes) else fname})
        keep, boxes = valid_boxes(r["boxes"], h, w)
        masks = np.asarray(r["masks"]) if use_masks else None
        for k in np.nonzero(keep)[0]:
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            ann = {"id": len(anns) + 1, "image_id": image_id,
                   "category_id": categories.category_ids[int(r["labels"][k])],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                   "iscrowd": int(bool(r["is_crowd"][k]))}  # fmt: skip
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[k].astype(np.uint8)))
                ann["area"] = float(mask_utils.area(rle))
                ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            anns.append(ann)
    cats = [{"id": c, "name": n} for c, n in zip(categories.category_ids, categories.names)]
    return {"images": images, "annotations": anns, "categories": cats}
