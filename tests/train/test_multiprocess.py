"""Two JAX processes on this machine (one CPU device each, gloo collectives) train
the tiny ATSS config together: the multi-host path of `jaxdet.main` on a pod, in
small. Marked slow (two processes compile the train step): `make test-slow`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxdet.data import pipeline
from jaxdet.train import loop
from tests.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_evaluate(tmp_path):
    data_dir = str(tmp_path / "tfds")
    config = tiny_config("atss", data_dir, num_steps=4, checkpoint_every=2)
    pipeline.prepare(config.data)  # build once, before the workers start
    workdir = str(tmp_path / "run")
    port = _free_port()
    procs, outs = [], []
    for i in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                             f"--xla_force_host_platform_device_count=1",
                   PYTHONPATH=REPO)
        outs.append(str(tmp_path / f"out{i}.json"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.train.multiprocess_worker", data_dir, workdir,
             outs[-1]], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    r0, r1 = (json.load(open(o)) for o in outs)
    assert (r0["count"], r0["devices"], r0["process"], r1["process"]) == (2, 2, 0, 1)
    assert r0["step"] == r1["step"] == 4
    # Parameters are replicated: both processes hold the same values.
    assert r0["param_sum"] == r1["param_sum"] and np.isfinite(r0["param_sum"])
    # Process 0 evaluated; its sharded eval saw every val image exactly once, so a
    # single-process eval of the same checkpoint gives the same COCO numbers.
    assert r1["stats"] == {}
    single = loop.evaluate_checkpoint(config, workdir)
    for key in ("AP", "AP50", "AR100"):
        assert np.isclose(r0["stats"][key], single[key], atol=1e-6), (key, r0["stats"], single)
