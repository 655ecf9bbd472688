"""Detectors: one module per method, each exposing `make(config) -> Detector`.

A Detector is a small object with pure methods (its fields are static config):
  init(rng, image_hw) -> (params, det_state)
  trainable_mask(params) -> pytree of bool (False = frozen)
  loss_fn(params, batch, rng, det_state, step) -> (loss, (metrics, det_state))
  predict(params, images, image_hw) -> Detections  ([B, K, ...])
Configs name the module (`config.detector = 'atss'` -> `jaxdet.detectors.atss`).
"""

from __future__ import annotations

import importlib
from typing import Any


def build(config: Any) -> Any:
    """Imports `jaxdet.detectors.<config.detector>` and calls its `make(config)`."""
    name = config.detector
    try:
        module = importlib.import_module(f"jaxdet.detectors.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"jaxdet.detectors.{name}":
            raise ValueError(f"unknown detector {name!r}: no module jaxdet.detectors.{name}") from e
        raise
    return module.make(config)
