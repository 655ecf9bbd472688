"""visualize.save_grid: a PNG grid with boxes drawn where the detections are."""

import numpy as np
from PIL import Image

from jaxdet.core.types import Detections
from jaxdet.data import transforms
from jaxdet.eval import visualize


def _batch(b=3, h=64, w=64):
    norm = transforms.Normalize()
    image = norm.map({"image": np.full((h, w, 3), 128, np.uint8)})["image"]
    valid = np.zeros((b, 2), bool)
    valid[1, 0] = True
    boxes = np.zeros((b, 2, 4), np.float32)
    boxes[1, 0] = [50, 10, 60, 20]
    return {
        "image": np.stack([image] * b),
        "image_id": np.array([1, 2, -1]),  # the third is a padding example
        "image_hw": np.array([[64, 64], [48, 64], [0, 0]]),
        "boxes": boxes,
        "valid": valid,
    }


def _dets(b=3):
    return Detections(
        boxes=np.tile(np.array([[10, 10, 40, 30], [0, 0, 5, 5]], np.float32), (b, 1, 1)),
        scores=np.tile(np.array([0.9, 0.1], np.float32), (b, 1)),
        classes=np.tile(np.array([1, 0], np.int32), (b, 1)),
        valid=np.ones((b, 2), bool),
    )


def test_to_uint8_inverts_normalize():
    im = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    back = visualize.to_uint8(transforms.Normalize().map({"image": im})["image"])
    np.testing.assert_array_equal(back, im)


def test_save_grid(tmp_path):
    path = tmp_path / "viz" / "grid.png"
    grid = visualize.save_grid(path, _batch(), _dets(), ("a", "b"), cols=2)
    saved = np.asarray(Image.open(path))
    assert saved.shape == (64, 128, 3)  # two real images side by side; padding skipped
    np.testing.assert_array_equal(saved, np.asarray(grid))
    np.testing.assert_array_equal(saved[20, 10], visualize._PALETTE[1])  # the 0.9 box's edge
    assert (saved[2, 2] == 128).all()  # the 0.1 box is below score_thr
    np.testing.assert_array_equal(saved[15, 64 + 50], [255, 255, 255])  # GT of image 2
    assert (saved[50:, 64:] == 0).all()  # second panel cropped to its 48 px height


def test_save_grid_skips_invalid_detections(tmp_path):
    dets = _dets()
    dets = dets.replace(valid=np.zeros_like(dets.valid))
    visualize.save_grid(tmp_path / "g.png", _batch(), dets, show_gt=False, max_images=1)
    saved = np.asarray(Image.open(tmp_path / "g.png"))
    assert saved.shape == (64, 64, 3) and (saved == 128).all()
