"""Pallas kernels of jaxdet's ops, and the switch that enables them.

Pallas kernels are off by default. `set_enabled(True)` (or the environment
variable ``JAXDET_PALLAS=1``) makes ``impl="auto"`` ops dispatch to them for
GPU and TPU targets (the ops' ``target`` argument, `jaxdet.platform.Platform.target`);
for CPU the XLA path is always used unless a caller asks for ``impl="pallas"``
explicitly, in which case the kernel runs with ``interpret=True`` (tests do this).
See `jaxdet.ops.pallas.sampling` for what each backend needs.

This package must not import anything heavy at import time: the kernels live in
submodules imported on first use.
"""

from __future__ import annotations

import os

_ENABLED: bool = os.environ.get("JAXDET_PALLAS", "0").lower() in ("1", "true", "yes")


def set_enabled(enabled: bool = True) -> None:
    """Turns the Pallas dispatch of ``impl="auto"`` ops on or off (process-wide)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def is_enabled() -> bool:
    return _ENABLED


_COMPILED = ("gpu", "cuda", "rocm", "tpu")


def use_pallas(target: str) -> bool:
    """True when ``impl="auto"`` ops for `target` ('cpu' | 'gpu' | 'tpu') should use
    Pallas: enabled and a GPU/TPU target."""
    return _ENABLED and target in _COMPILED


def needs_interpret(target: str) -> bool:
    """Pallas kernels compile only for GPU/TPU targets; elsewhere they run interpreted."""
    return target not in _COMPILED
