"""Class-agnostic proposal recall (COCO AR) with pycocotools, as mmdetection's CocoMetric
with metric='proposal' and proposal_nums=(100, 300, 1000).

    evaluator = evaluator_for(config.data)          # the same interface as coco_eval
    for batch in pipeline.make_eval_iterator(config.data, batch_size=B):
        dets = predict(params, batch['image'], batch['image_hw'])  # Detections: proposals
        evaluator.add(dets, batch['image_id'], batch['scale'])     # or evaluator.add(dets, batch)
    stats = evaluator.evaluate(results_path=...)  # {'AR@100': ..., 'AR_l@1000': ...}

Proposals are Detections (boxes [B, K, 4] in network coordinates, scores [B, K], valid
[B, K]; classes and masks are ignored) mapped back to the original image as in
`coco_eval.CocoEvaluator`. COCOeval runs with params.useCats = 0 (every GT of every
category is an object to recall), maxDets = proposal_nums and the default IoU thresholds
.5:.05:.95: per image only the `maxDets` highest-scoring proposals count. Crowd GT
(iscrowd=1) are ignore regions, not objects to recall (COCOeval's iscrowd handling).
Stats (mmdetection's names, pycocotools' stats[6:12]): AR@n0, AR@n1, AR@n2 (all areas),
AR_s@n2, AR_m@n2, AR_l@n2 for proposal_nums (n0, n1, n2); -1 where a range has no GT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxdet.data import pipeline
from jaxdet.eval import coco_eval

PROPOSAL_NUMS = (100, 300, 1000)


def stat_names(proposal_nums: Sequence[int] = PROPOSAL_NUMS) -> tuple[str, ...]:
    """('AR@100', 'AR@300', 'AR@1000', 'AR_s@1000', 'AR_m@1000', 'AR_l@1000') by default."""
    n0, n1, n2 = (int(n) for n in proposal_nums)
    return (f"AR@{n0}", f"AR@{n1}", f"AR@{n2}", f"AR_s@{n2}", f"AR_m@{n2}", f"AR_l@{n2}")


class ProposalRecallEvaluator(coco_eval.CocoEvaluator):
    """Accumulates proposals batch by batch, then runs class-agnostic COCOeval (recall)."""

    def __init__(
        self,
        gt: COCO | Mapping | str,
        category_ids: Sequence[int],
        *,
        proposal_nums: Sequence[int] = PROPOSAL_NUMS,
    ):
        if len(proposal_nums) != 3 or list(proposal_nums) != sorted(proposal_nums):
            raise ValueError(f"proposal_nums {tuple(proposal_nums)}: expected 3 increasing "
                             "counts (pycocotools summarises maxDets[0], [1] and [2])")  # fmt: skip
        super().__init__(gt, category_ids, iou_types=("bbox",))
        self.proposal_nums = tuple(int(n) for n in proposal_nums)

    @classmethod
    def for_dataset(
        cls,
        name: str,
        data_dir: str,
        split: str = "val",
        builder_config: str | None = None,
        *,
        proposal_nums: Sequence[int] = PROPOSAL_NUMS,
    ) -> ProposalRecallEvaluator:
        gt = coco_eval.gt_from_dataset(name, data_dir, split, builder_config)
        cats = pipeline.category_map(name, data_dir, builder_config)
        return cls(gt, cats.category_ids, proposal_nums=proposal_nums)

    def add(self, detections, image_ids, scales=None) -> None:
        """Adds one batch of proposals: detections boxes [B, K, 4] (network coords),
        scores [B, K], valid [B, K]; image_ids / scales (or a batch dict) as in
        CocoEvaluator.add. Every proposal gets the first category id (useCats=0 ignores
        it, but COCOeval only reads results of a GT category)."""

        def get(field):
            if isinstance(detections, Mapping):
                return detections[field]
            return getattr(detections, field)

        valid = np.asarray(get("valid"), bool)
        proposals = {
            "boxes": get("boxes"),
            "scores": get("scores"),
            "classes": np.zeros(valid.shape, np.int64),
            "valid": valid,
        }
        super().add(proposals, image_ids, scales)

    def _cocoeval(self, dt: COCO, iou_type: str) -> COCOeval:
        ev = COCOeval(self.gt, dt, iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(self.proposal_nums)
        return ev

    def _label(self, iou_type: str) -> str:
        return f"proposal recall ({iou_type}, class-agnostic)"

    def _stats(self, ev: COCOeval, iou_type: str) -> dict[str, float]:
        return {k: float(v) for k, v in zip(stat_names(self.proposal_nums), ev.stats[6:12])}


def evaluator_for(data_config, split: str | None = None, **kwargs) -> ProposalRecallEvaluator:
    """ProposalRecallEvaluator for config.data's val split (or `split`); kwargs:
    proposal_nums."""
    name, data_dir, builder_config = pipeline.resolve_dataset(data_config)
    split = split or data_config["val_split"]
    return ProposalRecallEvaluator.for_dataset(name, data_dir, split, builder_config, **kwargs)
