"""Data-parallel sharding: the mesh, the per-shard assigner, and no all-gather of the global
batch in the compiled 8-device train step (a subprocess with 8 host CPU devices)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from jaxdet.train import mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import functools, re, sys
    sys.path.insert(0, {repo!r})
    import jax, jax.numpy as jnp
    from jaxdet import detectors
    from jaxdet.train import mesh as mesh_lib, optim
    from jaxdet.train.step import create_train_state, train_step
    from tests.tiny import tiny_config

    assert jax.device_count() == 8, jax.devices()
    B = 16
    mesh = mesh_lib.make_mesh()
    for name in {names!r}:
        config = tiny_config(name, "/nonexistent")
        config.data.num_classes = 3
        config.train.batch_size = B
        detector = detectors.build(config)
        params, det_state = detector.init(jax.random.PRNGKey(0), (64, 64))
        schedule = optim.make_schedule(config.optimizer, 10, 10)
        tx = optim.make_optimizer(config.optimizer, schedule, detector.trainable_mask(params))
        state = create_train_state(params, det_state, tx)
        M = int(config.data.max_boxes)
        spec = jax.ShapeDtypeStruct
        batch = dict(image=spec((B, 64, 64, 3), jnp.uint8), image_hw=spec((B, 2), jnp.int32),
                     boxes=spec((B, M, 4), jnp.float32), labels=spec((B, M), jnp.int32),
                     valid=spec((B, M), jnp.bool_), ignore=spec((B, M), jnp.bool_))
        if config.data.get("with_masks", False):
            s = int(config.data.mask_stride)
            batch["masks"] = spec((B, M, 64 // s, 64 // s), jnp.uint8)
        rep, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
        step = mesh_lib.InMesh(mesh, jax.jit(
            functools.partial(train_step, detector=detector, tx=tx),
            in_shardings=(rep, data, rep), out_shardings=(rep, rep)))
        hlo = step.lower(state, batch, jax.random.PRNGKey(1)).compile().as_text()
        gathers = [line.strip() for line in hlo.splitlines() if " all-gather(" in line]
        batch_sized = [g for g in gathers if re.search(r"= \\w+\\[" + str(B) + r"[,\\]]", g)]
        print(name, "all-gathers:", len(gathers), "of the global batch:", len(batch_sized))
        for g in batch_sized:
            print(g[:300])
        assert " all-reduce(" in hlo  # the gradients
    """
)


def test_make_mesh_is_one_data_axis():
    mesh = mesh_lib.make_mesh(1)
    assert mesh.axis_names == (mesh_lib.DATA_AXIS,) and mesh.devices.size == 1
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is not None:
        assert tuple(mesh.axis_types) == (axis_type.Auto,)


def test_distributed_launch_detection():
    launch = mesh_lib.distributed_launch
    assert launch({}) is None
    assert launch({"JAX_COORDINATOR_ADDRESS": "h:1234"}) == "coordinator"
    assert launch({"SLURM_NTASKS": "4"}) == "slurm" and launch({"SLURM_NTASKS": "1"}) is None
    assert launch({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "tpu"
    assert launch({"MEGASCALE_COORDINATOR_ADDRESS": "t0:8080"}) == "tpu"


def _gathers_of_the_batch(names: tuple[str, ...]) -> None:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=REPO, names=names)], env=env,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in names:
        assert f"{name} all-gathers:" in r.stdout, r.stdout
    assert r.stdout.count("of the global batch: 0") == len(names), r.stdout


def test_eight_device_step_gathers_no_batch():
    """The tiny ATSS, Faster R-CNN and RepPoints train steps on a mesh of 8 devices, global
    batch 16: no all-gather whose result has the global batch as its leading dimension (the
    top-k of the ATSS and point assigners, of the RPN's proposals and of the samplers used
    to gather their [16, ...] operands onto every device; RoIAlign gathered the features of
    all images, the deformable conv the pixels of all images)."""
    _gathers_of_the_batch(("atss", "faster_rcnn", "reppoints"))


@pytest.mark.slow
def test_eight_device_step_gathers_no_batch_mask_rcnn():
    """As above for Mask R-CNN (its positives packed per data shard for the mask branch)."""
    _gathers_of_the_batch(("mask_rcnn",))


@pytest.mark.slow
def test_eight_device_step_gathers_no_batch_feature_alignment():
    """As above for AlignDet, GA-RetinaNet and GA-RPN (deformable convs on P2-P7)."""
    _gathers_of_the_batch(("aligndet", "configs.guided_anchoring.ga_retinanet_tiny_shapes",
                           "configs.guided_anchoring.ga_rpn_tiny_shapes"))
