# Sampling-free training (Chen et al., IEEE TIP 2021, arXiv 1909.04868) of RetinaNet, FCOS
# or ATSS: tiny ResNet-18/16 + FPN P3-P5 on the built-in `shapes` dataset (CPU). Everything
# but the classification loss, the class bias, the guided scaling and the score threshold
# is the base method's tiny config (configs/<base>/<base>_tiny_shapes.py).
# Run (base = retinanet | fcos | atss, default retinanet):
#   python -m jaxdet.main --config=configs/sampling_free/sampling_free_tiny_shapes.py:fcos \
#     --workdir=runs/sampling_free_fcos
import importlib

import ml_collections

# pi on `shapes` (128 px, the tiny configs' priors and assigners), measured with
#   python experiments/sampling_free/run.py --estimate-prior
# as (#fg priors / #(fg + bg) priors) / C over one epoch of the training split (the
# reference code's rule), and per class #fg priors of class c / #(fg + bg) priors (the
# class-adaptive thresholds). Objects cover 8-60% of the side, hence far more positives
# than on COCO, whose pi is 1e-5 (80 classes, ~100k anchors per image). RetinaNet's value
# is for its anchors of octave base scale 2, over the first 60 batches (960 images) of the
# epoch (`estimate_prior('retinanet', max_batches=60)` in that script); with base scale 4
# it was 6.7e-3.
SHAPES_PRIOR = {"retinanet": 3.0e-3, "fcos": 2.5e-2, "atss": 1.6e-2}
SHAPES_CLASS_PRIORS = {
    "retinanet": (3.0e-3, 2.9e-3, 2.9e-3),
    "fcos": (2.58e-2, 2.59e-2, 2.42e-2),
    "atss": (1.63e-2, 1.63e-2, 1.55e-2),
}


def get_config(base: str = "retinanet") -> ml_collections.ConfigDict:
    if base not in SHAPES_PRIOR:
        raise ValueError(f"base must be one of {sorted(SHAPES_PRIOR)}, got {base!r}")
    config = importlib.import_module(f"configs.{base}.{base}_tiny_shapes").get_config()
    return to_sampling_free(config, base, SHAPES_PRIOR[base], SHAPES_CLASS_PRIORS[base])


def to_sampling_free(
    config: ml_collections.ConfigDict, base: str, prior_prob: float, class_priors=()
) -> ml_collections.ConfigDict:
    """A config of `base` (retinanet | fcos | atss) -> its sampling-free version."""
    config.detector = "sampling_free"
    config.sampling_free = ml_collections.ConfigDict(
        dict(
            base=base,
            cls_loss="bce",  # 'bce' (the method) | 'focal' (the base detector's loss)
            prior_prob=prior_prob,  # class bias -log((1 - pi) / pi)
            # 'guided': cls loss x L_reg / L_cls (no gradient; the paper) | 'uncertainty':
            # sum_i L_i / (2 sigma_i^2) + log sigma_i, sigma learned (the later version)
            # | 'none'
            weighting="guided",
            guided_warmup=100,  # steps averaged, then the ratio is frozen (paper: 100)
            guided_freeze="mean",  # 'mean' of the warm-up (paper) | 'last' (released code)
            adaptive_threshold=True,  # per-class score thresholds, so test.score_thr = 0
            class_priors=tuple(class_priors),  # () = pi for every class
        )
    )
    if "prior_prob" in config.loss:  # RetinaNet's head reads it: keep one knob
        config.loss.prior_prob = config.sampling_free.get_ref("prior_prob")
    config.test.score_thr = 0.0
    return config
