"""COCO evaluation with pycocotools: network-coord detections -> COCO results -> COCOeval.

    evaluator = evaluator_for(config.data)          # or CocoEvaluator.for_dataset('shapes', dir)
    for batch in pipeline.make_eval_iterator(config.data, batch_size=B):
        dets = predict(params, batch['image'], batch['image_hw'])   # core.types.Detections
        evaluator.add(dets, batch['image_id'], batch['scale'])      # or evaluator.add(dets, batch)
    stats = evaluator.evaluate(results_path=...)    # {'AP': ..., 'AR100': ...}; prints summary
    print(format_stats(stats))

Detections are in network coordinates (the padded, resized input). Boxes are mapped back
to the original image by dividing by the scale, clipped to the GT image size, converted
to xywh, and labels to COCO category ids. Padding examples (image_id -1) and rows with
valid=False are skipped. Optional masks (`segm`): Detections.masks [B, K, Hm, Wm] scores or
binary masks covering the padded network input (H, W); they are resized to (H, W), cropped
to image_hw, resized to orig_hw and thresholded at 0.5.
Stats: the 12 COCOeval numbers under STAT_NAMES (bbox) and 'segm/<name>' (segm); -1 means
undefined (no GT in that area range), as in pycocotools.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxdet.data import coco, pipeline

STAT_NAMES = tuple("AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl".split())


def coco_from_dict(data: Mapping) -> COCO:
    """A pycocotools COCO object from a dict, filling 'area'/'iscrowd' when absent."""
    data = copy.deepcopy(dict(data))
    for ann in data.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    data.setdefault("info", {})
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def gt_from_dataset(
    name: str,
    data_dir: str,
    split: str = "val",
    builder_config: str | None = None,
    *,
    with_masks: bool = False,
) -> dict:
    """COCO GT dict for a prepared split: coco_dir -> its annotation JSON; shapes / coco ->
    built in memory from the split's examples (boxes as stored, masks if with_masks)."""
    cats = pipeline.category_map(name, data_dir, builder_config)
    if name == "coco_dir":
        meta = pipeline.metadata(name, data_dir, builder_config)
        path = meta.get("annotation_files", {}).get(split)
        if path and os.path.exists(path):
            data = coco.load_coco_json(path)
            n = coco.ignore_invalid_annotations(data)
            if n:
                logging.warning("%s: %d invalid annotation(s) are ignored in evaluation",
                                path, n)
            return data
        logging.warning("coco_dir annotation JSON %s not found: GT from the examples", path)
    source = pipeline.data_source(name, split, data_dir, builder_config, with_masks=with_masks)
    to_record = coco.coco2017_to_record if name == "coco" else dict
    records = (to_record(source[i]) for i in range(len(source)))
    return coco.records_to_coco_gt(records, cats, use_masks=with_masks)


def evaluator_for(data_config, split: str | None = None, **kwargs) -> CocoEvaluator:
    """CocoEvaluator for config.data's val split (or `split`); kwargs: iou_types."""
    name, data_dir, builder_config = pipeline.resolve_dataset(data_config)
    split = split or data_config["val_split"]
    return CocoEvaluator.for_dataset(name, data_dir, split, builder_config, **kwargs)


def format_stats(stats: Mapping[str, float]) -> str:
    """One line per iou type: 'bbox: AP 0.712 AP50 0.95 ...' (other keys on one line)."""
    lines = []
    for prefix, label in (("", "bbox"), ("segm/", "segm")):
        vals = [f"{k} {stats[prefix + k]:.3f}" for k in STAT_NAMES if prefix + k in stats]
        if vals:
            lines.append(f"{label}: " + "  ".join(vals))
    known = {p + k for p in ("", "segm/") for k in STAT_NAMES}
    rest = [f"{k} {v:.3g}" for k, v in stats.items() if k not in known]
    if rest:
        lines.append("  ".join(rest))
    return "\n".join(lines)


class CocoEvaluator:
    """Accumulates detections batch by batch, then runs COCOeval."""

    def __init__(
        self,
        gt: COCO | Mapping | str | os.PathLike,
        category_ids: Sequence[int],
        *,
        iou_types: Sequence[str] = ("bbox",),
    ):
        if isinstance(gt, COCO):
            self.gt = gt
        elif isinstance(gt, Mapping):
            coco.validate_coco_dict(gt, need_files=False)
            self.gt = coco_from_dict(gt)
        else:
            self.gt = coco_from_dict(coco.load_coco_json(gt))
        self.category_ids = np.asarray(category_ids, np.int64)
        self.iou_types = tuple(iou_types)
        self.results: list[dict] = []
        self.image_ids: set[int] = set()

    @classmethod
    def for_dataset(
        cls,
        name: str,
        data_dir: str,
        split: str = "val",
        builder_config: str | None = None,
        *,
        iou_types: Sequence[str] = ("bbox",),
    ) -> CocoEvaluator:
        gt = gt_from_dataset(name, data_dir, split, builder_config, with_masks="segm" in iou_types)
        cats = pipeline.category_map(name, data_dir, builder_config)
        return cls(gt, cats.category_ids, iou_types=iou_types)

    def reset(self) -> None:
        self.results, self.image_ids = [], set()

    def add(self, detections, image_ids, scales=None) -> None:
        """Adds one batch of detections.

        detections: core.types.Detections (or a dict) with boxes [B, K, 4] in network
          coords, scores [B, K], classes [B, K] labels, valid [B, K]; masks [B, K, Hm, Wm]
          for segm. image_ids: [B] (-1 = padding, skipped) and scales: [B] (original ->
          network), or instead of both the input batch dict (needed for segm: its
          image_hw and padded image size). Boxes are clipped to the GT image size.
        """
        batch = image_ids if isinstance(image_ids, Mapping) else None
        if batch is not None:
            image_ids, scales = batch["image_id"], batch["scale"]

        def get(field):
            if isinstance(detections, Mapping):
                return detections.get(field)
            return getattr(detections, field, None)

        boxes = np.asarray(get("boxes"), np.float64)
        scores = np.asarray(get("scores"), np.float64)
        classes = np.asarray(get("classes"), np.int64)
        valid = np.asarray(get("valid"), bool)
        masks = get("masks") if "segm" in self.iou_types else None
        if masks is not None and batch is None:
            raise ValueError("segm evaluation needs add(detections, batch) (image_hw, image)")
        image_ids = np.asarray(image_ids, np.int64).reshape(-1)
        scales = np.asarray(scales, np.float64).reshape(-1)
        for b, image_id in enumerate(image_ids):
            if image_id < 0:
                continue  # padding example
            info = self.gt.imgs.get(int(image_id))
            if info is None:
                raise KeyError(f"image id {int(image_id)} is not in the ground truth")
            self.image_ids.add(int(image_id))
            keep = np.nonzero(valid[b])[0]
            if keep.size == 0:
                continue
            h, w = int(info["height"]), int(info["width"])
            xyxy = np.clip(boxes[b, keep] / scales[b], 0, [w, h, w, h])
            cat_ids = self.category_ids[classes[b, keep]]
            rles = None
            if masks is not None:
                padded_hw = np.asarray(batch["image"]).shape[1:3]
                m = np.asarray(masks[b])[keep]
                rles = _masks_to_rles(m, padded_hw, batch["image_hw"][b], (h, w))
            for j in range(len(keep)):
                x1, y1, x2, y2 = xyxy[j].tolist()
                res = {
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[j]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(scores[b, keep[j]]),
                }
                if rles is not None:
                    res["segmentation"] = rles[j]
                self.results.append(res)

    def write_results(self, path: str | os.PathLike) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.results, f)

    def evaluate(
        self,
        results_path: str | os.PathLike | None = None,
        *,
        verbose: bool = True,
        only_seen_images: bool = True,
    ) -> dict[str, float]:
        """Runs COCOeval for each iou type; prints pycocotools' summary if verbose.

        only_seen_images: evaluate only on images passed to add() (so a partial eval pass
        is not penalised for images it never saw); False = all GT images.
        """
        if results_path is not None:
            self.write_results(results_path)
        if self.results:
            with contextlib.redirect_stdout(io.StringIO()):
                dt = self.gt.loadRes(copy.deepcopy(self.results))
        else:  # pycocotools' loadRes cannot take an empty list
            logging.warning("CocoEvaluator: no detections; AP is 0")
            dt = coco_from_dict(
                {"images": self.gt.dataset["images"], "annotations": [],
                 "categories": self.gt.dataset["categories"]}
            )  # fmt: skip
        stats = {}
        for iou_type in self.iou_types:
            ev = COCOeval(self.gt, dt, iou_type)
            if only_seen_images and self.image_ids:
                ev.params.imgIds = sorted(self.image_ids)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            if verbose:  # pycocotools' 12-line summary, without its progress chatter
                lines = [ln for ln in out.getvalue().splitlines() if "Average" in ln]
                print(f"COCO {iou_type}:\n" + "\n".join(lines))
            prefix = "" if iou_type == "bbox" else f"{iou_type}/"
            stats.update({prefix + k: float(v) for k, v in zip(STAT_NAMES, ev.stats)})
        return stats


def _masks_to_rles(masks: np.ndarray, padded_hw, image_hw, orig_hw) -> list[dict]:
    """[K, Hm, Wm] masks over the padded input -> RLEs at the original image size."""
    H, W = (int(v) for v in padded_hw)
    h, w = (int(v) for v in image_hw)
    oh, ow = (int(v) for v in orig_hw)
    rles = []
    for m in masks.astype(np.float32):
        full = np.asarray(Image.fromarray(m).resize((W, H), Image.BILINEAR))[:h, :w]
        orig = np.asarray(Image.fromarray(full).resize((ow, oh), Image.BILINEAR))
        rle = mask_utils.encode(np.asfortranarray((orig >= 0.5).astype(np.uint8)))
        rles.append({"size": rle["size"], "counts": rle["counts"].decode()})
    return rles
