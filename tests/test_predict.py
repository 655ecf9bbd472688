"""Inference on a folder of the user's images: `jaxdet.load` + `jaxdet.predict_images` and
`jaxdet.main --mode=predict` give boxes in the original pixels; bad inputs are clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxdet
from jaxdet import detectors, predict
from jaxdet.data import shapes, transforms
from jaxdet.train import checkpoint as ckpt_lib
from tests.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"a.jpg": (40, 60), "b.jpg": (100, 50), "c.png": (64, 64), "d.jpeg": (30, 90)}


def _main(*args: str) -> subprocess.CompletedProcess:
    """`python -m jaxdet.main ARGS` with this test run's compilation cache."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.run([sys.executable, "-m", "jaxdet.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir with config.json and a step-5 checkpoint of freshly initialised ATSS
    (no score threshold inside, so every image has detections), and an image folder."""
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config("atss", str(root / "tfds"))  # shapes: class names need no data
    config.eval.batch_size = 3  # 4 images: the second batch is padded
    config.test.score_thr = 0.0
    workdir = str(root / "run")
    predict.save_config(config, workdir)
    det = detectors.build(config)
    params, _ = det.init(jax.random.PRNGKey(0), (64, 64))
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(5, {"step": jnp.int32(5), "params": params})
    ckpt.close()
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return workdir, str(folder), params


def _by_hand(detector, params, config, image):
    """The detector on the image resized and padded by hand, boxes scaled back by hand."""
    h, w = image.shape[:2]
    scale, nh, nw = transforms.rescale_size(h, w, 64, 64)
    x = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    x = (x - np.float32(transforms.IMAGENET_MEAN)) / np.float32(transforms.IMAGENET_STD)
    padded = np.zeros((1, 64, 64, 3), np.float32)
    padded[0, :nh, :nw] = x
    d = detector.predict(params, jnp.asarray(padded), jnp.asarray([[nh, nw]], jnp.int32))
    keep = np.asarray(d.valid[0])
    boxes = np.clip(np.asarray(d.boxes[0])[keep] / scale, 0, [w, h, w, h])
    return boxes, np.asarray(d.scores[0])[keep]


def test_python_api_gives_boxes_in_original_pixels(run):
    workdir, folder, params = run
    detector, loaded, config = jaxdet.load(workdir)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    preds = jaxdet.predict_images(detector, loaded, config, folder, score_thr=0.0)
    assert [os.path.basename(p.name) for p in preds] == sorted(SIZES)  # notes.txt skipped
    for p in preds:
        h, w = SIZES[os.path.basename(p.name)]
        assert p.image_hw == (h, w) and len(p.boxes) > 0
        assert (p.boxes >= 0).all() and (p.boxes[:, [0, 2]] <= w).all()
        assert (p.boxes[:, [1, 3]] <= h).all() and (np.diff(p.scores) <= 0).all()
        assert set(p.class_names) <= set(shapes.CLASS_NAMES)
        np.testing.assert_array_equal(p.category_ids, p.labels + 1)
        image = np.asarray(Image.open(p.name).convert("RGB"))
        boxes, scores = _by_hand(detector, loaded, config, image)
        assert len(boxes) == len(p.boxes)
        # Same detections (up to the order of equal scores and batch-size rounding).
        dist = np.abs(p.boxes[:, None] - boxes[None]).max(-1) + np.abs(
            p.scores[:, None] - scores[None]) * 100
        assert dist.min(axis=1).max() < 1e-2
    # An array input gives what its (lossless PNG) file gives.
    png = next(p for p in preds if p.name.endswith("c.png"))
    [arr] = jaxdet.predict_images(detector, loaded, config,
                                  [np.asarray(Image.open(png.name))], score_thr=0.0)
    assert arr.name == "array_0"
    np.testing.assert_allclose(arr.boxes, png.boxes, atol=1e-4)


def test_command_line_writes_pngs_and_coco_results(run, tmp_path):
    workdir, folder, _ = run
    out = tmp_path / "out"
    r = _main(f"--workdir={workdir}", "--mode=predict", f"--images={folder}/*.*g",
              "--score_thr=0.0", f"--out={out}", "--step=5")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Wrote 4 annotated image(s)" in r.stdout
    for name, (h, w) in SIZES.items():
        with Image.open(out / (os.path.splitext(name)[0] + ".png")) as im:
            assert im.size == (w, h)  # drawn on the original image
    rows = json.loads((out / "results.json").read_text())
    assert {r["file_name"] for r in rows} == set(SIZES)
    for row in rows:
        h, w = SIZES[row["file_name"]]
        x, y, bw, bh = row["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w + 0.01 and y + bh <= h + 0.01
        assert shapes.CLASS_NAMES[row["category_id"] - 1] == row["category_name"]
    # The rows of the first image are the Python API's detections in xywh.
    detector, params, config = jaxdet.load(workdir, step=5)
    [pred] = jaxdet.predict_images(detector, params, config, [os.path.join(folder, "a.jpg")],
                                   score_thr=0.0)
    first = [r for r in rows if r["file_name"] == "a.jpg"]
    xyxy = np.asarray([[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in first)])
    np.testing.assert_allclose(np.sort(xyxy, axis=0), np.sort(pred.boxes, axis=0), atol=0.02)


def test_bad_inputs_are_clear_errors(run, tmp_path):
    workdir, folder, _ = run
    detector, params, config = jaxdet.load(workdir)
    with pytest.raises(predict.ImageInputError, match="no images found"):
        jaxdet.predict_images(detector, params, config, str(tmp_path))  # an empty folder
    with pytest.raises(predict.ImageInputError, match="no images found"):
        predict.find_images(os.path.join(folder, "*.gif"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(predict.ImageInputError, match="broken.jpg"):
        jaxdet.predict_images(detector, params, config, [os.path.join(folder, "a.jpg"), bad])
    with pytest.raises(predict.ImageInputError, match="uint8"):
        jaxdet.predict_images(detector, params, config, [np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(FileNotFoundError, match="no checkpoint 7"):
        jaxdet.load(workdir, step=7)
    with pytest.raises(FileNotFoundError, match="config.json"):
        jaxdet.load(str(tmp_path))
    r = _main(f"--workdir={workdir}", "--mode=predict", f"--images={tmp_path}/*.jpg")
    assert r.returncode == 2 and "cannot read image" in r.stderr and "broken.jpg" in r.stderr
