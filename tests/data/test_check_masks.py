"""data.with_masks=True on a dataset without instance masks fails at start-up
(loop.prepare_data / loop.setup) with an error naming the data field `masks`."""

import json
import os

import ml_collections
import pytest

from configs import common
from jaxdet.data import pipeline
from jaxdet.train import loop
from tests.data.coco_fixture import write_coco_dir
from tests.tiny import tiny_config


def _config(coco_root, data_dir, builder_config="default", with_masks=True):
    data = common.data_coco(coco_root)
    data.update(dict(
        data_dir=data_dir, builder_config=builder_config, num_classes=0, image_size=(64, 64),
        min_size=None, max_size=None, max_boxes=8, with_masks=with_masks, mask_stride=1,
        num_workers=0))  # fmt: skip
    return ml_collections.ConfigDict(dict(data=data))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("coco")
    return {
        "segm": write_coco_dir(str(base / "segm"), num_train=2, num_val=1),
        "boxes": write_coco_dir(str(base / "boxes"), num_train=2, num_val=1,
                                segmentation=False),
    }  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_annotations_without_segmentation(roots, data_dir):
    config = _config(roots["boxes"], data_dir)
    with pytest.raises(ValueError, match=r"`masks`.*no annotation with a `segmentation`"):
        loop.prepare_data(config)
    # A prepared directory whose jaxdet.json predates `num_segmentations`: the
    # annotation file is read instead.
    path = os.path.join(pipeline.prepare(config.data), "jaxdet.json")
    with open(path) as f:
        meta = json.load(f)
    assert meta.pop("num_segmentations") == {"train": 0, "val": 0}
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="`masks`"):
        pipeline.check_masks(config.data)
    loop.prepare_data(_config(roots["boxes"], data_dir, with_masks=False))  # box-only: fine


def test_builder_config_without_masks(roots, data_dir):
    config = _config(roots["segm"], data_dir, builder_config="boxes")
    with pytest.raises(ValueError, match=r"`masks`.*split 'train' stores no masks"):
        loop.prepare_data(config)


def test_dataset_with_masks_passes(roots, data_dir):
    config = _config(roots["segm"], data_dir)
    loop.prepare_data(config)
    assert config.data.num_classes == 3


def test_setup_fails_before_training(roots, data_dir, tmp_path):
    config = tiny_config("atss", data_dir)
    config.data = _config(roots["segm"], data_dir, builder_config="boxes").data
    with pytest.raises(ValueError, match="`masks`"):
        loop.setup(config, str(tmp_path))


def test_tfds_coco_has_no_masks(tmp_path):
    problem = pipeline._masks_problem("coco", str(tmp_path), "2017", "train")
    assert problem and "no masks" in problem
