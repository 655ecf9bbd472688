"""One command for a first run on an accelerator (or on a CPU, small sizes by default).

    python benchmarks/device_bench.py [--small | --full] [--steps 10] [--out results.json]

On whatever backend JAX finds (all its local devices, data parallel), prints one table:

- ATSS R50-FPN train step (configs/atss/atss_r50_fpn_1x_coco.py, random GT, uint8
  images normalised on the device), float32 and bfloat16 (`model.dtype`): median step
  time, images/s per device, the compiled step's peak memory per device
  (`memory_analysis()`), its FLOPs (`cost_analysis()['flops']`, XLA's count for one
  device's program) and the model FLOPs utilisation = FLOPs / step time / the chip's
  peak (`PEAK_TFLOPS` by device kind; n/a on CPU and on unknown kinds).
- Deformable conv (3x3, DCNv2) and RoIAlign (7x7) forward + backward with the XLA
  back end, and with 'pallas' where the op takes a back-end argument (`BACKENDS`),
  as a ratio to a dense 3x3 conv's forward + backward on the same feature map.
- The tiny demo (configs/atss/atss_tiny_shapes.py, batch 16 at 128 px): train-step
  images/s on random inputs (the input pipeline excluded).

Nothing is written unless `--out` is given (a JSON list of the rows). `--small` (the
default on a CPU; `--full` there for the accelerator sizes) shrinks every size so that the
whole run takes a few minutes on a CPU. Per-machine
tables: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.atss import atss_r50_fpn_1x_coco, atss_tiny_shapes  # noqa: E402
from jaxdet import detectors  # noqa: E402
from jaxdet import platform as platform_lib  # noqa: E402
from jaxdet.ops import roi_align as roi_align_lib  # noqa: E402
from jaxdet.ops.deform_conv import deform_conv2d  # noqa: E402
from jaxdet.train import mesh as mesh_lib  # noqa: E402
from jaxdet.train import optim  # noqa: E402
from jaxdet.train.step import create_train_state, train_step  # noqa: E402

# Dense peak TFLOP/s per chip (one JAX device), (float32, bfloat16), by device kind
# (longest matching prefix). float32 is what XLA's default precision runs: TF32 tensor
# cores on NVIDIA, bf16 passes of the MXU on TPU (so the bf16 figure).
PEAK_TFLOPS = {
    "NVIDIA H100 PCIe": (378.0, 756.0),
    "NVIDIA H100": (494.0, 989.0),  # SXM
    "NVIDIA H200": (494.0, 989.0),
    "NVIDIA A100": (156.0, 312.0),
    "NVIDIA L4": (60.0, 121.0),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5": (459.0, 459.0),  # v5p
    "TPU v6 lite": (918.0, 918.0),
}
# Sampling back ends tried for the ops that take a `sampling_backend` / `backend` argument
# (on a CPU target 'pallas' runs in Pallas' interpreter: a semantics check, not a speed).
BACKENDS = ("xla", "pallas")


def peak_tflops(kind: str, dtype: str) -> float | None:
    """The chip's dense peak for `dtype` ('float32' | 'bfloat16'), None if unknown."""
    match = max((k for k in PEAK_TFLOPS if kind.startswith(k)), key=len, default=None)
    return None if match is None else PEAK_TFLOPS[match][dtype == "bfloat16"]


def timed(fn, args, steps: int) -> float:
    """Median seconds of `fn(*args)` over `steps` calls (after one warm-up call)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def flops_of(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and cost.get("flops") else None


def peak_bytes(compiled) -> int | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    peak = getattr(mem, "peak_memory_in_bytes", 0)
    return int(peak or mem.temp_size_in_bytes + mem.argument_size_in_bytes
               + mem.output_size_in_bytes - mem.alias_size_in_bytes)


def random_batch(n: int, hw: tuple[int, int], max_boxes: int, num_classes: int) -> dict:
    rng = np.random.default_rng(0)
    h, w = hw
    xy = rng.uniform(0, 0.7, (n, max_boxes, 2)) * [w, h]
    wh = rng.uniform(0.05, 0.3, (n, max_boxes, 2)) * [w, h]
    return dict(
        image=rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
        image_hw=np.tile(np.asarray(hw, np.int32), (n, 1)),
        boxes=np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32),
        labels=rng.integers(0, num_classes, (n, max_boxes)).astype(np.int32),
        valid=np.arange(max_boxes)[None] < rng.integers(1, max_boxes + 1, (n, 1)),
        ignore=np.zeros((n, max_boxes), bool),
    )


def train_row(name: str, config, per_device: int, hw: tuple[int, int], steps: int) -> dict:
    """Compiles and times the data-parallel train step of `config` over all devices."""
    mesh = mesh_lib.make_mesh()
    n_dev = mesh.devices.size
    config.data.image_size = hw
    config.data.num_classes = config.data.num_classes or 80
    det = detectors.build(config)
    params, det_state = det.init(jax.random.PRNGKey(0), hw)
    tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.optimizer, 1000, 100),
                              det.trainable_mask(params))
    state = mesh_lib.replicate(create_train_state(params, det_state, tx), mesh)
    rep, data = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
    step = mesh_lib.InMesh(mesh, jax.jit(
        functools.partial(train_step, detector=det, tx=tx), in_shardings=(rep, data, rep),
        out_shardings=(rep, rep), donate_argnums=(0,),
        compiler_options=platform_lib.from_config(config).compiler_options()))
    batch = mesh_lib.global_batch(random_batch(per_device * n_dev, hw, config.data.max_boxes,
                                               config.data.num_classes), mesh)
    rng = mesh_lib.replicate(jax.random.PRNGKey(1), mesh)
    compiled = step.lower(state, batch, rng).compile()
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch, rng)
        return metrics

    seconds = timed(run, (), steps)
    flops, dtype = flops_of(compiled), str(config.model.dtype)
    peak = peak_tflops(jax.devices()[0].device_kind, dtype)
    mfu = flops / seconds / (peak * 1e12) if flops and peak else None
    mem = peak_bytes(compiled)
    return dict(name=name, dtype=dtype, ms=seconds * 1e3, img_s_dev=per_device / seconds,
                mem_mib=None if mem is None else mem / 2**20,
                tflop=None if flops is None else flops / 1e12, mfu=mfu)


def op_rows(small: bool, steps: int, target: str) -> list[dict]:
    """Deformable conv and RoIAlign forward + backward, ratio to a dense conv's."""
    b, h, w, c = (1, 16, 24, 32) if small else (2, 100, 152, 256)
    rois = 32 if small else 512
    ks = jax.random.split(jax.random.PRNGKey(0), 6)
    x = jax.random.normal(ks[0], (b, h, w, c), jnp.float32)
    wt = jax.random.normal(ks[1], (3, 3, c, c), jnp.float32) * 0.02
    off = jax.random.normal(ks[2], (b, h, w, 1, 9, 2), jnp.float32) * 2.0
    mask = jax.random.uniform(ks[3], (b, h, w, 1, 9), jnp.float32)
    xy = jax.random.uniform(ks[4], (rois, 2)) * jnp.asarray([w * 6.0, h * 6.0])
    boxes = jnp.concatenate([xy, xy + 8.0 + jax.random.uniform(ks[5], (rois, 2)) * 64.0], -1)
    index = jnp.arange(rois, dtype=jnp.int32) % b

    def grad_time(loss, args, argnums) -> float:
        return timed(jax.jit(jax.grad(loss, argnums)), args, steps)

    def dense(x_, wt_):
        return jnp.sum(lax.conv_general_dilated(
            x_, wt_, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)

    base = grad_time(dense, (x, wt), (0, 1))
    rows = [dict(name=f"dense conv 3x3 [{b},{h},{w},{c}] fwd+bwd", dtype="float32",
                 ms=base * 1e3, ratio=1.0)]
    ops = {
        "deform conv v2 3x3": (deform_conv2d, lambda f, kw: grad_time(
            lambda x_, o_, m_, w_: jnp.sum(f(x_, o_, w_, m_, padding=1, **kw) ** 2),
            (x, off, mask, wt), (0, 1, 2, 3))),
        f"roi_align 7x7, {rois} RoIs": (roi_align_lib.roi_align, lambda f, kw: grad_time(
            lambda x_, r_: jnp.sum(f(x_, r_, index, output_size=7, spatial_scale=1 / 8,
                                     sampling_ratio=2, **kw) ** 2), (x, boxes), (0, 1))),
    }
    for name, (fn, run) in ops.items():
        params = inspect.signature(fn).parameters
        arg = next((a for a in ("sampling_backend", "backend") if a in params), None)
        takes_backend = arg is not None
        for backend in BACKENDS if takes_backend else BACKENDS[:1]:
            kw = dict(target=target, **({arg: backend} if takes_backend else {}))
            try:
                seconds = run(fn, kw)
                rows.append(dict(name=f"{name} fwd+bwd", dtype="float32", backend=backend,
                                 ms=seconds * 1e3, ratio=seconds / base))
            except Exception as error:  # a back end that does not lower here
                rows.append(dict(name=f"{name} fwd+bwd", dtype="float32", backend=backend,
                                 note=f"failed: {type(error).__name__}: {str(error)[:60]}"))
        if not takes_backend:
            rows.append(dict(name=f"{name} fwd+bwd", backend="pallas",
                             note="n/a: the op takes no `backend` argument"))
    return rows


def fmt(value, spec: str) -> str:
    """`value` formatted with `spec` ('9.2f'), or 'n/a' right-aligned to its width."""
    width = int(spec.split(".")[0]) if spec[0].isdigit() else 0
    return f"{'n/a':>{width}s}" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = (f"{'benchmark':44s} {'dtype':9s} {'backend':8s} {'ms':>9s} {'img/s/dev':>10s} "
            f"{'peak MiB':>9s} {'TFLOP':>8s} {'MFU':>6s} {'x dense':>8s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name'][:44]:44s} {r.get('dtype', ''):9s} {r.get('backend', ''):8s} "
              f"{fmt(r.get('ms'), '9.2f')} {fmt(r.get('img_s_dev'), '10.2f')} "
              f"{fmt(r.get('mem_mib'), '9.0f')} {fmt(r.get('tflop'), '8.3f')} "
              f"{fmt(r.get('mfu'), '6.1%')} {fmt(r.get('ratio'), '8.2f')}"
              + (f"  {r['note']}" if r.get("note") else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="small sizes (the default on CPU)")
    ap.add_argument("--full", action="store_true", help="the accelerator sizes, on CPU too")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    ap.add_argument("--per-device", type=int, default=0, help="R50 images per device")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args()
    target = platform_lib.local_target()
    args.small = args.small or (target == "cpu" and not args.full)
    steps = max(1, args.steps // 3) if args.small else args.steps
    dev = jax.devices()[0]
    print(f"backend={jax.default_backend()} device_kind={dev.device_kind} "
          f"devices={jax.device_count()} jax={jax.__version__}")
    hw = (128, 128) if args.small else (800, 1216)
    per_device = args.per_device or (1 if args.small else 2)
    rows = []
    for dtype in ("float32", "bfloat16"):
        config = atss_r50_fpn_1x_coco.get_config()
        config.model.dtype = dtype
        rows.append(train_row(f"ATSS R50-FPN train {per_device}x{hw[0]}x{hw[1]}/dev", config,
                              per_device, hw, steps))
    rows += op_rows(args.small, steps, target)
    tiny = atss_tiny_shapes.get_config()
    tiny.data.num_classes = 3
    size = tuple(tiny.data.image_size)
    per_dev_tiny = max(1, int(tiny.train.batch_size) // jax.device_count())
    rows.append(train_row(f"tiny demo train {per_dev_tiny}x{size[0]}x{size[1]}/dev", tiny,
                          per_dev_tiny, size, steps))
    if target == "cpu":
        for r in rows:
            r["mfu"] = None
    print_table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device_kind=dev.device_kind, backend=jax.default_backend(),
                           devices=jax.device_count(), jax=jax.__version__, rows=rows), f,
                      indent=2)


if __name__ == "__main__":
    main()
