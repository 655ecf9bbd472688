"""Detectors: one module per method, each exposing `make(config) -> Detector`.

`Detector` is the contract the train loop, evaluation and prediction rely on; its
methods are pure (the object's fields are static config). One-stage methods build on
the template `jaxdet.detectors.dense.DenseDetector` and override only its hooks
(`priors`, `assign`, `losses`, `decode`). Configs name the module
(`config.detector = 'atss'` -> `jaxdet.detectors.atss`).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections

from jaxdet.core.types import Detections

Params = Any  # a pytree of arrays
DetState = Any  # the detector's own non-trainable state (a dict of arrays, checkpointed)


@runtime_checkable
class Detector(Protocol):
    """What every detector provides.

    init(rng, image_hw) -> (params, det_state) for inputs of size image_hw.
    trainable_mask(params) -> pytree of bool (False = frozen).
    loss_fn(params, batch, rng, det_state, step) -> (loss [], (metrics, det_state)):
        batch from the data pipeline ('image' [B, H, W, 3], 'boxes' [B, M, 4],
        'labels', 'valid', 'ignore' [B, M], ...); metrics a dict of scalars.
    predict(params, images [B, H, W, 3], image_hw [B, 2]) -> Detections [B, max_det, ...].
    """

    config: ml_collections.ConfigDict

    def init(self, rng: jax.Array, image_hw: tuple[int, int]) -> tuple[Params, DetState]: ...

    def trainable_mask(self, params: Params) -> Any: ...

    def loss_fn(
        self, params: Params, batch: dict, rng: jax.Array, det_state: DetState, step: jax.Array
    ) -> tuple[jax.Array, tuple[dict, DetState]]: ...

    def predict(self, params: Params, images: jax.Array, image_hw: jax.Array) -> Detections: ...


def build(config: ml_collections.ConfigDict) -> Detector:
    """Imports `jaxdet.detectors.<config.detector>` and calls its `make(config)`."""
    name = config.detector
    try:
        module = importlib.import_module(f"jaxdet.detectors.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"jaxdet.detectors.{name}":
            raise ValueError(f"unknown detector {name!r}: no module jaxdet.detectors.{name}") from e
        raise
    return module.make(config)
