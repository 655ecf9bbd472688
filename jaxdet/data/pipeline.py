"""The input pipeline: prepared tfds datasets (array_record) -> grain -> padded batches.

    prepare(config.data)                                   # builds the dataset if missing
    it = from_config(config.data, batch_size=B, train=True, seed=0)
    batch = next(it)   # dict of numpy arrays, leading axis B (this process's share)

Datasets (`config.data.name`):
  shapes    the built-in procedural dataset (`jaxdet.data.shapes`), builder config
            `config.data.builder_config` ('default', 'tiny', 'small_objects').
  coco_dir  any COCO-format directory `config.data.coco_dir` (`jaxdet.data.coco_dir`),
            converted once under `data_dir/coco_dir_<name>_<hash>/`.
  coco      tfds `coco/2017` already prepared (array_record) in a local `data_dir`.

Train: a grain DataLoader with an IndexSampler (shuffled by `seed`, reshuffled every
epoch, sharded by JAX process, drop remainder), the transforms of
`transforms.train_transforms` and optional worker processes. With `cache_mb > 0`
the decoded (and resized) records are kept in memory up to that budget
(`jaxdet.data.cache`): the same batches, without decoding each epoch again. The
iterator's state (`get_state` / grain.checkpoint) restores the exact position, so a
resumed run sees the same batches. Eval: this process's strided share of the split in order, padded
with padding examples (image_id -1) so every process yields the same number of
full batches. Batch fields: see `transforms` (Pad output).

`data` is a full `config.data` (a ConfigDict or dict): every field is read directly,
and `configs/common.py` (`data_shapes`, `data_coco`) is the one place that lists them
with their defaults. `num_classes=0` means "the dataset's category count".
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags, logging

from jaxdet.data import coco, coco_dir, shapes, transforms
from jaxdet.data.cache import DecodedCache
from jaxdet.data.prefetch import Prefetch

DATASETS = ("shapes", "coco_dir", "coco")


def _with(data: Any, overrides: dict) -> dict:
    """A dict copy of `data` with the non-None `overrides` applied (each must be a field)."""
    out = dict(data.items())
    unknown = sorted(set(overrides) - set(out))
    if unknown:
        raise TypeError(f"unknown data field(s) {unknown}: see configs/common.py")
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def _slug(path: str) -> str:
    path = os.path.abspath(path)
    base = "".join(c if c.isalnum() else "_" for c in os.path.basename(path.rstrip("/")))
    return f"{base[:40]}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def resolve_dataset(data: Any, data_dir: str | None = None,
                    builder_config: str | None = None) -> tuple[str, str, str]:  # fmt: skip
    """(name, data_dir, builder_config) of a config.data or of a dataset name.

    For coco_dir the returned data_dir is the source's own directory under data_dir."""
    if isinstance(data, str):  # a name: data_dir is the dataset's own directory
        name, ddir, bc, src = data, data_dir, builder_config or "default", ""
    else:
        name, ddir, bc, src = (data["name"], data["data_dir"], data["builder_config"],
                               data["coco_dir"])  # fmt: skip
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {DATASETS}")
    ddir = os.path.abspath(ddir or os.path.join(os.getcwd(), "data", "tfds"))
    if name == "coco_dir":
        if src:  # a config: the source's own directory; else data_dir already is it
            ddir = os.path.join(ddir, f"coco_dir_{_slug(src)}")
    if name == "coco":
        bc = "2017" if bc == "default" else bc
    return name, ddir, bc


def _prepared_dir(name: str, data_dir: str, builder_config: str) -> str | None:
    base = os.path.join(data_dir, name, builder_config)
    if not os.path.isdir(base):
        return None
    versions = sorted(v for v in os.listdir(base)
                      if os.path.exists(os.path.join(base, v, "dataset_info.json")))  # fmt: skip
    return os.path.join(base, versions[-1]) if versions else None


def prepare(data: Any, data_dir: str | None = None, builder_config: str | None = None) -> str:
    """Builds the dataset if it is not prepared yet; returns its prepared directory."""
    name, ddir, bc = resolve_dataset(data, data_dir, builder_config)
    found = _prepared_dir(name, ddir, bc)
    if found:
        return found
    if name == "coco":
        raise FileNotFoundError(
            f"tfds coco/{bc} is not prepared (array_record) under {ddir}; nothing is ever "
            "downloaded: prepare it there, or use name=coco_dir with a COCO-format directory"
        )
    if name == "shapes":
        builder = shapes.Shapes(data_dir=ddir, config=bc, file_format="array_record")
    else:
        src = data["coco_dir"] if not isinstance(data, str) else ""
        if not src:
            raise ValueError("data.name='coco_dir' needs data.coco_dir (a COCO-format dir)")
        builder = coco_dir.CocoDir(coco_dir=src, data_dir=ddir, config=bc,
                                   file_format="array_record")  # fmt: skip
    print(f"Preparing dataset {name}/{bc} under {ddir} (first use only) ...", flush=True)
    t0 = time.time()
    tfds.disable_progress_bar()
    builder.download_and_prepare()
    print(f"Prepared {builder.data_dir} in {time.time() - t0:.0f} s", flush=True)
    if name == "coco_dir":
        builder.write_metadata()
    return str(builder.data_dir)


@functools.lru_cache(maxsize=32)
def _reader(name: str, data_dir: str, builder_config: str):
    path = _prepared_dir(name, data_dir, builder_config)
    if path is None:
        raise FileNotFoundError(f"dataset {name}/{builder_config} is not prepared under "
                                f"{data_dir}: run pipeline.prepare first")  # fmt: skip
    return tfds.builder_from_directory(path)


def data_source(name: str, split: str, data_dir: str, builder_config: str, *,
                with_masks: bool = False):  # fmt: skip
    """Random-access source of records (images left encoded; masks only if asked)."""
    decoders = {"image": tfds.decode.SkipDecoding()}
    if not with_masks and name != "coco":
        decoders["masks"] = tfds.decode.SkipDecoding()
    return _reader(name, data_dir, builder_config).as_data_source(split=split,
                                                                  decoders=decoders)


class _CocoSource:
    """tfds coco/2017 records converted to the jaxdet record format."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        return coco.coco2017_to_record(self.source[i])


def _source(data: Any, split: str, with_masks: bool):
    name, ddir, bc = resolve_dataset(data)
    src = data_source(name, split, ddir, bc, with_masks=with_masks)
    return _CocoSource(src) if name == "coco" else src


def metadata(name: str, data_dir: str, builder_config: str) -> dict:
    """jaxdet.json of a prepared coco_dir dataset ({} for the others)."""
    path = _prepared_dir(name, data_dir, builder_config)
    meta = os.path.join(path or "", coco_dir.META_FILE)
    if path and os.path.exists(meta):
        with open(meta) as f:
            return json.load(f)
    return {}


def category_map(name: str, data_dir: str, builder_config: str) -> coco.CategoryMap:
    """Contiguous labels <-> category ids and names of a prepared dataset."""
    if name == "shapes":
        n = len(shapes.CLASS_NAMES)
        return coco.CategoryMap(tuple(range(1, n + 1)), shapes.CLASS_NAMES)
    if name == "coco":
        names = _reader(name, data_dir, builder_config).info.features["objects"]["label"].names
        return coco.CategoryMap(coco.COCO80_CATEGORY_IDS, tuple(names))
    meta = metadata(name, data_dir, builder_config)
    if not meta:
        raise FileNotFoundError(f"{name} under {data_dir} has no {coco_dir.META_FILE}")
    return coco.CategoryMap(tuple(meta["category_ids"]), tuple(meta["names"]))


def class_names(data: Any) -> tuple[str, ...]:
    return category_map(*resolve_dataset(data)).names


def num_examples(data: Any, split: str) -> int:
    name, ddir, bc = resolve_dataset(data)
    return len(data_source(name, split, ddir, bc))


def num_classes_of(data: Any) -> int:
    """The dataset's category count K; an error if `data.num_classes` fixes another one
    (0 means "from the dataset")."""
    found = len(category_map(*resolve_dataset(data)).category_ids)
    want = int(data["num_classes"])
    if want and want != found:
        raise ValueError(f"config.data.num_classes={want} but the dataset has {found} "
                         "categories (0 takes the dataset's count)")  # fmt: skip
    return found


def resolve_num_classes(data: Any) -> int:
    """Sets `data.num_classes` (in place) to the dataset's category count when it is 0,
    and logs it; an error if it fixes another count. Call before building the detector."""
    found = num_classes_of(data)
    if not int(data["num_classes"]):
        data["num_classes"] = found
        message = f"config.data.num_classes=0: the dataset has {found} categories"
        logging.info(message)
        if jax.process_index() == 0:
            print(message, flush=True)
    return found


def check_masks(data: Any) -> None:
    """Start-up check of `data.with_masks=True`: the train and val splits must carry
    instance masks (the records' `masks` field at the image size) and, for coco_dir, the
    annotation file must have segmentations (else its masks are the boxes filled in).
    A ValueError naming the data field `masks` otherwise; nothing if with_masks is False."""
    if not bool(data["with_masks"]):
        return
    name, ddir, bc = resolve_dataset(data)
    for split in dict.fromkeys((data["train_split"], data["val_split"])):
        problem = _masks_problem(name, ddir, bc, split)
        if problem:
            raise ValueError(
                f"config.data.with_masks=True needs the data field `masks` (instance masks), "
                f"but dataset {name}/{bc} split {split!r} {problem}; or set "
                "config.data.with_masks=False (a box-only detector)"
            )


def _masks_problem(name: str, data_dir: str, builder_config: str, split: str) -> str | None:
    """Why `split` carries no usable instance masks (None: it does, or it does not exist)."""
    if name == "coco":
        return ("is tfds coco/2017, whose records have no masks: use name='coco_dir' "
                "(builder_config='default') with the COCO-format directory")  # fmt: skip
    if split not in _reader(name, data_dir, builder_config).info.splits:
        return None
    source = data_source(name, split, data_dir, builder_config, with_masks=True)
    for i in range(min(len(source), 64)):  # the first record with objects
        record = source[i]
        n = len(np.asarray(record["labels"]).reshape(-1))
        if n:
            hw = coco.image_size_of(record["image"])
            if np.shape(record.get("masks")) != (n, *hw):
                return (f"stores no masks (record {_name(record)}); prepare it with a "
                        "builder config that stores masks (coco_dir: 'default')")  # fmt: skip
            break
    if name == "coco_dir":
        meta = metadata(name, data_dir, builder_config)
        count = meta.get("num_segmentations", {}).get(split)
        path = meta.get("annotation_files", {}).get(split)
        if count is None and path and os.path.exists(path):
            count = coco_dir.num_segmentations(coco.load_coco_json(path))
        if count == 0:
            return (f"has no annotation with a `segmentation` in {path} (its masks would be "
                    "the boxes filled in)")  # fmt: skip
    return None


def _name(record: dict) -> str:
    name = record.get("file_name", "")
    return name.decode() if isinstance(name, bytes) else str(name)


def input_transforms(data: Any, *, train: bool, num_classes: int) -> list:
    """The per-example transforms of `data`'s train (or eval) pipeline."""
    min_size = data["min_size"]
    max_size = data["max_size"] or min_size
    image_size = data["image_size"]
    if image_size is None:
        if not max_size:
            raise ValueError("set data.image_size (padded size) or data.max_size")
        image_size = (max_size, max_size)
    return transforms.train_transforms(
        num_classes, tuple(image_size), int(data["max_boxes"]),
        min_size=min_size, max_size=max_size, flip_prob=float(data["flip_prob"]),
        mean=data["mean"], std=data["std"], with_masks=bool(data["with_masks"]),
        mask_stride=int(data["mask_stride"]), train=train,
    )  # fmt: skip


def make_train_iterator(data: Any, *, batch_size: int, seed: int = 0, **overrides):
    """Endless, shuffled, checkpointable iterator of this process's batches of
    `batch_size` (= global batch / process count)."""
    data = _with(data, overrides)
    split = data["train_split"]
    source = _source(data, split, bool(data["with_masks"]))
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    if len(source) // shard.shard_count < batch_size:
        raise ValueError(f"split {split!r} has {len(source)} examples: fewer than one batch "
                         f"of {batch_size} per process")  # fmt: skip
    workers = int(data["num_workers"])
    if workers and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (outside app.run)
    ops = input_transforms(data, train=True, num_classes=num_classes_of(data))
    cache_mb = float(data["cache_mb"])
    if cache_mb > 0:  # decode + resize once, then from memory (same batches)
        deterministic = [op for op in ops[:2]
                         if isinstance(op, (transforms.Decode, transforms.ResizeKeepRatio))]
        source = DecodedCache(source, deterministic, int(cache_mb * 2**20))
        ops = ops[len(deterministic):]
    loader = grain.DataLoader(
        data_source=source,
        sampler=grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=True,
                                            num_epochs=None, seed=int(seed)),
        operations=[*ops, grain.transforms.Batch(batch_size, drop_remainder=True)],
        worker_count=workers,
        # grain's reader threads (16 by default) poll a 500-deep buffer on every
        # element: for local files 0 threads costs less CPU (the tiny config: 19.6 vs
        # 27.2 ms per batch of 16), and `prefetch` gives the overlap with the step
        read_options=grain.ReadOptions(num_threads=int(data["read_threads"]),
                                       prefetch_buffer_size=max(2 * batch_size, 16)),
    )  # fmt: skip
    prefetch = int(data["prefetch"])
    return Prefetch(iter(loader), prefetch) if prefetch > 0 else iter(loader)


def make_eval_iterator(data: Any, *, batch_size: int, split: str | None = None,
                       **overrides) -> Iterator[dict]:  # fmt: skip
    """This process's share of `split` (default val_split) in order, in full batches
    padded with padding examples (image_id -1). Every process yields the same number
    of batches. `overrides`: data fields (min_size, max_boxes, with_masks, ...) that
    replace those of `data` when not None; min_size=None explicitly: no resize."""
    no_resize = "min_size" in overrides and overrides["min_size"] is None
    data = _with(data, overrides)
    if no_resize:
        data["min_size"] = data["max_size"] = None
    split = split or data["val_split"]
    source = _source(data, split, bool(data["with_masks"]))
    pi, pc = jax.process_index(), jax.process_count()
    indices = np.arange(pi, len(source), pc)
    per_process = -(-len(source) // pc)
    num_batches = -(-per_process // batch_size)
    if data["image_size"] is None and not data["max_size"]:
        data["image_size"] = _max_image_size(source)
    ops = input_transforms(data, train=False, num_classes=num_classes_of(data))

    def load(i: int) -> dict:
        element = dict(source[int(i)])
        for op in ops:
            element = op.map(element)
        return element

    template = None
    for b in range(num_batches):
        chunk = indices[b * batch_size:(b + 1) * batch_size]
        elements = [load(i) for i in chunk]
        template = template or (elements[0] if elements else None)
        if template is None:  # this process has no examples at all: load one to copy
            template = load(0)
        elements += [transforms.padding_example(template)] * (batch_size - len(elements))
        yield {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def _max_image_size(source) -> tuple[int, int]:
    """Largest (h, w) in a split, rounded up to a multiple of 32 (no-resize eval)."""
    h = w = 0
    for i in range(len(source)):
        ih, iw = coco.image_size_of(source[i]["image"])
        h, w = max(h, ih), max(w, iw)
    return -(-h // 32) * 32, -(-w // 32) * 32


def from_config(data: Any, *, batch_size: int, train: bool, seed: int = 0):
    """The train iterator (train=True) or one pass of the eval iterator over val_split."""
    if train:
        return make_train_iterator(data, batch_size=batch_size, seed=seed)
    return make_eval_iterator(data, batch_size=batch_size)
