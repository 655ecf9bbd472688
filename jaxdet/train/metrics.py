"""Metrics to stdout (a progress line with ETA and images/s), a JSON-lines log
and TensorBoard event files (tensorboardX: no TensorFlow needed). Process 0 only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np


def _scalar(v: Any) -> float:
    return float(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size == 1 else float(np.mean(v))


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard in `<workdir>/tb`."""

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tb"))
            except ImportError:  # pragma: no cover - tensorboardx is a dependency
                logging.warning("tensorboardX missing: no TensorBoard event files")

    def write(self, step: int, scalars: dict[str, Any], prefix: str = "") -> dict[str, float]:
        values = {f"{prefix}{k}": _scalar(v) for k, v in scalars.items()}
        if not self.enabled:
            return values
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step))
            self._tb.flush()
        return values

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One stdout line per report: step, loss terms, images/s, ETA."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
        self.total = total_steps
        self.batch_size = batch_size
        self.last_step = start_step
        self.last_time = time.time()
        self.rate = None
        self.first_step, self.first_time = start_step, self.last_time

    def reset_clock(self, step: int) -> None:
        """Restart timing (e.g. after compilation, which would skew images/s)."""
        self.last_step = self.first_step = step
        self.last_time = self.first_time = time.time()

    def summary(self, step: int) -> str:
        """One line: steps, seconds and mean images/s since the last `reset_clock`."""
        dt = max(time.time() - self.first_time, 1e-9)
        steps = step - self.first_step
        line = (f"trained steps {self.first_step}-{step} in {dt:.1f} s: "
                f"{steps * self.batch_size / dt:.1f} img/s (compilation excluded)")
        if jax.process_index() == 0:
            print(line, file=sys.stdout, flush=True)
        return line

    def report(self, step: int, values: dict[str, float]) -> str:
        now = time.time()
        dt = max(now - self.last_time, 1e-9)
        steps = step - self.last_step
        if steps > 0:
            self.rate = steps / dt
        self.last_step, self.last_time = step, now
        ips = (self.rate or 0.0) * self.batch_size
        eta = (self.total - step) / self.rate if self.rate else float("nan")
        terms = " ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()) if k != "finite")
        pct = 100.0 * step / max(self.total, 1)
        line = (
            f"[{step:>6d}/{self.total} {pct:5.1f}%] {terms} | {ips:7.1f} img/s | "
            f"ETA {format_eta(eta) if self.rate else '?'}"
        )
        if jax.process_index() == 0:
            print(line, file=sys.stdout, flush=True)
        return line
