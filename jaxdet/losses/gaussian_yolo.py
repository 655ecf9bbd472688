"""Gaussian YOLOv3's localisation loss (Choi et al., "Gaussian YOLOv3: An Accurate and
Fast Object Detector Using Localization Uncertainty for Autonomous Driving", ICCV 2019).

Each box coordinate is predicted as a Gaussian N(mu, sigma): mu_x, mu_y and every
sigma through a sigmoid (so sigma is in (0, 1)), mu_w, mu_h linear. The loss of one
coordinate with target t is the negative log-likelihood

    nll = -log(N(t; mu, sigma) + eps),
    N(t; mu, sigma) = exp(-(t - mu)^2 / (2 sigma^2)) / (sqrt(2 pi) (sigma + sigma_const)),

scaled by the paper's (2 - w_gt * h_gt) / 2 (w, h normalised by the input size) in
the detector. The reference code (darknet, `gaussian_yolo_layer.c`,
`delta_gaussian_yolo_box`) adds `sigma_const` = 0.3 to sigma in the density's
normaliser but not in the exponent; the paper's formula has no constant. The default
follows the code; `sigma_const=0.0` gives the paper's. With eps = 1e-9 as the code,
the gradient of this loss equals darknet's deltas (with the opposite sign): for mu,
(scale / 2) (t - mu) / sigma^2 * N / (N + eps); for sigma, (scale / 2) ((t - mu)^2 /
sigma^3 - 1 / (sigma + sigma_const)) * N / (N + eps).

Numerics: sigma is floored at 1e-6 and the squared z-score capped at 1e4 (where N is
already 0 in float32), so value and gradient are finite for any inputs.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

Array = jnp.ndarray
SIGMA_CONST = 0.3
EPS = 1e-9


def gaussian_nll(mu: Array, sigma: Array, target: Array, sigma_const: float = SIGMA_CONST,
                 eps: float = EPS) -> Array:
    """-log(N(target; mu, sigma) + eps) element-wise (see the module docstring).

    mu, sigma, target broadcast to [...]; sigma > 0 (a sigmoid output). Returns [...] f32.
    """
    mu = jnp.asarray(mu, jnp.float32)
    sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-6)
    z2 = jnp.minimum(jnp.square(jnp.asarray(target, jnp.float32) - mu) / jnp.square(sigma), 1e4)
    log_n = -0.5 * z2 - jnp.log(math.sqrt(2.0 * math.pi) * (sigma + sigma_const))
    return -jnp.logaddexp(log_n, math.log(eps))


def box_scale(gt_boxes: Array, image_hw: tuple[int, int]) -> Array:
    """(2 - w * h) of gt_boxes [..., 4], w and h divided by the input's (w, h) -> [...]."""
    h, w = image_hw
    gw = (gt_boxes[..., 2] - gt_boxes[..., 0]) / w
    return 2.0 - gw * (gt_boxes[..., 3] - gt_boxes[..., 1]) / h
