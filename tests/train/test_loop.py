"""End-to-end training behaviour: resume after a kill, NaN stop, multi-device
equivalence, unknown config keys. Tiny model on the `shapes/tiny` data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import platform as platform_lib
from jaxdet.train import checkpoint as ckpt_lib
from jaxdet.train import loop
from jaxdet.train import mesh as mesh_lib
from tests.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _params_np(state):
    return jax.tree_util.tree_map(np.asarray, state.params)


def test_resume_after_kill_matches_uninterrupted(data_dir, tmp_path):
    config = tiny_config("atss", data_dir, num_steps=6, checkpoint_every=3)
    full, _ = loop.train(config, str(tmp_path / "full"))
    # Killed after step 4: the last checkpoint is step 3, step 4 is lost.
    killed = str(tmp_path / "killed")
    loop.train(config, killed, stop_at=4)
    ckpt = ckpt_lib.Checkpointer(os.path.join(killed, "checkpoints"))
    assert ckpt.latest_step() == 3
    ckpt.close()
    resumed, _ = loop.train(config, killed)
    assert int(resumed.step) == 6
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, _params_np(full), _params_np(resumed)
    )


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    config = tiny_config("atss", data_dir, num_steps=8, checkpoint_every=2)
    workdir = str(tmp_path / "nan")
    parts = loop.setup(config, workdir)
    detector = parts.detector
    original = detector.loss_fn

    def poisoned(params, batch, rng, det_state, step):
        loss, aux = original(params, batch, rng, det_state, step)
        return jnp.where(step >= 3, jnp.nan, loss), aux

    detector.loss_fn = poisoned
    import dataclasses
    import functools

    from jaxdet.train.step import train_step

    parts = dataclasses.replace(
        parts, step_fn=jax.jit(functools.partial(train_step, detector=detector, tx=parts.tx))
    )
    with pytest.raises(loop.NonFiniteLossError, match="NaN/Inf"):
        loop.train(config, workdir, parts=parts)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == 2  # the step-4 save never happened
    ckpt.close()


def test_ynnpack_switch_reaches_the_train_jit(data_dir, tmp_path):
    """`config.platform.ynnpack='off'` (the 'auto' choice on AVX2 x86) compiles the train
    step without XLA:CPU's YNNPACK fusions, and the step runs (values:
    tests/ops/test_conv.py)."""
    config = tiny_config("atss", data_dir, num_steps=1, checkpoint_every=1)
    config.platform.ynnpack = "off"
    parts = loop.setup(config, str(tmp_path / "off"))
    batch = mesh_lib.global_batch(next(parts.train_iter), parts.mesh)
    compiled = parts.step_fn.lower(parts.state, batch, parts.train_rng).compile()
    if platform_lib.from_config(config).compiler_options() is not None:  # CPU, option known
        assert "%ynn_fusion" not in compiled.as_text()
    state, metrics = compiled(parts.state, batch, parts.train_rng)
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize(
    "name", ("atss", "faster_rcnn", pytest.param("mask_rcnn", marks=pytest.mark.slow)))
def test_two_devices_match_one_device(name, tmp_path):
    """Same global batch on a 1-device and a 2-device mesh -> same parameters (for Faster
    R-CNN also the same sampled anchors and RoIs: the sampling keys are global; for Mask
    R-CNN the positives packed per shard)."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        import jax, numpy as np
        from jaxdet.train import loop, mesh as mesh_lib
        from tests.tiny import tiny_config
        assert jax.device_count() == 2, jax.devices()
        out = []
        for n in (1, 2):
            config = tiny_config({name!r}, {str(tmp_path / "tfds")!r}, num_steps=3,
                                 checkpoint_every=3)
            parts = loop.setup(config, {str(tmp_path)!r} + f"/w{{n}}", mesh=mesh_lib.make_mesh(n))
            state, _ = loop.train(config, {str(tmp_path)!r} + f"/w{{n}}", parts=parts)
            out.append(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, state.params)))
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(*out))
        print("max abs diff", worst)
        assert worst < 1e-4, worst
        """
    )
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_unknown_config_key_is_an_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jaxdet.main", "--config=configs/atss/atss_tiny_shapes.py",
         f"--workdir={tmp_path}", "--config.train.no_such_field=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode != 0
    assert "no_such_field" in r.stderr


def test_progress_lines_and_summary(monkeypatch):
    from jaxdet.train import metrics

    clock = iter([100.0, 110.0, 120.0, 130.0, 150.0])
    monkeypatch.setattr(metrics.time, "time", lambda: next(clock))
    progress = metrics.Progress(total_steps=40, batch_size=8)  # t = 100
    progress.reset_clock(1)  # t = 110: compilation excluded
    line = progress.report(11, {"loss": 0.5})  # 10 steps in 10 s
    assert "  8.0 img/s" in line and "loss=0.5000" in line and "ETA 0m29s" in line
    progress.report(21, {"loss": 0.25})  # t = 130
    summary = progress.summary(31)  # t = 150: 30 steps of 8 in 40 s
    assert summary.startswith("trained steps 1-31 in 40.0 s") and "6.0 img/s" in summary
