"""Facts about the host CPU and this jaxlib's XLA:CPU, read once per process.

Linux /proc/cpuinfo (vendor, AVX-512), the machine architecture, and whether
XLA:CPU accepts the option that turns its YNNPACK fusions off. `jaxdet.platform`
reads them when it resolves an 'auto' setting; nothing reads them at trace time.
"""

from __future__ import annotations

import functools
import platform as _host

# XLA:CPU option that turns the YNNPACK convolution fusions off when set to ''.
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def cpuinfo(key: str) -> str:
    """The value of the first `key` line of Linux /proc/cpuinfo ('' if none or unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def has_avx512() -> bool:
    """Whether the host CPU reports AVX-512F."""
    return "avx512f" in cpuinfo("flags").split()


def is_amd() -> bool:
    """Whether the host CPU is an AMD one (`vendor_id`)."""
    return cpuinfo("vendor_id") == "AuthenticAMD"


def is_x86() -> bool:
    """Whether the host is an x86 machine."""
    return _host.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@functools.cache
def ynn_option_accepted() -> bool:
    """Whether the local backend's compiler knows `YNN_OPTION` (one tiny compile, once)."""
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(lambda v: v + 1, compiler_options={YNN_OPTION: ""}).lower(
            jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception:  # XLA rejects an unknown option at compile time
        return False
    return True
