"""The built-in `shapes` generator and tfds builder: the specification holds."""

import numpy as np
import pytest

from configs import common
from jaxdet.data import pipeline, shapes


def test_generator_is_seed_deterministic():
    a = shapes.generate_example(shapes.example_seed("default", "train", 3))
    b = shapes.generate_example(shapes.example_seed("default", "train", 3))
    c = shapes.generate_example(shapes.example_seed("default", "train", 4))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], c["image"])


def test_generator_meets_the_specification():
    s = 128
    counts, labels, rel_sizes, aspects = [], [], [], []
    for i in range(150):
        ex = shapes.generate_example(shapes.example_seed("default", "train", i), s)
        n = len(ex["labels"])
        counts.append(n)
        assert ex["image"].shape == (s, s, 3) and ex["image"].dtype == np.uint8
        assert ex["boxes"].shape == (n, 4) and ex["masks"].shape == (n, s, s)
        labels += ex["labels"].tolist()
        masks = ex["masks"].astype(bool)
    # Masks are the visible parts: disjoint; boxes are the masks' tight boxes.
        assert masks.sum(0).max(initial=0) <= 1
        for box, m in zip(ex["boxes"], masks):
            ys, xs = np.nonzero(m)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            w, h = box[2] - box[0], box[3] - box[1]
            rel_sizes.append(max(w, h) / s)
            aspects.append(w / h)
    assert 1 <= min(counts) and max(counts) <= 8 and np.mean(counts) > 2.5
    assert set(labels) == {0, 1, 2}
    # Sizes are of the drawn pixels: up to 2 px above 60% from rasterisation.
    assert max(rel_sizes) <= 0.60 + 2 / s and min(rel_sizes) < 0.12
    assert min(aspects) < 0.6 and max(aspects) > 1.7
    # The background is textured (not flat) and noisy.
    img = shapes.generate_example(shapes.example_seed("default", "val", 0), s)["image"]
    assert img.astype(np.float32).std(axis=(0, 1)).min() > 5


def test_occlusion_drops_mostly_hidden_objects(monkeypatch):
    # With the visibility threshold at 100%, any partly hidden object disappears, so
    # some images lose objects compared with the default 25% threshold.
    seeds = [shapes.example_seed("default", "train", i) for i in range(40)]
    n_default = sum(len(shapes.generate_example(sd)["labels"]) for sd in seeds)
    monkeypatch.setattr(shapes, "MIN_VISIBLE", 1.0)
    n_strict = sum(len(shapes.generate_example(sd)["labels"]) for sd in seeds)
    assert n_strict < n_default


def test_builder_prepares_both_splits(tmp_path):
    path = pipeline.prepare("shapes", str(tmp_path), builder_config="tiny")
    assert path.endswith("shapes/tiny/1.0.0")
    assert pipeline.prepare("shapes", str(tmp_path), builder_config="tiny") == path  # reused
    src = pipeline.data_source("shapes", "val", str(tmp_path), "tiny", with_masks=True)
    assert len(src) == 12
    ids = sorted(int(src[i]["image_id"]) for i in range(len(src)))
    assert ids == [shapes.VAL_ID_OFFSET + i for i in range(1, 13)]
    r = src[0]
    assert r["masks"].shape[1:] == (64, 64) and r["boxes"].shape == (len(r["labels"]), 4)
    data = common.data_shapes(64, "tiny")
    data.data_dir = str(tmp_path)
    assert pipeline.num_examples(data, "train") == 48
    assert pipeline.class_names(data) == shapes.CLASS_NAMES


def test_unknown_dataset_is_an_error():
    with pytest.raises(ValueError, match="unknown dataset"):
        pipeline.resolve_dataset("nope")
