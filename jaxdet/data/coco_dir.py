"""tfds builder for any COCO-format directory laid out like COCO 2017.

    DIR/annotations/instances_train2017.json   DIR/train2017/<file_name>
    DIR/annotations/instances_val2017.json     DIR/val2017/<file_name>

    CocoDir(coco_dir=DIR, data_dir=..., config='default' | 'boxes').download_and_prepare()

Splits are those whose annotation file exists (at least one must). Images are
stored as their original encoded bytes (each one decoded once at build time: a
corrupt file is an error that names it). Category ids map to contiguous labels by
sorted id; the map and the annotation file paths are written to `jaxdet.json` in
the prepared directory (read by `pipeline.category_map` / `pipeline.metadata`), with
the number of annotations with a `segmentation` per split (`num_segmentations`).
Builder configs: `default` stores instance masks (polygons / RLE decoded, zlib
compressed); `boxes` stores none (smaller and faster for box-only detectors).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import tensorflow_datasets as tfds

from jaxdet.data import coco, shapes

SPLITS = {"train": "train2017", "val": "val2017"}
META_FILE = "jaxdet.json"


@dataclasses.dataclass(eq=False)
class CocoDirConfig(tfds.core.BuilderConfig):
    with_masks: bool = True


def annotation_file(coco_dir: str, split: str) -> str:
    return os.path.join(coco_dir, "annotations", f"instances_{SPLITS[split]}.json")


def num_segmentations(data: dict) -> int:
    """Annotations of a COCO dict with a non-empty `segmentation` (polygons or RLE)."""
    return sum(1 for a in data["annotations"] if a.get("segmentation") not in (None, [], {}))


class CocoDir(tfds.core.GeneratorBasedBuilder):
    """A COCO-format directory as a tfds dataset (array_record, no TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        CocoDirConfig(name="default", description="boxes, labels, crowd flags, masks"),
        CocoDirConfig(name="boxes", description="no masks", with_masks=False),
    ]

    def __init__(self, *, coco_dir: str = "", **kwargs):
        self.coco_dir = os.path.abspath(coco_dir) if coco_dir else ""
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=shapes.record_features(image_format="jpeg")
        )

    def available_splits(self) -> list[str]:
        if not self.coco_dir or not os.path.isdir(self.coco_dir):
            raise FileNotFoundError(
                f"coco_dir {self.coco_dir!r} is not a directory (set --config.data.coco_dir)"
            )
        splits = [s for s in SPLITS if os.path.exists(annotation_file(self.coco_dir, s))]
        if not splits:
            raise FileNotFoundError(
                f"no annotations/instances_{{train,val}}2017.json under {self.coco_dir}"
            )
        return splits

    def categories(self, annotations: dict[str, dict] | None = None) -> coco.CategoryMap:
        """The category map, identical across splits (an error if they differ).
        annotations: the splits' loaded annotation dicts (default: read the files)."""
        annotations = annotations or {
            s: coco.load_coco_json(annotation_file(self.coco_dir, s))
            for s in self.available_splits()
        }
        maps = {s: coco.CategoryMap.from_categories(d["categories"])
                for s, d in annotations.items()}  # fmt: skip
        first = next(iter(maps.values()))
        for s, m in maps.items():
            if m.category_ids != first.category_ids:
                raise ValueError(f"split {s} of {self.coco_dir} has other categories")
        return first

    def _split_generators(self, dl_manager):
        del dl_manager
        return {s: self._generate_examples(s) for s in self.available_splits()}

    def _generate_examples(self, split: str):
        data = coco.load_coco_json(annotation_file(self.coco_dir, split))
        categories = coco.CategoryMap.from_categories(data["categories"])
        by_image = collections.defaultdict(list)
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        image_dir = os.path.join(self.coco_dir, SPLITS[split])
        for info in data["images"]:
            yield int(info["id"]), coco.image_record(
                info, by_image[info["id"]], categories, image_dir,
                with_masks=self.builder_config.with_masks,
            )  # fmt: skip

    def write_metadata(self) -> None:
        """Writes jaxdet.json (category map, annotation files, number of annotations
        with a segmentation per split) into the prepared dir."""
        files = {s: annotation_file(self.coco_dir, s) for s in self.available_splits()}
        annotations = {s: coco.load_coco_json(path) for s, path in files.items()}
        meta = self.categories(annotations).to_json()
        meta["annotation_files"] = files
        meta["num_segmentations"] = {s: num_segmentations(d) for s, d in annotations.items()}
        meta["coco_dir"] = self.coco_dir
        with open(os.path.join(self.data_dir, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
