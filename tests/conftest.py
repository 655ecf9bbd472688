"""Test setup: CPU only, quiet, and a persistent compilation cache so that the
many identical train-step / predict programs (resume tests, per-detector tests,
several xdist workers) are compiled once per test run."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The test programs run a few steps each, so compilation dominates: XLA:CPU's backend
# (LLVM) optimisation level 0 compiles ~40% faster and runs ~2x slower, a net win here.
# JAXDET_TEST_XLA_FLAGS="" tests with the default level. Subprocesses inherit XLA_FLAGS.
_TEST_XLA_FLAGS = os.environ.get("JAXDET_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS"), _TEST_XLA_FLAGS) if f)

import jax  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("JAXDET_TEST_CACHE", os.path.join(tempfile.gettempdir(), "jaxdet_jax_cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
