# RepPoints' bounding-box baseline, anchor-based: the RepPoints R50-FPN 1x network with
# the box representation (the head regresses boxes, the DCNs sample their 3x3 grids,
# min-max pseudo-boxes) and the init stage assigned by max-IoU 0.5 / 0.4 on the squares
# of side 4 strides at the locations (mmdetection's reppoints-bbox_r50_fpn-gn_head-gn-
# grid_1x; model zoo: 36.4 COCO val AP against 38.1 for the moment point sets).
# Run:
#   python -m jaxdet.main --config=configs/reppoints/reppoints_bbox_r50_fpn_grid_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/reppoints_bbox_grid_r50_1x
import ml_collections

from configs.reppoints import reppoints_moment_r50_fpn_1x_coco


def get_config() -> ml_collections.ConfigDict:
    config = reppoints_moment_r50_fpn_1x_coco.get_config()
    config.reppoints.use_grid_points = True
    config.reppoints.transform = "minmax"
    config.assigner.name = "max_iou"
    return config
