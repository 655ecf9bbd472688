"""The pure train step: loss, gradients, optimizer update, NaN guard.

A `jaxdet.detectors.Detector` provides
  `loss_fn(params, batch, rng, det_state, step) -> (loss, (metrics, det_state))`
where `det_state` is the detector's own non-trainable state (e.g. the frozen
guided-loss ratio of sampling-free training); it lives in the TrainState and so
in every checkpoint. Losses are normalised by quantities summed over the global
batch: under `jit` over the data mesh, a sum over the batch axis is global.

The pipeline's images are uint8; `train_step` and `predict_step` normalise them on the
device first (`network_images`: `jaxdet.ops.normalize.normalize_images` with
`config.data.mean` / `std`, then `config.model.dtype`).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxdet.detectors import Detector
from jaxdet.ops.normalize import normalize_images


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs (plus the data iterator state, saved beside it)."""

    step: jax.Array  # [] int32
    params: Any
    opt_state: Any
    det_state: Any  # dict of arrays owned by the detector


def create_train_state(params: Any, det_state: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), det_state=det_state
    )


def network_images(detector: Detector, images: jax.Array, image_hw: jax.Array) -> jax.Array:
    """The detector's network input from the pipeline's images [B, H, W, 3]: uint8 ones
    normalised with its `config.data` mean / std and cast to `config.model.dtype`
    (`normalize_images`); float ones (already normalised) unchanged."""
    config = detector.config
    return normalize_images(images, image_hw, tuple(config.data.mean), tuple(config.data.std),
                            jnp.dtype(config.model.dtype))


def predict_step(params: Any, images: jax.Array, image_hw: jax.Array, *,
                 detector: Detector) -> Any:
    """`detector.predict` of the pipeline's images (uint8 normalised on the device)."""
    return detector.predict(params, network_images(detector, images, image_hw), image_hw)


def train_step(
    state: TrainState,
    batch: dict,
    base_rng: jax.Array,
    *,
    detector: Detector,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, dict]:
    """One optimisation step. If the loss or the gradient is not finite, the
    state is returned unchanged and `metrics['finite']` is False (the loop stops).
    """
    rng = jax.random.fold_in(base_rng, state.step)
    batch = dict(batch, image=network_images(detector, batch["image"], batch["image_hw"]))

    def loss_of(params):
        return detector.loss_fn(params, batch, rng, state.det_state, state.step)

    (loss, (metrics, det_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, det_state=det_state
    )
    new_state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(finite, new, old), new_state, state
    )
    metrics = dict(metrics)
    metrics.update(loss=loss, grad_norm=grad_norm, finite=finite)
    return new_state, metrics
