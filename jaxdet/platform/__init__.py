"""The platform a model is compiled for, resolved once from the config.

`Platform` is a small frozen (hashable) value: the compile target and the choices
that depend on it. Models take it as a module attribute, ops take its `target`,
and the train / eval jits take `Platform.compiler_options()`. Nothing reads the
local backend or /proc/cpuinfo at trace time: `resolve` does, once, for the
settings left at 'auto'. A value made for another target (e.g. `resolve(target=
'tpu')` on a CPU host, for `jax.export`) carries none of the CPU-specific kernels.

Fields:

- `target`: 'cpu' | 'gpu' | 'tpu' (`export_platform` names it as `jax.export` does).
- `conv_kernel_grad`: 'slices' | 'xla' (CPU only). 'slices' routes plain 2-D NHWC
  convs through `jaxdet.ops.conv`'s CPU kernels: 1x1 convs as matmuls, and the
  kernel gradient of the others as kh * kw matmuls of shifted input slices where
  `use_slices` says so. 'xla' leaves every conv to `lax.conv_general_dilated`.
- `slices_min_cin_cout`, `slices_min_tap_macs`: the slice kernel gradient is used
  for convs with Cin * Cout and B * Ho * Wo * Cin * Cout (multiply-adds per kernel
  tap) at least these.
- `ynnpack`: keep XLA:CPU's YNNPACK fusions (False: `compiler_options` turns them off).

Config (`config.platform`, defaults in configs/common.py), each 'auto' | a value:

- `target`: 'auto' (the local default backend) | 'cpu' | 'gpu' | 'tpu'.
- `cpu_conv`: 'on' (slice kernel gradient for every plain conv), 'off' ('xla'),
  'auto': 'slices' with Cin * Cout >= `MIN_CIN_COUT`; on CPUs with AVX-512, or with
  YNNPACK off, only for convs of at least `LARGE_TAP_MACS` multiply-adds per tap.
- `ynnpack`: 'on' | 'off' | 'auto' (off on x86 CPUs without AVX-512 and on AMD x86
  CPUs; only where this jaxlib's XLA:CPU knows the option).

`DEFAULT = Platform()` is XLA's defaults on a CPU target (no CPU-specific conv
kernels): the default of model attributes. This package imports nothing of jaxdet.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from jaxdet.platform import cpu

TARGETS = ("cpu", "gpu", "tpu")
CONV_KERNEL_GRADS = ("slices", "xla")
SETTINGS = ("auto", "on", "off")
# Slice kernel gradients for convs with Cin * Cout at least this ('auto' without AVX-512).
MIN_CIN_COUT = 512
# A "large" conv: at least this many multiply-adds per kernel tap (B * Ho * Wo * Cin * Cout).
LARGE_TAP_MACS = 1 << 26
_EXPORT_NAMES = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}
_BACKEND_TARGETS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


@dataclasses.dataclass(frozen=True)
class Platform:
    """What a model is compiled for (module docstring)."""

    target: str = "cpu"
    conv_kernel_grad: str = "xla"
    slices_min_cin_cout: int = 0
    slices_min_tap_macs: int = 0
    ynnpack: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}; expected one of {TARGETS}")
        if self.conv_kernel_grad not in CONV_KERNEL_GRADS:
            raise ValueError(
                f"conv_kernel_grad={self.conv_kernel_grad!r}; expected one of {CONV_KERNEL_GRADS}"
            )
        if self.target != "cpu" and self.conv_kernel_grad != "xla":
            raise ValueError(f"conv_kernel_grad='slices' is for CPU targets, not {self.target!r}")

    @property
    def cpu_conv(self) -> bool:
        """Whether `jaxdet.ops.conv`'s CPU kernels (1x1 matmuls, slice kernel gradients) apply."""
        return self.target == "cpu" and self.conv_kernel_grad == "slices"

    @property
    def export_platform(self) -> str:
        """The target as `jax.export.export(..., platforms=...)` names it."""
        return _EXPORT_NAMES[self.target]

    def use_slices(self, cin: int, cout: int, tap_macs: int) -> bool:
        """Slice-matmul kernel gradient for a conv with these channels and multiply-adds
        per kernel tap (B * Ho * Wo * Cin * Cout)?"""
        return (
            self.cpu_conv
            and cin * cout >= self.slices_min_cin_cout
            and tap_macs >= self.slices_min_tap_macs
        )

    def in_conditional(self) -> Platform:
        """The platform of modules that run inside `lax.cond` / `lax.switch` branches:
        with the CPU conv kernels, every plain conv takes the slice kernel gradient (no
        thresholds). XLA:CPU runs a conv's gradient convolutions inside a conditional
        far slower than outside it (benchmarks/README.md); the slice matmuls and the
        forward-conv input gradient of `jaxdet.ops.conv` are not slowed there."""
        if not self.cpu_conv:
            return self
        return dataclasses.replace(self, slices_min_cin_cout=0, slices_min_tap_macs=0)

    def compiler_options(self) -> dict[str, str] | None:
        """`compiler_options` for `jax.jit` of a train / eval step (None: XLA's defaults)."""
        if self.target == "cpu" and not self.ynnpack:
            return {cpu.YNN_OPTION: ""}
        return None


# XLA's defaults on a CPU target: the default of model attributes and op arguments.
DEFAULT = Platform()


def local_target() -> str:
    """The target of the local default backend ('cpu', 'gpu' or 'tpu')."""
    import jax

    backend = jax.default_backend()
    if backend not in _BACKEND_TARGETS:
        raise ValueError(f"no jaxdet target for the backend {backend!r}")
    return _BACKEND_TARGETS[backend]


def _setting(name: str, value: str) -> str:
    if value not in SETTINGS:
        raise ValueError(f"platform.{name}={value!r}; expected one of {SETTINGS}")
    return value


def _resolve_ynnpack(setting: str) -> bool:
    """Whether to keep XLA:CPU's YNNPACK fusions on a CPU target."""
    if setting == "on":
        return True
    off = setting == "off" or (cpu.is_x86() and (not cpu.has_avx512() or cpu.is_amd()))
    return not (off and cpu.ynn_option_accepted())


def resolve(target: str = "auto", cpu_conv: str = "auto", ynnpack: str = "auto") -> Platform:
    """The `Platform` for these settings (module docstring); 'auto' reads the local
    backend and CPU here, once per distinct setting (the value is cached)."""
    return _resolve(target, cpu_conv, ynnpack)


@functools.cache
def _resolve(target: str, cpu_conv: str, ynnpack: str) -> Platform:
    if target == "auto":
        target = local_target()
    if target not in _BACKEND_TARGETS:
        raise ValueError(f"platform.target={target!r}; expected 'auto' or one of {TARGETS}")
    target = _BACKEND_TARGETS[target]
    cpu_conv, ynnpack = _setting("cpu_conv", cpu_conv), _setting("ynnpack", ynnpack)
    if target != "cpu":
        return Platform(target=target)
    keep_ynn = _resolve_ynnpack(ynnpack)
    if cpu_conv == "off":
        return Platform(target="cpu", ynnpack=keep_ynn)
    if cpu_conv == "on":
        return Platform(target="cpu", conv_kernel_grad="slices", ynnpack=keep_ynn)
    large_only = cpu.has_avx512() or not keep_ynn
    return Platform(
        target="cpu",
        conv_kernel_grad="slices",
        slices_min_cin_cout=0 if large_only else MIN_CIN_COUT,
        slices_min_tap_macs=LARGE_TAP_MACS if large_only else 0,
        ynnpack=keep_ynn,
    )


def from_config(config: Any) -> Platform:
    """`resolve` of `config.platform` (a mapping of the settings; absent: all 'auto')."""
    spec = config.get("platform") if isinstance(config, Mapping) or hasattr(config, "get") else None
    return resolve(**({} if spec is None else dict(spec.items())))


__all__ = ["DEFAULT", "LARGE_TAP_MACS", "MIN_CIN_COUT", "Platform", "TARGETS", "from_config",
           "local_target", "resolve"]
