"""segm evaluation through the evaluator loop.evaluate builds (`loop.make_evaluator`):
GT masks as detections -> segm AP 1; the 'segm_' stats after the bbox ones; and
loop.evaluate end to end with a stub detector (bbox + segm, proposal recall)."""

import numpy as np
import pytest

from configs import common
from jaxdet.core.types import Detections
from jaxdet.data import pipeline
from jaxdet.eval import coco_eval, proposal_recall
from jaxdet.train import loop
from jaxdet.train import mesh as mesh_lib


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare("shapes", data_dir, builder_config="tiny")
    return data_dir


def _config(data_dir, stride=1, metric="bbox"):
    """shapes/tiny (64 px) with masks at 1/stride, the full config field set."""
    data = common.data_shapes(64, "tiny")
    data.update(dict(data_dir=data_dir, with_masks=True, mask_stride=stride, max_boxes=20))
    config = common.base("stub", data, common.model_tiny(), *common.schedule_tiny(1))
    config.eval.batch_size = 4
    config.test.mask_stride = stride
    config.test.metric = metric
    return config


def _gt_as_detections(batch):
    """The batch's GT as detections; masks as probabilities (0.9 inside, 0.2 outside)."""
    n = batch["labels"].shape[1]
    return Detections(
        boxes=batch["boxes"],
        scores=np.tile(np.linspace(1.0, 0.5, n, dtype=np.float32), (len(batch["labels"]), 1)),
        classes=batch["labels"],
        valid=batch["valid"],
        masks=0.2 + 0.7 * batch["masks"].astype(np.float32),
    )


def _evaluate_gt(config, tmp_path):
    ev = loop.make_evaluator(config, with_masks=True)
    for batch in pipeline.from_config(config.data, batch_size=4, train=False):
        meta = {k: batch[k] for k in ("image_id", "scale", "image_hw")}  # as loop.evaluate
        ev.add(_gt_as_detections(batch), meta)
    return ev.evaluate(results_path=tmp_path / "results.json")


def test_gt_masks_give_segm_ap_one(data_dir, tmp_path, capsys):
    stats = _evaluate_gt(_config(data_dir), tmp_path)
    segm = [f"segm_{k}" for k in coco_eval.STAT_NAMES]
    assert list(stats) == list(coco_eval.STAT_NAMES) + segm
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["segm_AP"] == pytest.approx(1.0) and stats["segm_AR100"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert 0 <= out.index("COCO bbox") < out.index("COCO segm")
    assert coco_eval.format_stats(stats).splitlines()[1].startswith("segm: AP 1.000")


def test_masks_at_stride_2(data_dir, tmp_path):
    stats = _evaluate_gt(_config(data_dir, stride=2), tmp_path)
    assert stats["AP"] == pytest.approx(1.0)
    # 1/2 resolution masks lose detail on the 5 px objects (AP runs up to IoU 0.95).
    assert 0.7 <= stats["segm_AP"] < 1.0


def test_mask_stride_mismatch_is_an_error(data_dir):
    config = _config(data_dir, stride=2)
    config.test.mask_stride = 1  # the masks are 32x32: 1x is not the 64x64 input
    ev = loop.make_evaluator(config, with_masks=True)
    batch = next(pipeline.from_config(config.data, batch_size=4, train=False))
    meta = {k: batch[k] for k in ("image_id", "scale", "image_hw")}
    with pytest.raises(ValueError, match="mask_stride"):
        ev.add(_gt_as_detections(batch), meta)


def test_make_evaluator_metric(data_dir):
    config = _config(data_dir)
    assert type(loop.make_evaluator(config)) is coco_eval.CocoEvaluator
    assert loop.make_evaluator(config).iou_types == ("bbox",)
    config.test.metric = "proposal"
    assert isinstance(loop.make_evaluator(config), proposal_recall.ProposalRecallEvaluator)
    config.test.metric = "segm"
    with pytest.raises(ValueError, match="config.test.metric"):
        loop.make_evaluator(config)


class _StubDetector:
    """predict: one fixed box per image with a 4x4-stride mask of it (no parameters);
    `config` as the detector protocol has it (the eval step reads its data mean / std)."""

    def __init__(self, config):
        self.config = config

    def predict(self, params, images, image_hw):
        import jax.numpy as jnp

        del params, image_hw
        b = images.shape[0]
        box = jnp.asarray([8.0, 8.0, 40.0, 40.0])
        mask = jnp.zeros((16, 16)).at[2:10, 2:10].set(0.9)
        return Detections(
            boxes=jnp.broadcast_to(box, (b, 1, 4)), scores=jnp.ones((b, 1)),
            classes=jnp.zeros((b, 1), jnp.int32), valid=jnp.ones((b, 1), bool),
            masks=jnp.broadcast_to(mask, (b, 1, 16, 16)),
        )  # fmt: skip


@pytest.mark.parametrize("metric", ["bbox", "proposal"])
def test_loop_evaluate_with_a_stub_detector(data_dir, tmp_path, metric, capsys):
    config = _config(data_dir, stride=4, metric=metric)
    config.data.with_masks = False  # the masks come from the detections alone
    mesh = mesh_lib.make_mesh(1)
    stats = loop.evaluate(config, _StubDetector(config), {}, mesh, str(tmp_path), step=1, draw=0)
    out = capsys.readouterr().out
    if metric == "bbox":
        assert {"AP", "segm_AP", "segm_AR100"} <= set(stats)
        assert 0 <= out.index("COCO bbox") < out.index("COCO segm")
    else:
        assert set(proposal_recall.stat_names()) <= set(stats) and "AP" not in stats
        assert "COCO proposal recall" in out
    assert (tmp_path / "eval" / "results_1.json").exists()


def test_mask_resampling_window_matches_a_full_resize():
    """The windowed resample equals one bilinear resize of the whole image part (up to
    rounding at the 0.5 level: a pixel or two), at strides 1-4, up- and down-scaling."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    differing = total = 0
    for stride, (h, w), (oh, ow) in [(1, (60, 50), (60, 50)), (2, (58, 64), (120, 131)),
                                     (4, (64, 40), (31, 20)), (3, (45, 60), (90, 120))]:
        hm, wm = 64 // stride, 64 // stride
        masks = np.zeros((6, hm, wm), np.float32)
        for m in masks:
            y0, x0 = rng.integers(0, hm - 2), rng.integers(0, wm - 2)
            y1, x1 = rng.integers(y0 + 1, hm), rng.integers(x0 + 1, wm)
            m[y0:y1, x0:x1] = rng.uniform(0, 1, (y1 - y0, x1 - x0))
        padded = (hm * stride, wm * stride)
        rles = coco_eval._masks_to_rles(masks, padded, (h, w), (oh, ow))
        for m, rle in zip(masks, rles):
            full = Image.fromarray(m).resize(
                (ow, oh), Image.BILINEAR, box=(0, 0, w / stride, h / stride))
            want = np.asarray(full) >= 0.5
            got = mask_utils.decode(rle).astype(bool)
            assert got.shape == (oh, ow)
            differing += int((got != want).sum())
            total += want.size
        if stride == 1 and (oh, ow) == (h, w):  # same size: the mask itself, binarised
            got = np.stack([mask_utils.decode(r) for r in rles])
            np.testing.assert_array_equal(got, masks[:, :h, :w] >= 0.5)
    assert differing <= 2, (differing, total)
