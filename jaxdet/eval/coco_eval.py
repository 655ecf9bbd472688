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
valid=False are skipped. Optional masks (`segm`): Detections.masks [B, K, Hm, Wm] mask
probabilities (or binary masks) covering the padded network input (H, W) at 1/mask_stride
resolution (Hm = H / mask_stride); their part covering the image (image_hw) is resampled
bilinearly to orig_hw and binarised at >= 0.5 (mmdetection's mask_thr_binary) before RLE
encoding.
Stats: the 12 COCOeval numbers under STAT_NAMES (bbox) and 'segm_<name>' (segm); -1 means
undefined (no GT in that area range), as in pycocotools. Class-agnostic proposal recall
(AR@100, ...) is `jaxdet.eval.proposal_recall`, a CocoEvaluator with other COCOeval params.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
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
SEGM_PREFIX = "segm_"  # segm stats: 'segm_AP', 'segm_AP50', ...


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
            if with_masks:
                n = coco.empty_segmentations(data)
                if n:
                    logging.warning("%s: %d annotation(s) without a usable polygon have an "
                                    "empty mask in the segm evaluation", path, n)
            return data
        logging.warning("coco_dir annotation JSON %s not found: GT from the examples", path)
    source = pipeline.data_source(name, split, data_dir, builder_config, with_masks=with_masks)
    to_record = coco.coco2017_to_record if name == "coco" else dict
    records = (to_record(source[i]) for i in range(len(source)))
    return coco.records_to_coco_gt(records, cats, use_masks=with_masks)


def evaluator_for(data_config, split: str | None = None, **kwargs) -> CocoEvaluator:
    """CocoEvaluator for config.data's val split (or `split`); kwargs: iou_types,
    mask_stride."""
    name, data_dir, builder_config = pipeline.resolve_dataset(data_config)
    split = split or data_config["val_split"]
    return CocoEvaluator.for_dataset(name, data_dir, split, builder_config, **kwargs)


def format_stats(stats: Mapping[str, float]) -> str:
    """One line per iou type: 'bbox: AP 0.712 AP50 0.95 ...', 'segm: ...', 'proposal:
    AR@100 ...' (the keys with '@'); other keys on one line."""
    lines = []
    for prefix, label in (("", "bbox"), (SEGM_PREFIX, "segm")):
        vals = [f"{k} {stats[prefix + k]:.3f}" for k in STAT_NAMES if prefix + k in stats]
        if vals:
            lines.append(f"{label}: " + "  ".join(vals))
    recall = [f"{k} {v:.3f}" for k, v in stats.items() if "@" in k]
    if recall:
        lines.append("proposal: " + "  ".join(recall))
    known = {p + k for p in ("", SEGM_PREFIX) for k in STAT_NAMES}
    rest = [f"{k} {v:.3g}" for k, v in stats.items() if k not in known and "@" not in k]
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
        mask_stride: int | None = None,
    ):
        """gt: a COCO object, dict or JSON path; category_ids: the COCO id of each label.
        mask_stride: Detections.masks are at 1/mask_stride of the padded input (None: the
        padded size is read from the batch's 'image')."""
        if isinstance(gt, COCO):
            self.gt = gt
        elif isinstance(gt, Mapping):
            coco.validate_coco_dict(gt, need_files=False)
            self.gt = coco_from_dict(gt)
        else:
            self.gt = coco_from_dict(coco.load_coco_json(gt))
        self.category_ids = np.asarray(category_ids, np.int64)
        self.iou_types = tuple(iou_types)
        self.mask_stride = None if mask_stride is None else int(mask_stride)
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
        mask_stride: int | None = None,
    ) -> CocoEvaluator:
        gt = gt_from_dataset(name, data_dir, split, builder_config, with_masks="segm" in iou_types)
        cats = pipeline.category_map(name, data_dir, builder_config)
        return cls(gt, cats.category_ids, iou_types=iou_types, mask_stride=mask_stride)

    def reset(self) -> None:
        self.results, self.image_ids = [], set()

    def add(self, detections, image_ids, scales=None) -> None:
        """Adds one batch of detections.

        detections: core.types.Detections (or a dict) with boxes [B, K, 4] in network
          coords, scores [B, K], classes [B, K] labels, valid [B, K]; masks [B, K, Hm, Wm]
          for segm. image_ids: [B] (-1 = padding, skipped) and scales: [B] (original ->
          network), or instead of both a batch dict with image_id, scale and (for segm)
          image_hw [B, 2] and, unless mask_stride is set, the padded 'image' [B, H, W, 3].
          Boxes are clipped to the GT image size.
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
        if masks is not None:
            masks = np.asarray(masks)
            padded_hw = self._padded_hw(masks.shape[-2:], batch)
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
                m = masks[b][keep]
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

    def _padded_hw(self, mask_hw, batch: Mapping | None) -> tuple[int, int]:
        """(H, W) of the padded input that masks of size mask_hw cover."""
        if batch is None or "image_hw" not in batch:
            raise ValueError("segm evaluation needs add(detections, batch) with the batch's "
                             "image_id, scale and image_hw")  # fmt: skip
        if self.mask_stride is not None:
            hw = (int(mask_hw[0]) * self.mask_stride, int(mask_hw[1]) * self.mask_stride)
            image_hw = np.asarray(batch["image_hw"]).reshape(-1, 2)
            padded = np.shape(batch["image"])[1:3] if "image" in batch else hw
            if tuple(padded) != hw or (image_hw > np.asarray(hw)).any():
                raise ValueError(
                    f"masks {tuple(mask_hw)} x mask_stride {self.mask_stride} = {hw} is not "
                    f"the padded input {tuple(padded)} (image_hw up to "
                    f"{tuple(image_hw.max(0))}): check config.test.mask_stride"
                )
            return hw
        if "image" not in batch:
            raise ValueError("segm evaluation without the batch's image needs mask_stride")
        return tuple(int(v) for v in np.shape(batch["image"])[1:3])

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
            ev = self._cocoeval(dt, iou_type)
            if only_seen_images and self.image_ids:
                ev.params.imgIds = sorted(self.image_ids)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            if verbose:  # pycocotools' 12-line summary, without its progress chatter
                lines = [ln for ln in out.getvalue().splitlines() if "Average" in ln]
                print(f"COCO {self._label(iou_type)}:\n" + "\n".join(lines))
            stats.update(self._stats(ev, iou_type))
        return stats

    def _cocoeval(self, dt: COCO, iou_type: str) -> COCOeval:
        """The COCOeval of one iou type (subclasses change its params)."""
        return COCOeval(self.gt, dt, iou_type)

    def _label(self, iou_type: str) -> str:
        return iou_type

    def _stats(self, ev: COCOeval, iou_type: str) -> dict[str, float]:
        """The 12 numbers of `ev.stats`: STAT_NAMES (bbox), prefixed 'segm_' (segm)."""
        prefix = "" if iou_type == "bbox" else SEGM_PREFIX
        return {prefix + k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


def _masks_to_rles(masks: np.ndarray, padded_hw, image_hw, orig_hw) -> list[dict]:
    """[K, Hm, Wm] mask probabilities over the padded input (H, W) -> RLEs at the original
    image size: the part covering the image (image_hw of the padded input) is resampled
    bilinearly to orig_hw in one step, then binarised at >= 0.5.

    Only the output window that a pixel >= 0.5 can reach through the bilinear filter is
    resampled (PIL's resize with a source box; outside it the convex combination of
    values < 0.5 stays < 0.5), so the cost follows the object size, not the image size."""
    H, W = (int(v) for v in padded_hw)
    h, w = (int(v) for v in image_hw)
    oh, ow = (int(v) for v in orig_hw)
    masks = np.asarray(masks, np.float32)
    sy = h * masks.shape[1] / H / oh  # mask pixels per original pixel
    sx = w * masks.shape[2] / W / ow
    rles = []
    for m in masks:
        out = np.zeros((oh, ow), np.uint8)
        on = m >= 0.5
        ys, xs = np.nonzero(on.any(1))[0], np.nonzero(on.any(0))[0]
        if ys.size:
            y0, y1 = _reach(ys[0], ys[-1], sy, oh)
            x0, x1 = _reach(xs[0], xs[-1], sx, ow)
            if y1 > y0 and x1 > x0:
                part = Image.fromarray(m).resize(
                    (x1 - x0, y1 - y0), Image.BILINEAR, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy)
                )
                out[y0:y1, x0:x1] = np.asarray(part) >= 0.5
        rle = mask_utils.encode(np.asfortranarray(out))
        rles.append({"size": rle["size"], "counts": rle["counts"].decode()})
    return rles


def _reach(lo: int, hi: int, scale: float, n: int) -> tuple[int, int]:
    """The output pixels [j0, j1) of a resize by 1/scale (n outputs) whose bilinear filter
    (PIL: centre (j + 0.5) * scale, support max(scale, 1)) touches input pixels [lo, hi],
    with one pixel to spare on each side."""
    support = max(scale, 1.0)
    j0 = math.floor((lo + 0.5 - support) / scale - 0.5) - 1
    j1 = math.ceil((hi + 0.5 + support) / scale - 0.5) + 2
    return max(j0, 0), min(j1, n)
