# Gaussian YOLOv3, narrow Darknet + YOLOv3 neck/head with the Gaussian box outputs, on the
# built-in `shapes` dataset (CPU): configs/yolov3/yolov3_tiny_shapes.py's recipe.
# Run:
#   python -m jaxdet.main --config=configs/gaussian_yolov3/gaussian_yolov3_tiny_shapes.py \
#     --workdir=runs/gaussian_yolov3
from configs.yolov3 import yolov3_tiny_shapes


def get_config():
    config = yolov3_tiny_shapes.get_config()
    config.detector = "gaussian_yolov3"
    # sigma_const: added to sigma in the density's normaliser (darknet 0.3; paper 0).
    config.loss.update(dict(box_weight=1.0, sigma_const=0.3))
    config.test.use_uncertainty = True  # score x (1 - mean sigma)
    # The assignment stays YOLOv3's (mmdetection's grid rule), so the two differ only in
    # the box outputs and loss; the reference darknet code assigns by its own rule:
    # --config.assigner.name=darknet (ignore_thr 0.5, as its BDD cfg).
    return config
