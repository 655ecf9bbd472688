# FSAF as in the paper: RetinaNet (anchor-based) + the anchor-free branch on the same towers,
# loss L_ab + 0.5 L_af, both branches' detections merged before NMS. Tiny ResNet-18/16 +
# FPN P3-P5 on the built-in `shapes` dataset (CPU); see fsaf_tiny_shapes.py for the
# three-level adaptation of the size heuristic.
# Run:
#   python -m jaxdet.main --config=configs/fsaf/fsaf_ab_af_tiny_shapes.py --workdir=runs/fsaf_ab
import ml_collections

from configs.fsaf import fsaf_tiny_shapes


def get_config() -> ml_collections.ConfigDict:
    return fsaf_tiny_shapes.get_config(anchor_based=True)
