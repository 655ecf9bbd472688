# FCOS R50-FPN (GN head, centre sampling, norm-on-bbox, centerness on reg, GIoU) 1x on COCO.
# Run:
#   python -m jaxdet.main --config=configs/fcos/fcos_r50_fpn_1x_coco.py \
#     --config.data.coco_dir=/path/to/coco --config.model.pretrained=/path/to/r50.npz \
#     --workdir=runs/fcos_r50_1x
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    train, optimizer = common.schedule_1x()
    config = common.base("fcos", common.data_coco(), common.model_r50_fpn(), train, optimizer)
    config.optimizer.grad_clip = 35.0
    config.assigner = ml_collections.ConfigDict(
        dict(name="fcos", regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)),
             center_sampling=True, center_sample_radius=1.5)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=1.0, box_loss="giou")
    )
    config.test.nms_iou = 0.5
    return config
