# Sampling-free training (Chen et al., IEEE TIP 2021, arXiv 1909.04868) of RetinaNet, FCOS
# or ATSS, R50-FPN 1x on COCO 2017. Reference (chenjoya/sampling-free README, minival):
# RetinaNet 36.4 -> 36.8, FCOS 37.1 -> 37.6. Everything but the classification loss, the
# class bias, the guided scaling and the score threshold is the base method's COCO config.
# Run (base = retinanet | fcos | atss, default retinanet):
#   python -m jaxdet.main --config=configs/sampling_free/sampling_free_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/sampling_free_retinanet_r50_1x
# The released code thresholds scores at a fixed 1e-3 instead of the paper's adaptive rule:
#   --config.sampling_free.adaptive_threshold=False --config.test.score_thr=0.001
import importlib

import ml_collections

from configs.sampling_free.sampling_free_tiny_shapes import to_sampling_free

# PRIOR_PROB of the reference configs, chenjoya/sampling-free
# configs/sampling_free/{retinanet,fcos,atss}_R_50_FPN_1x.yaml.
COCO_PRIOR = {"retinanet": 1e-5, "fcos": 1e-4, "atss": 3e-3}


def get_config(base: str = "retinanet") -> ml_collections.ConfigDict:
    if base not in COCO_PRIOR:
        raise ValueError(f"base must be one of {sorted(COCO_PRIOR)}, got {base!r}")
    config = importlib.import_module(f"configs.{base}.{base}_r50_fpn_1x_coco").get_config()
    # Per-class priors are not known for COCO: pi for every class (class_priors=()).
    return to_sampling_free(config, base, COCO_PRIOR[base])
