"""Pallas kernels of jaxdet's ops, and the choice between them and XLA.

The sampling back end is an argument of the ops (``impl``), set from the config
field ``model.sampling_backend``:

- ``"xla"``: the portable XLA path.
- ``"pallas"``: the Pallas kernels (`jaxdet.ops.pallas.sampling`): the Triton
  kernels for a 'gpu' target, the Mosaic kernels for 'tpu'; for a 'cpu' target
  they run in the Pallas interpreter (slow; tests use it).
- ``"auto"``: XLA for every target. The kernels lower for TPU and GPU (tested
  from a CPU host) but have not been compiled or timed on either, so 'auto'
  stays on XLA until a measurement on the device shows a kernel faster.

This package must not import anything heavy at import time: the kernels live in
submodules imported on first use.
"""

from __future__ import annotations

BACKENDS = ("auto", "xla", "pallas")
_COMPILED = ("gpu", "cuda", "rocm", "tpu")


def use_pallas(target: str, backend: str = "auto") -> bool:
    """Whether an op built for `target` ('cpu' | 'gpu' | 'tpu') with sampling back end
    `backend` ('auto' | 'xla' | 'pallas') runs the Pallas kernels ('auto': never)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampling backend {backend!r}; expected one of {BACKENDS}")
    return backend == "pallas"


def needs_interpret(target: str) -> bool:
    """Pallas kernels compile only for GPU/TPU targets; elsewhere they run interpreted."""
    return target not in _COMPILED
