"""CocoEvaluator: perfect detections -> AP 1, none -> AP 0, category ids mapped back."""

import json

import numpy as np
import pytest

from configs import common
from jaxdet.core.types import Detections
from jaxdet.data import pipeline
from jaxdet.eval import coco_eval


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare("shapes", data_dir, builder_config="tiny")
    return data_dir


def _shapes(data_dir):
    """shapes/tiny, unresized (padded to the split's largest image)."""
    data = common.data_shapes(64, "tiny")
    data.update(dict(data_dir=data_dir, image_size=None, min_size=None, max_size=None))
    return data


def _eval_batches(data_dir, **kw):
    kw = {"batch_size": 3, "max_boxes": 20, **kw}
    return list(pipeline.make_eval_iterator(_shapes(data_dir), **kw))


def _perfect(batch, with_masks=False):
    """Detections equal to the ground truth, as numpy, in network coordinates."""
    n = batch["labels"].shape[1]
    return Detections(
        boxes=batch["boxes"],
        scores=np.tile(np.linspace(1.0, 0.5, n, dtype=np.float32), (len(batch["labels"]), 1)),
        classes=batch["labels"],
        valid=batch["valid"],
        masks=batch["masks"].astype(np.float32) if with_masks else None,
    )


def test_stat_names():
    assert coco_eval.STAT_NAMES == (
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    )  # fmt: skip


@pytest.mark.parametrize("min_size", [None, 96])
def test_perfect_detections_give_ap_one(shapes_dir, tmp_path, min_size, capsys):
    ev = coco_eval.CocoEvaluator.for_dataset("shapes", shapes_dir, "val", "tiny")
    for batch in _eval_batches(shapes_dir, min_size=min_size, max_size=min_size):
        ev.add(_perfect(batch), batch)
    stats = ev.evaluate(results_path=tmp_path / "res.json")
    assert set(stats) == set(coco_eval.STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert "Average Precision" in capsys.readouterr().out
    results = json.loads((tmp_path / "res.json").read_text())
    assert len(results) == sum(len(a) for a in [ev.gt.dataset["annotations"]])
    assert {r["category_id"] for r in results} <= {1, 2, 3}
    assert all(r["image_id"] >= 1_000_000 for r in results)


@pytest.mark.parametrize("stride,min_ap", [(1, 1.0), (2, 0.7)])
def test_perfect_masks_give_segm_ap_one(shapes_dir, stride, min_ap):
    ev = coco_eval.CocoEvaluator.for_dataset(
        "shapes", shapes_dir, "val", "tiny", iou_types=("bbox", "segm")
    )
    for batch in _eval_batches(shapes_dir, with_masks=True, mask_stride=stride):
        ev.add(_perfect(batch, with_masks=True), batch)
    stats = ev.evaluate(verbose=False)
    assert stats["AP"] == pytest.approx(1.0)
    # Masks at 1/stride resolution lose detail on the small shapes (the tiny config has
    # 5 px objects; AP runs up to IoU 0.95).
    assert stats["segm_AP"] >= min_ap - 1e-9


def test_zero_detections_give_ap_zero(shapes_dir, tmp_path):
    ev = coco_eval.CocoEvaluator.for_dataset("shapes", shapes_dir, "val", "tiny")
    for batch in _eval_batches(shapes_dir):
        dets = _perfect(batch)
        ev.add(dets.replace(valid=np.zeros_like(dets.valid)), batch)
    stats = ev.evaluate(results_path=tmp_path / "empty.json", verbose=False)
    assert stats["AP"] == 0 and stats["AR100"] == 0
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    assert coco_eval.CocoEvaluator.for_dataset("shapes", shapes_dir, "val", "tiny").evaluate(
        verbose=False
    )["AP"] in (0.0, -1.0)  # nothing added at all: no crash


def test_only_seen_images_are_evaluated(shapes_dir):
    ev = coco_eval.CocoEvaluator.for_dataset("shapes", shapes_dir, "val", "tiny")
    batch = _eval_batches(shapes_dir)[0]
    ev.add(_perfect(batch), batch)
    assert ev.evaluate(verbose=False)["AP"] == pytest.approx(1.0)
    assert ev.evaluate(verbose=False, only_seen_images=False)["AP"] < 1.0


def test_category_ids_map_back_with_a_gap():
    # Labels 0, 1, 2 <-> category ids 1, 3, 7; boxes in network coords at scale 2.
    gt = {
        "images": [{"id": 5, "height": 50, "width": 60}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [10, 10, 20, 15], "area": 300,
             "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [30, 20, 25, 25]},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 60, 50], "iscrowd": 1},
        ],
        "categories": [{"id": 1}, {"id": 3}, {"id": 7}],
    }  # fmt: skip
    ev = coco_eval.CocoEvaluator(gt, (1, 3, 7))
    dets = {
        "boxes": np.array([[[20, 20, 60, 50], [60, 40, 110, 90], [0, 0, 0, 0]]] * 2, np.float32),
        "scores": np.array([[0.9, 0.8, 0.0]] * 2, np.float32),
        "classes": np.array([[2, 0, 0]] * 2, np.int32),
        "valid": np.array([[True, True, False]] * 2),
    }
    ev.add(dets, np.array([5, -1]), np.array([2.0, 1.0]))  # -1: a padding example
    assert [r["category_id"] for r in ev.results] == [7, 1]
    np.testing.assert_allclose(ev.results[0]["bbox"], [10, 10, 20, 15])
    np.testing.assert_allclose(ev.results[1]["bbox"], [30, 20, 25, 25])  # clipped to the image
    assert ev.evaluate(verbose=False)["AP"] == pytest.approx(1.0)


def test_evaluator_for_config_and_format_stats(shapes_dir):
    cfg = _shapes(shapes_dir)
    ev = coco_eval.evaluator_for(cfg)
    for batch in pipeline.make_eval_iterator(cfg, batch_size=4, max_boxes=20):
        ev.add(_perfect(batch), batch["image_id"], batch["scale"])
    stats = ev.evaluate(verbose=False)
    assert stats["AP"] == pytest.approx(1.0)
    text = coco_eval.format_stats({**stats, "eval_seconds": 1.5})
    assert text.splitlines()[0].startswith("bbox: AP 1.000  AP50 1.000")
    assert "eval_seconds 1.5" in text
