# Gaussian YOLOv3 Darknet-53 on COCO: YOLOv3's mmdetection recipe (configs/yolov3/
# yolov3_d53_coco.py) with the Gaussian head and loss (darknet's sigma_const 0.3).
# Run:
#   python -m jaxdet.main --config=configs/gaussian_yolov3/gaussian_yolov3_d53_coco.py \
#     --config.data.coco_dir=/path/to/coco --workdir=runs/gaussian_yolov3_d53
from configs.yolov3 import yolov3_d53_coco


def get_config():
    config = yolov3_d53_coco.get_config()
    config.detector = "gaussian_yolov3"
    # sigma_const: added to sigma in the density's normaliser (darknet 0.3; paper 0).
    config.loss.update(dict(box_weight=1.0, sigma_const=0.3))
    config.test.use_uncertainty = True  # score x (1 - mean sigma)
    # The assignment stays YOLOv3's (mmdetection's grid rule), so the two differ only in
    # the box outputs and loss; the reference darknet code assigns by its own rule:
    # --config.assigner.name=darknet (ignore_thr 0.5, as its BDD cfg).
    return config
