"""GA-Faster R-CNN (Wang et al., "Region Proposal by Guided Anchoring", CVPR 2019):
Faster R-CNN FPN whose first stage is GA-RPN, as mmdetection's
`ga-faster-rcnn_r50-caffe_fpn_1x`.

Only the first stage differs from `faster_rcnn.FasterRCNN`: the RPN head is
`GARPNHead`, its priors, assignment and losses are `ga_rpn.GARPN`'s hooks (guided anchors
from the detached shape prediction, the location and shape terms, the RPN terms on the
guided anchors), and the proposals are taken from each image's guided anchors with the
location filter (sigmoid(loc) < `ga.loc_filter_thr` gives no proposal), in training as at
test time (mmdetection's GA-RPN predicts its proposals with the filter on in both). The
RoI heads, their sampling and post-processing are Faster R-CNN's; the config sets
mmdetection's GA-Faster values (300 proposals per image, RoI assignment 0.6, 256 RoIs,
box stds 0.05 / 0.1).
"""

from __future__ import annotations

from typing import Any

import jax

from jaxdet.core.types import GroundTruth
from jaxdet.detectors import ga_rpn
from jaxdet.detectors.dense import StepContext
from jaxdet.detectors.faster_rcnn import FasterRCNN


class GAFasterRCNN(FasterRCNN):
    def __init__(self, config: Any):
        super().__init__(config)
        self.first_stage = ga_rpn.GARPN(config)  # its hooks; the network is self.net's

    @staticmethod
    def make_rpn_head(config: Any):
        return ga_rpn.ga_rpn_head(config)

    def rpn_stage(self, rpn_out: dict, image_shape: tuple[int, int], image_hw: jax.Array,
                  gt: GroundTruth | None, ctx: StepContext | None
                  ) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
        """GA-RPN's terms (training, `gt` given) and proposals [B, K, 4] + valid [B, K]."""
        stage = self.first_stage
        priors = stage.priors(image_shape, rpn_out)
        train = gt is not None
        terms = {}
        if train:
            terms = stage.losses(rpn_out, priors, gt, stage.assign(rpn_out, priors, gt), ctx)
        props, _, valid = stage.proposals(rpn_out, priors["guided"], image_hw, train=train)
        return terms, props, valid


def make(config: Any) -> GAFasterRCNN:
    return GAFasterRCNN(config)
