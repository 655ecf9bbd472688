"""Pallas kernels of jaxdet's ops, and the switch that enables them.

Pallas kernels are off by default. `set_enabled(True)` (or the environment
variable ``JAXDET_PALLAS=1``) makes ``impl="auto"`` ops dispatch to them on GPU
and TPU; on CPU the XLA path is always used unless a caller asks for
``impl="pallas"`` explicitly, in which case the kernel runs with
``interpret=True`` (tests do this). See `jaxdet.ops.pallas.sampling` for what
each backend needs.

This package must not import anything heavy at import time: the kernels live in
submodules imported on first use.
"""

from __future__ import annotations

import os

import jax

_ENABLED: bool = os.environ.get("JAXDET_PALLAS", "0").lower() in ("1", "true", "yes")


def set_enabled(enabled: bool = True) -> None:
    """Turns the Pallas dispatch of ``impl="auto"`` ops on or off (process-wide)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def is_enabled() -> bool:
    return _ENABLED


def use_pallas(backend: str | None = None) -> bool:
    """True when ``impl="auto"`` ops should use Pallas: enabled and on GPU/TPU."""
    backend = backend or jax.default_backend()
    return _ENABLED and backend in ("gpu", "cuda", "rocm", "tpu")


def needs_interpret(backend: str | None = None) -> bool:
    """Pallas kernels compile only for GPU/TPU; elsewhere they run interpreted."""
    backend = backend or jax.default_backend()
    return backend not in ("gpu", "cuda", "rocm", "tpu")
