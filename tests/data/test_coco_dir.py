"""coco_dir: a COCO-format directory -> tfds -> batches; crowd, masks, id mapping,
invalid boxes, corrupt images; and evaluation maps labels back to category ids."""

import json
import os

import numpy as np
import pytest

from configs import common
from jaxdet.data import coco, pipeline
from jaxdet.eval import coco_eval
from tests.data.coco_fixture import write_coco_dir


def _config(coco_root, data_dir, **kw):
    config = common.data_coco(coco_root)
    config.update(dict(
        data_dir=data_dir, builder_config="default", num_classes=3, image_size=(64, 64),
        min_size=None, max_size=None, max_boxes=8, with_masks=True, mask_stride=1,
        flip_prob=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_workers=0))
    config.update(kw)
    return config


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_dir(str(tmp_path_factory.mktemp("coco")))


@pytest.fixture(scope="module")
def prepared(coco_root, tmp_path_factory):
    config = _config(coco_root, str(tmp_path_factory.mktemp("tfds")))
    pipeline.prepare(config)
    return config


def test_categories_are_contiguous_by_sorted_id(prepared):
    cats = pipeline.category_map(*pipeline.resolve_dataset(prepared))
    assert cats.category_ids == (1, 3, 7) and cats.names == ("person", "cat", "kite")
    meta = pipeline.metadata(*pipeline.resolve_dataset(prepared))
    assert meta["annotation_files"]["val"].endswith("instances_val2017.json")


def test_first_image_boxes_crowd_masks_and_invalid_rows(prepared):
    batches = pipeline.make_eval_iterator(prepared, batch_size=3, split="train")
    batch = next(b for b in batches if (b["image_id"] == 1).any())
    i = int(np.nonzero(batch["image_id"] == 1)[0][0])
    valid = batch["valid"][i]
    # 6 annotations: polygon, RLE box, crowd; NaN, degenerate and outside boxes dropped.
    assert valid.sum() == 3 and batch["num_invalid"][i] == 3
    boxes, labels, ignore = batch["boxes"][i][valid], batch["labels"][i][valid], \
        batch["ignore"][i][valid]
    # Non-crowd rows first, then the crowd box (an ignore region).
    np.testing.assert_allclose(boxes, [[4, 6, 24, 22], [30, 10, 44, 30], [0, 30, 40, 48]])
    np.testing.assert_array_equal(labels, [0, 2, 1])  # ids 1, 7, 3 -> labels 0, 2, 1
    np.testing.assert_array_equal(ignore, [False, False, True])
    masks = batch["masks"][i]
    assert masks.shape == (8, 64, 64)
    assert masks[1, 10:30, 30:44].all() and masks[1].sum() == 20 * 14  # compressed RLE
    assert masks[2, 30:48, 0:40].all() and masks[2].sum() == 18 * 40  # list RLE (crowd)
    assert masks[0, 7:21, 5:23].all()  # polygon interior
    assert masks[3:].sum() == 0
    # The image itself (unnormalised: mean 0, std 1) padded from 48x64 to 64x64.
    np.testing.assert_array_equal(batch["image_hw"][i], [48, 64])
    assert (batch["image"][i][48:] == 0).all()


def test_train_iterator_and_eval_with_category_ids(prepared, tmp_path):
    it = pipeline.from_config(prepared, batch_size=2, train=True, seed=0)
    b = next(it)
    assert b["image"].shape == (2, 64, 64, 3) and b["masks"].shape == (2, 8, 64, 64)
    # Perfect detections on the val split give AP 1 with results in category ids: the
    # annotations the pipeline drops (NaN, degenerate, outside) are ignored by COCOeval.
    ev = coco_eval.evaluator_for(prepared)
    for batch in pipeline.from_config(prepared, batch_size=2, train=False):
        n = batch["labels"].shape[1]
        dets = dict(boxes=batch["boxes"], classes=batch["labels"],
                    scores=np.tile(np.linspace(1, 0.5, n), (2, 1)),
                    valid=batch["valid"] & ~batch["ignore"])
        ev.add(dets, batch["image_id"], batch["scale"])
    stats = ev.evaluate(results_path=tmp_path / "r.json", verbose=False)
    assert stats["AP"] == pytest.approx(1.0)
    assert {r["category_id"] for r in json.loads((tmp_path / "r.json").read_text())} == {1, 7}


def test_boxes_only_builder_config(coco_root, tmp_path):
    config = _config(coco_root, str(tmp_path), with_masks=False)
    config.builder_config = "boxes"
    pipeline.prepare(config)
    b = next(pipeline.make_eval_iterator(config, batch_size=3))
    assert "masks" not in b and b["valid"].sum() == 3 + 2 + 2
    config.with_masks = True
    with pytest.raises(ValueError, match="no instance masks"):
        next(pipeline.make_eval_iterator(config, batch_size=3))


def test_corrupt_image_error_names_the_file(tmp_path):
    root = write_coco_dir(str(tmp_path / "coco"), num_train=2, num_val=1)
    bad = os.path.join(root, "train2017", "000000000002.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ValueError, match="000000000002.jpg"):
        pipeline.prepare(_config(root, str(tmp_path / "tfds")))


def test_bad_inputs_are_clear_errors(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        pipeline.prepare(_config(str(tmp_path / "missing"), str(tmp_path)))
    config = _config(coco_root, str(tmp_path / "t"), num_classes=80)
    pipeline.prepare(config)
    with pytest.raises(ValueError, match="num_classes=80"):
        next(pipeline.make_eval_iterator(config, batch_size=2))
    with pytest.raises(ValueError, match="unknown image"):
        coco.validate_coco_dict({"images": [{"id": 1, "height": 1, "width": 1,
                                             "file_name": "a"}],
                                 "annotations": [{"id": 1, "image_id": 2, "category_id": 1,
                                                  "bbox": [0, 0, 1, 1]}],
                                 "categories": [{"id": 1}]})
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        coco.load_coco_json(path)


def test_tfds_coco2017_example_conversion():
    ex = {"image": np.zeros((40, 80, 3), np.uint8), "image/id": 139,
          "image/filename": b"000000000139.jpg",
          "objects": {"bbox": np.array([[0.25, 0.5, 0.75, 1.0]], np.float32),
                      "label": np.array([4]), "is_crowd": np.array([True])}}
    r = coco.coco2017_to_record(ex)
    np.testing.assert_allclose(r["boxes"], [[40, 10, 80, 30]])
    assert r["image_id"] == 139 and r["file_name"] == "000000000139.jpg"
    assert r["is_crowd"].tolist() == [True] and r["labels"].tolist() == [4]
    assert coco.COCO80_CATEGORY_IDS[r["labels"][0]] == 5 and len(coco.COCO80_CATEGORY_IDS) == 80


def test_num_classes_zero_is_read_from_the_annotations(coco_root, tmp_path):
    from jaxdet import detectors
    from jaxdet.train import loop
    from tests.tiny import tiny_config

    data = _config(coco_root, str(tmp_path), num_classes=0, with_masks=False)
    data.builder_config = "boxes"
    pipeline.prepare(data)
    assert pipeline.resolve_num_classes(data) == 3 and data.num_classes == 3
    b = next(pipeline.make_eval_iterator(data, batch_size=3))  # a fixed K: checked
    assert b["labels"][b["valid"]].max() == 2
    # A tiny config pointed at the directory: K is resolved before the detector is built.
    config = tiny_config("atss", str(tmp_path))
    config.data.update(dict(name="coco_dir", coco_dir=coco_root, builder_config="boxes",
                            num_classes=0))
    loop.prepare_data(config)
    assert config.data.num_classes == 3 and detectors.build(config).num_classes == 3
    config.data.num_classes = 5
    with pytest.raises(ValueError, match="num_classes=5 but the dataset has 3"):
        loop.prepare_data(config)


def test_unusable_polygons_become_empty_masks_for_segm_eval():
    from pycocotools import mask as mask_utils

    data = {"images": [{"id": 1, "height": 4, "width": 5}],
            "annotations": [{"id": 1, "image_id": 1, "segmentation": []},
                            {"id": 2, "image_id": 1, "segmentation": [[0, 0, 2], [0, 0, 4, 0, 4, 3]]},
                            {"id": 3, "image_id": 1, "segmentation": {"size": [4, 5], "counts": "5"}}]}
    assert coco.empty_segmentations(data) == 1
    a1, a2, a3 = data["annotations"]
    assert mask_utils.decode({**a1["segmentation"], "counts": a1["segmentation"]["counts"].encode()}
                             ).sum() == 0
    assert a2["segmentation"] == [[0, 0, 4, 0, 4, 3]]  # the short polygon dropped
    assert a3["segmentation"] == {"size": [4, 5], "counts": "5"}  # RLE untouched
