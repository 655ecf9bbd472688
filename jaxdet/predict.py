"""Inference on your own images: a trained workdir -> detections in original pixels.

    detector, params, config = jaxdet.load("runs/atss")      # latest checkpoint (or step=N)
    preds = jaxdet.predict_images(detector, params, config, ["a.jpg", array], score_thr=0.3)
    preds[0].boxes, preds[0].scores, preds[0].labels, preds[0].class_names

    python -m jaxdet.main --workdir=runs/atss --mode=predict --images=DIR_OR_GLOB \
        [--config=...] [--step=N] [--score_thr=0.3] [--out=DIR]

The command line writes one annotated PNG per image and `results.json` (COCO results:
image_id, file_name, category_id, category_name, bbox xywh in the original image's
pixels, score) to `--out` (default `<workdir>/predictions`).

Images go through the eval pipeline's transforms (`pipeline.input_transforms`: resize
keeping ratio, pad to config.data.image_size, uint8) and one jitted
`jaxdet.train.step.predict_step` (normalisation on the device, then `detector.predict`)
per batch of config.eval.batch_size; the last batch is padded with
empty rows (image_hw 0, dropped), so the program is traced once. Boxes are divided by
the resize scale and clipped to the image. Files are read with PIL with their EXIF
orientation applied (as detectron2's demo reads them), so boxes refer to the upright
image. Class names and category ids are the training dataset's (`class_<k>` names and
ids k + 1 when that dataset is not on this machine).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from jaxdet import detectors
from jaxdet import platform as platform_lib
from jaxdet.data import coco, pipeline
from jaxdet.eval import visualize
from jaxdet.train import checkpoint as ckpt_lib
from jaxdet.train.step import predict_step

CONFIG_FILE = "config.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageInputError(ValueError):
    """No image found, or an image that cannot be read (the message names it)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Prediction:
    """Detections of one image in its original pixels, score >= score_thr, best first.

    name: the file path, or `array_<i>` for the i-th input given as an array.
    image_hw: (h, w) of the original image. boxes [K, 4] float32 xyxy; scores [K] float32;
    labels [K] int32 in [0, C); category_ids [K] the dataset's ids; class_names K names.
    """

    name: str
    image_hw: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    class_names: tuple[str, ...]


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes `workdir/config.json` (what `load` reads); returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    return path


def _tuples(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config saved in `workdir/config.json` (JSON lists back to tuples)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass the run's config explicitly")
    with open(path) as f:
        return ml_collections.ConfigDict(_tuples(json.load(f)))


def load(workdir: str, config: ml_collections.ConfigDict | None = None, *,
         step: int | None = None) -> tuple[Any, Any, ml_collections.ConfigDict]:  # fmt: skip
    """(detector, params, config) of checkpoint `step` (default: latest) in `workdir`.

    `config` defaults to `workdir/config.json` (written when training starts). A copy is
    returned, with num_classes=0 resolved from the dataset and no pretrained-weights path
    (the checkpoint holds the weights)."""
    config = copy.deepcopy(load_config(workdir) if config is None else config)
    if "pretrained" in config.model:
        config.model.pretrained = ""
    if not int(config.data.num_classes):
        pipeline.resolve_num_classes(config.data)
    detector = detectors.build(config)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        steps = ckpt.all_steps()
        step = max(steps, default=None) if step is None else int(step)
        if step is None or step not in steps:
            raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in "
                                    f"{ckpt.directory} (steps: {sorted(steps)})")  # fmt: skip
        template, _ = detector.init(jax.random.PRNGKey(0), tuple(config.data.image_size))
        restored = ckpt.restore_params(step)["params"]
    finally:
        ckpt.close()
    params = jax.tree_util.tree_map(lambda t, r: jnp.asarray(r, t.dtype), template, restored)
    return detector, params, config


def categories(config: ml_collections.ConfigDict) -> coco.CategoryMap:
    """The training dataset's category map (generic names if it is not on this machine)."""
    k = int(config.data.num_classes)
    try:
        cats = pipeline.category_map(*pipeline.resolve_dataset(config.data))
    except FileNotFoundError as e:
        logging.warning("class names unavailable (%s): using class_<k>", e)
        return coco.CategoryMap(tuple(range(1, k + 1)), tuple(f"class_{i}" for i in range(k)))
    if len(cats.names) != k:
        raise ValueError(f"config.data.num_classes={k} but the dataset has {len(cats.names)}")
    return cats


def find_images(spec: str) -> list[str]:
    """The image files of a folder (by extension, sorted), a glob, or one file."""
    if os.path.isdir(spec):
        paths = [os.path.join(spec, f) for f in os.listdir(spec)
                 if f.lower().endswith(IMAGE_EXTENSIONS)]  # fmt: skip
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    if not paths:
        raise ImageInputError(f"no images found at {spec!r} (an empty folder, or a path or "
                              f"glob that matches no file; extensions {IMAGE_EXTENSIONS})")
    return sorted(paths)


def _read(item: Any, index: int) -> tuple[str, np.ndarray]:
    """(name, uint8 [h, w, 3]) of a path, a PIL image or an array."""
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            with Image.open(path) as im:
                return path, np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception as e:
            raise ImageInputError(f"cannot read image {path}: {e}") from e
    if isinstance(item, Image.Image):
        item = item.convert("RGB")
    image = np.asarray(item)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise ImageInputError(f"input {index}: expected a uint8 [h, w, 3] or [h, w] image, "
                              f"got {image.dtype} {image.shape}")  # fmt: skip
    return f"array_{index}", image


_JITTED: list = [None, None]  # the last detector and its jitted predict


def _jitted_predict(detector: Any):
    if _JITTED[0] is not detector:
        fn = jax.jit(functools.partial(predict_step, detector=detector),
                     compiler_options=platform_lib.from_config(detector.config).compiler_options())
        _JITTED[:] = [detector, fn]
    return _JITTED[1]


def _iterate(detector: Any, params: Any, config: ml_collections.ConfigDict, items: Sequence,
             score_thr: float, batch_size: int | None,
             cats: coco.CategoryMap) -> Iterator[tuple[Prediction, np.ndarray]]:  # fmt: skip
    """(Prediction, original uint8 image) of every item, in order, batch by batch."""
    ops = pipeline.input_transforms(config.data, train=False,
                                    num_classes=int(config.data.num_classes))  # fmt: skip
    batch_size = int(batch_size or config.eval.batch_size)
    predict = _jitted_predict(detector)
    empty = dict(boxes=np.zeros((0, 4), np.float32), labels=np.zeros((0,), np.int32),
                 is_crowd=np.zeros((0,), bool))  # fmt: skip
    for start in range(0, len(items), batch_size):
        read = [_read(item, start + i) for i, item in enumerate(items[start:start + batch_size])]
        elements = []
        for i, (name, image) in enumerate(read):
            element = dict(empty, image=image, image_id=start + i, file_name=name)
            for op in ops:
                element = op.map(element)
            elements.append(element)
        pad = batch_size - len(elements)
        images = np.stack([e["image"] for e in elements])
        image_hw = np.stack([e["image_hw"] for e in elements])
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        image_hw = np.concatenate([image_hw, np.zeros((pad, 2), image_hw.dtype)])
        dets = jax.tree_util.tree_map(np.asarray, predict(params, images, image_hw))
        for i, (name, image) in enumerate(read):
            h, w = image.shape[:2]
            keep = dets.valid[i] & (dets.scores[i] >= score_thr)
            order = np.argsort(-dets.scores[i][keep], kind="stable")
            boxes = dets.boxes[i][keep][order] / np.float32(elements[i]["scale"])
            boxes = np.clip(boxes, 0, np.asarray([w, h, w, h], np.float32)).astype(np.float32)
            labels = dets.classes[i][keep][order].astype(np.int32)
            pred = Prediction(
                name=name, image_hw=(h, w), boxes=boxes,
                scores=dets.scores[i][keep][order].astype(np.float32), labels=labels,
                category_ids=np.asarray(cats.category_ids, np.int64)[labels],
                class_names=tuple(cats.names[k] for k in labels),
            )  # fmt: skip
            yield pred, image


def predict_images(detector: Any, params: Any, config: ml_collections.ConfigDict,
                   images: Sequence | str, *, score_thr: float = 0.3,
                   batch_size: int | None = None) -> list[Prediction]:  # fmt: skip
    """Detections of each image (file paths, PIL images or uint8 arrays; or one folder /
    glob / file string, or one image), in the original pixels, in order. `batch_size`
    defaults to config.eval.batch_size."""
    if isinstance(images, str):
        images = find_images(images)
    elif isinstance(images, (np.ndarray, Image.Image)):
        images = [images]
    cats = categories(config)
    return [p for p, _ in _iterate(detector, params, config, list(images), score_thr,
                                   batch_size, cats)]  # fmt: skip


def coco_results(pred: Prediction, image_id: int) -> list[dict]:
    """COCO results rows of one image (bbox xywh in original pixels) with its file name."""
    return [
        dict(image_id=image_id, file_name=os.path.basename(pred.name),
             category_id=int(c), category_name=n, score=round(float(s), 5),
             bbox=[round(float(v), 2) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])])
        for b, s, c, n in zip(pred.boxes, pred.scores, pred.category_ids, pred.class_names)
    ]  # fmt: skip


def predict_to_dir(detector: Any, params: Any, config: ml_collections.ConfigDict,
                   paths: Sequence[str], out: str, *, score_thr: float = 0.3) -> list[dict]:
    """Writes `out/<image stem>.png` (annotated) per image and `out/results.json`;
    returns the results rows (image_id: the image's index in `paths`)."""
    os.makedirs(out, exist_ok=True)
    cats = categories(config)
    results, used = [], set()
    for image_id, (pred, image) in enumerate(
            _iterate(detector, params, config, list(paths), score_thr, None, cats)):
        stem = os.path.splitext(os.path.basename(pred.name))[0]
        png, n = f"{stem}.png", 1
        while png in used:  # the same file name in two folders
            png, n = f"{stem}_{n}.png", n + 1
        used.add(png)
        visualize.draw(image, pred.boxes, pred.labels, pred.scores,
                       class_names=cats.names).save(os.path.join(out, png))  # fmt: skip
        results += coco_results(pred, image_id)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def run(workdir: str, images: str, *, config: ml_collections.ConfigDict | None = None,
        step: int | None = None, score_thr: float = 0.3, out: str | None = None) -> list[dict]:
    """The `--mode=predict` command: find the images, load the run, write the outputs."""
    paths = find_images(images)
    detector, params, config = load(workdir, config, step=step)
    out = out or os.path.join(workdir, "predictions")
    results = predict_to_dir(detector, params, config, paths, out, score_thr=score_thr)
    print(f"Wrote {len(paths)} annotated image(s) and results.json ({len(results)} "
          f"detections, score >= {score_thr}) to {out}", flush=True)
    return results
