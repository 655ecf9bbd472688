"""Deformable conv 3x3 vs a dense 3x3 `lax.conv` of the same shape, in one process.

    python benchmarks/deform_bench.py                # B=2, 50x76, 256->256 (default)
    python benchmarks/deform_bench.py --repeats 3 --variants tiled-rows,simple

Reports median milliseconds of forward and forward+backward (gradients of x,
offsets [, mask], weight; for the dense conv x and weight), the ratio of each
deformable variant to the dense conv measured in the same run, and the temp
memory of the compiled forward+backward from XLA's memory analysis against the
size of the sampled-columns tensor [B*Ho*Wo, 9*Cin] (f32).

Timings on a shared CPU are noisy: compare ratios, not absolute figures. All
functions are run round-robin (`--iters` rounds), the ratio is the median of the
per-round ratios to the dense conv, and `--repeats` re-runs the whole table
(then the median over repeats is printed). Wall and process-CPU times are both
reported: CPU time is less sensitive to other processes on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxdet.ops.deform_conv import deform_conv2d  # noqa: E402


def interleaved(fns: dict, iters: int) -> dict:
    """Runs every function once per round, `iters` rounds (so that load changes
    on a shared machine hit all of them alike); returns name -> [(wall s, cpu s)]."""
    for f, args in fns.values():  # compile + warm up
        jax.block_until_ready(f(*args))
        jax.block_until_ready(f(*args))
    res = {k: [] for k in fns}
    for _ in range(iters):
        for k, (f, args) in fns.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(f(*args))
            res[k].append((time.perf_counter() - t, time.process_time() - c))
    return res


def temp_bytes(f, *args) -> int | None:
    try:
        ma = jax.jit(f).lower(*args).compile().memory_analysis()
        return int(ma.temp_size_in_bytes)
    except Exception:  # memory analysis is backend-dependent
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--height", type=int, default=50)
    ap.add_argument("--width", type=int, default=76)
    ap.add_argument("--cin", type=int, default=256)
    ap.add_argument("--cout", type=int, default=256)
    ap.add_argument("--offset-scale", type=float, default=2.0)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--variants",
        default="tiled-rows,tiled-rows-dcnv2",
        help="comma list of tiled-{rows,packed}[-dcnv2][-tN] and simple[-dcnv2]",
    )
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()

    b, h, w, cin, cout = args.batch, args.height, args.width, args.cin, args.cout
    ks = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(ks[0], (b, h, w, cin), jnp.float32)
    wt = jax.random.normal(ks[1], (3, 3, cin, cout), jnp.float32) * 0.02
    off = jax.random.normal(ks[2], (b, h, w, 1, 9, 2), jnp.float32) * args.offset_scale
    mask = jax.random.uniform(ks[3], (b, h, w, 1, 9), jnp.float32)
    gy = jax.random.normal(ks[4], (b, h, w, cout), jnp.float32)

    def dense(x, wt):
        return lax.conv_general_dilated(
            x, wt, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    dense_fwd = jax.jit(dense)
    dense_fb = jax.jit(jax.value_and_grad(lambda x, wt: jnp.vdot(dense(x, wt), gy), (0, 1)))

    def make(variant: str):
        parts = variant.split("-")
        impl = parts[0]
        layout = "rows"
        tile = 256
        dcn2 = False
        for p in parts[1:]:
            if p in ("rows", "packed"):
                layout = p
            elif p == "dcnv2":
                dcn2 = True
            elif p.startswith("t"):
                tile = int(p[1:])
        kw = dict(padding=1, impl=impl, layout=layout, tile=tile)

        def f(x, off, m, wt):
            return deform_conv2d(x, off, wt, m if dcn2 else None, **kw)

        fwd = jax.jit(f)
        argn = (0, 1, 2, 3) if dcn2 else (0, 1, 3)
        loss = lambda x, off, m, wt: jnp.vdot(f(x, off, m, wt), gy)
        fb = jax.jit(jax.value_and_grad(loss, argn))
        return fwd, fb, loss, argn

    variants = [v for v in args.variants.split(",") if v]
    built = {v: make(v) for v in variants}
    print(f"backend={jax.default_backend()} devices={jax.devices()} jax={jax.__version__}")
    print(
        f"shape: x [{b},{h},{w},{cin}] -> [{b},{h},{w},{cout}], 3x3, pad 1, "
        f"offsets ~ N(0, {args.offset_scale}) px"
    )
    fns = {"dense fwd": (dense_fwd, (x, wt)), "dense fwd+bwd": (dense_fb, (x, wt))}
    for v in variants:
        fwd, fb, _, _ = built[v]
        fns[f"{v} fwd"] = (fwd, (x, off, mask, wt))
        fns[f"{v} fwd+bwd"] = (fb, (x, off, mask, wt))
    summary: dict[str, list] = {k: [] for k in fns}
    for rep in range(args.repeats):
        res = interleaved(fns, args.iters)
        print(
            f"[repeat {rep}] median of {args.iters} interleaved rounds "
            "(ratio = median of per-round ratios to the dense conv of the same round)"
        )
        for k in fns:
            r = np.array(res[k]) * 1e3
            base = np.array(res["dense fwd" if k.endswith(" fwd") else "dense fwd+bwd"]) * 1e3
            rw = np.median(r[:, 0] / base[:, 0])
            rc = np.median(r[:, 1] / base[:, 1])
            summary[k].append((np.median(r[:, 0]), np.median(r[:, 1]), rw, rc))
            print(
                f"  {k:32s} wall {np.median(r[:, 0]):8.1f} ms ({rw:5.2f}x)   "
                f"CPU {np.median(r[:, 1]):8.1f} ms ({rc:5.2f}x)"
            )
    print(f"median over {args.repeats} repeats (target: deform fwd+bwd <= 1.5x dense, wall):")
    for k in fns:
        m = np.median(np.array(summary[k]), axis=0)
        print(f"  {k:32s} wall {m[0]:8.1f} ms ({m[2]:5.2f}x)   CPU {m[1]:8.1f} ms ({m[3]:5.2f}x)")

    if not args.no_memory:
        cols_bytes = b * h * w * 9 * cin * 4
        in_bytes = b * h * w * cin * 4
        print(
            f"memory (XLA compiled temp bytes of fwd+bwd); columns tensor "
            f"[{b * h * w}, {9 * cin}] f32 = {cols_bytes / 2**20:.1f} MiB, "
            f"input = {in_bytes / 2**20:.1f} MiB"
        )
        dl = lambda x, wt: jnp.vdot(dense(x, wt), gy)
        tb = temp_bytes(jax.value_and_grad(dl, (0, 1)), x, wt)
        if tb is not None:
            print(f"  dense lax.conv          : {tb / 2**20:8.1f} MiB")
        for v in variants:
            _, _, loss, argn = built[v]
            tb = temp_bytes(jax.value_and_grad(loss, argn), x, off, mask, wt)
            if tb is not None:
                print(f"  {v:24s}: {tb / 2**20:8.1f} MiB ({tb / cols_bytes:4.2f}x columns)")


if __name__ == "__main__":
    main()
