"""Class-agnostic proposal recall: hand-made COCO GT, proposals equal / shifted / too many."""

import json

import numpy as np
import pytest

from jaxdet.eval import coco_eval, proposal_recall

KEYS = ("AR@100", "AR@300", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000")
IOU_THRS = np.linspace(0.5, 0.95, 10)

# Two images, GT of two categories (recall ignores them) and one crowd region. Areas:
# 20x20 = 400 small, 60x40 = 2400 medium, 120x100 = 12000 large.
GT = {
    "images": [{"id": 1, "height": 200, "width": 300}, {"id": 2, "height": 200, "width": 300}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 60, 60, 40]},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [100, 50, 120, 100]},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 300, 40], "iscrowd": 1},
    ],
    "categories": [{"id": 1}, {"id": 2}],
}  # fmt: skip
OBJECTS = {1: [[10, 10, 30, 30], [50, 60, 110, 100]], 2: [[100, 50, 220, 150]]}


def _proposals(per_image: dict[int, list], scores: dict[int, list] | None = None, k: int = 4):
    """Padded [2, k] proposals (xyxy) of images 1 and 2 at scale 1."""
    boxes = np.zeros((2, k, 4), np.float32)
    sc = np.zeros((2, k), np.float32)
    valid = np.zeros((2, k), bool)
    for b, image_id in enumerate((1, 2)):
        rows = per_image.get(image_id, [])
        boxes[b, : len(rows)] = rows
        sc[b, : len(rows)] = (scores or {}).get(image_id, np.linspace(0.9, 0.5, len(rows)))
        valid[b, : len(rows)] = True
    classes = np.full((2, k), 7, np.int32)  # any label: recall is class-agnostic
    return dict(boxes=boxes, scores=sc, classes=classes, valid=valid)


def _recall(dets, proposal_nums=(100, 300, 1000), scale=1.0):
    ev = proposal_recall.ProposalRecallEvaluator(GT, (1, 2), proposal_nums=proposal_nums)
    ev.add(dets, np.array([1, 2]), np.array([scale, scale]))
    return ev.evaluate(verbose=False)


def _shift_to_iou(box, iou):
    """The box moved right by the distance that leaves IoU `iou` with it."""
    x1, y1, x2, y2 = box
    w = x2 - x1
    d = w * (1 - iou) / (1 + iou)  # overlap (w - d) h / ((w + d) h) = iou
    return [x1 + d, y1, x2 + d, y2]


def test_proposals_equal_to_gt_give_recall_one(tmp_path):
    ev = proposal_recall.ProposalRecallEvaluator(GT, (1, 2))
    dets = _proposals({i: [b[:] for b in rows] for i, rows in OBJECTS.items()})
    dets["boxes"] *= 2.0  # network coords at scale 2
    ev.add(dets, {"image_id": np.array([1, 2]), "scale": np.array([2.0, 2.0])})
    stats = ev.evaluate(results_path=tmp_path / "proposals.json")
    assert tuple(stats) == KEYS == proposal_recall.stat_names()
    for k in KEYS:
        assert stats[k] == pytest.approx(1.0), k
    results = json.loads((tmp_path / "proposals.json").read_text())
    assert len(results) == 3 and {r["category_id"] for r in results} == {1}
    assert "proposal" in coco_eval.format_stats(stats)


def test_proposals_at_iou_06_recall_the_thresholds_up_to_06():
    # IoU 0.61 (0.6 exactly would sit on a threshold, subject to rounding).
    shifted = {i: [_shift_to_iou(b, 0.61) for b in rows] for i, rows in OBJECTS.items()}
    stats = _recall(_proposals(shifted))
    # Matches at the thresholds 0.5, 0.55, 0.6 (COCOeval: iou >= t) out of .5:.05:.95.
    expected = float(np.mean(IOU_THRS <= 0.61))
    assert expected == pytest.approx(0.3)
    for k in KEYS:
        assert stats[k] == pytest.approx(expected, abs=1e-6), k


def test_only_the_top_scoring_proposals_count():
    # Image 1: 3 decoys score above the 2 exact boxes; image 2: the exact box scores last.
    decoys = [[200, 150, 210, 160], [250, 0, 260, 10], [280, 180, 290, 190]]
    dets = _proposals(
        {1: decoys + OBJECTS[1], 2: decoys + OBJECTS[2]},
        {1: [0.9, 0.8, 0.7, 0.6, 0.5], 2: [0.9, 0.8, 0.7, 0.6]}, k=5,
    )  # fmt: skip
    stats = _recall(dets, proposal_nums=(1, 4, 5))
    assert set(stats) == {"AR@1", "AR@4", "AR@5", "AR_s@5", "AR_m@5", "AR_l@5"}
    assert stats["AR@1"] == pytest.approx(0.0)  # only decoys in the top 1
    assert stats["AR@4"] == pytest.approx(2 / 3)  # image 1: 1 of 2; image 2: 1 of 1
    assert stats["AR@5"] == pytest.approx(1.0)
    # Invalid rows are not proposals at all.
    dets["valid"][:, 3:] = False
    assert _recall(dets, proposal_nums=(1, 4, 5))["AR@5"] == pytest.approx(0.0)


def test_crowd_gt_is_not_an_object_to_recall():
    # Only the non-crowd objects are proposed: recall 1 (the crowd region counts as none).
    stats = _recall(_proposals(OBJECTS))
    assert stats["AR@100"] == pytest.approx(1.0)
    # Proposing only the crowd region recalls nothing on image 2 (AR_l: 0).
    dets = _proposals({1: OBJECTS[1], 2: [[0, 0, 300, 40]]})
    assert _recall(dets)["AR_l@1000"] == pytest.approx(0.0)


def test_proposal_nums_must_be_three_increasing():
    with pytest.raises(ValueError, match="proposal_nums"):
        proposal_recall.ProposalRecallEvaluator(GT, (1, 2), proposal_nums=(100, 1000))
