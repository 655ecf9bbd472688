"""Transforms and iterators: static shapes, determinism, resumable state, workers,
flip/resize geometry, max_boxes truncation and bad annotations."""

import io
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from configs import common
from jaxdet.data import pipeline, transforms
from jaxdet.data.cache import DecodedCache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = common.data_shapes(64, "tiny").to_dict()
    d.update(data_dir=str(tmp_path_factory.mktemp("tfds")), cache_mb=0)
    pipeline.prepare(d)
    return d


def _record(boxes, labels=None, crowd=None, h=40, w=60):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(buf, format="PNG")
    n = len(boxes)
    return dict(image=buf.getvalue(), image_id=7, file_name="x/7.png",
                boxes=np.asarray(boxes, np.float32).reshape(n, 4),
                labels=np.zeros(n, np.int64) if labels is None else np.asarray(labels),
                is_crowd=np.zeros(n, bool) if crowd is None else np.asarray(crowd),
                masks={})


def _run(ops, element):
    for op in ops:
        element = op.map(element)
    return element


def test_train_batches_are_static_seeded_and_resumable(data):
    a = pipeline.make_train_iterator(data, batch_size=4, seed=1)
    b = pipeline.make_train_iterator(data, batch_size=4, seed=1)
    c = pipeline.make_train_iterator(data, batch_size=4, seed=2)
    first = [next(a) for _ in range(3)]
    assert first[0]["image"].shape == (4, 64, 64, 3) and first[0]["boxes"].shape == (4, 16, 4)
    for x, y in zip(first, [next(b) for _ in range(3)]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(first[0]["image_id"], next(c)["image_id"])
    state = a.get_state()
    want = [next(a) for _ in range(14)]  # crosses the epoch boundary (48 / 4 = 12 batches)
    resumed = pipeline.make_train_iterator(data, batch_size=4, seed=1)
    resumed.set_state(state)
    for x in want:
        y = next(resumed)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # Each epoch is a permutation of the split, reshuffled from epoch to epoch.
    it = pipeline.make_train_iterator(data, batch_size=4, seed=3)
    e1 = np.concatenate([next(it)["image_id"] for _ in range(12)])
    e2 = np.concatenate([next(it)["image_id"] for _ in range(12)])
    assert sorted(e1) == sorted(e2) == list(range(1, 49)) and not np.array_equal(e1, e2)


@pytest.mark.parametrize("cache_mb", [0, 64])
def test_worker_processes_give_the_same_batches(data, cache_mb):
    serial = pipeline.make_train_iterator(data, batch_size=4, seed=5)
    workers = pipeline.make_train_iterator({**data, "num_workers": 1, "cache_mb": cache_mb},
                                           batch_size=4, seed=5)
    for _ in range(2):
        x, y = next(serial), next(workers)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_decoded_cache_gives_the_same_batches_across_epochs_and_resume(data):
    plain = pipeline.make_train_iterator(data, batch_size=4, seed=4)
    cached = pipeline.make_train_iterator({**data, "cache_mb": 64}, batch_size=4, seed=4)
    state = None
    for i in range(26):  # two epochs and a bit: the second reads from memory
        if i == 20:
            state = cached.get_state()
        x, y = next(plain), next(cached)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    resumed = pipeline.make_train_iterator({**data, "cache_mb": 64}, batch_size=4, seed=4)
    resumed.set_state(state)
    want = [next(resumed) for _ in range(3)]
    # The state restores with the cache on, off, or with another budget (grain checks
    # the source's repr, which the cache leaves as the wrapped source's).
    for cache_mb in (64, 0, 1):
        again = pipeline.make_train_iterator({**data, "cache_mb": cache_mb}, batch_size=4,
                                             seed=4)
        again.set_state(state)
        for x in want:
            y = next(again)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
    plain.set_state(state)  # and a state saved without the cache restores with it
    cached_again = pipeline.make_train_iterator({**data, "cache_mb": 64}, batch_size=4, seed=4)
    cached_again.set_state(plain.get_state())
    np.testing.assert_array_equal(next(cached_again)["image"], want[0]["image"])


def test_decoded_cache_budget_copies_and_errors():
    records = [_record([[1, 1, 9, 9]]) for _ in range(3)]
    decode = transforms.Decode(3)
    one = sum(v.nbytes for v in decode.map(dict(records[0])).values()
                        if isinstance(v, np.ndarray))
    cache = DecodedCache(records, [decode], max_bytes=2 * one)
    els = [cache[i] for i in range(3)]
    assert cache.num_cached == 2 and cache.cached_bytes == 2 * one
    again = cache[0]
    assert again is not els[0] and again["image"] is els[0]["image"]  # new dict, kept arrays
    with pytest.raises(ValueError, match="read-only"):
        again["image"][0, 0, 0] = 1
    again["image"] = None  # replacing an entry leaves the cache alone
    assert cache[0]["image"].shape == (40, 60, 3)
    assert cache.full and cache[2]["image"].shape == (40, 60, 3) and cache.num_cached == 2
    assert pickle.loads(pickle.dumps(cache)).num_cached == 0  # workers start empty
    bad = dict(records[0], image=b"\x89PNG broken")
    with pytest.raises(ValueError, match="x/7.png"):
        DecodedCache([bad], [decode], max_bytes=2**20)[0]
    assert len(DecodedCache(records, [decode], max_bytes=0)) == 3


def test_normalize_matches_the_formula_on_views_and_odd_sizes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 13, 3), dtype=np.uint8)
    norm = transforms.Normalize()
    for im in (image, image[:, ::-1], image[1:5, 2:9]):
        want = (im.astype(np.float32) - norm.mean) / norm.std
        got = norm.map({"image": im})["image"]
        assert got.dtype == np.float32 and got.shape == im.shape
        np.testing.assert_array_equal(got, want)  # bit-identical
    with pytest.raises(ValueError, match="channels"):
        norm.map({"image": image[..., :2]})


def test_eval_iterator_pads_the_last_batch(data):
    batches = list(pipeline.make_eval_iterator(data, batch_size=5))
    ids = np.concatenate([b["image_id"] for b in batches])
    assert len(batches) == 3 and (ids == -1).sum() == 3 and len(set(ids[ids >= 0])) == 12
    pad = batches[-1]
    assert not pad["valid"][ids[-5:] == -1].any() and (pad["image_hw"][-1] == 0).all()


def test_flip_and_resize_geometry():
    el = transforms.Decode(3).map(_record([[10, 5, 20, 15]]))
    el = transforms.ResizeKeepRatio(80, 90).map(el)  # 40x60 -> scale 1.5 (long side 90)
    assert el["image"].shape == (60, 90, 3) and el["scale"] == pytest.approx(1.5)
    np.testing.assert_allclose(el["boxes"], [[15, 7.5, 30, 22.5]])

    image = el["image"].copy()
    image[:, :5] = [1, 2, 3]  # an asymmetric image
    el["image"] = image
    flipped = transforms.RandomFlip(1.0).random_map(dict(el), np.random.default_rng(0))
    np.testing.assert_allclose(flipped["boxes"], [[60, 7.5, 75, 22.5]])  # W = 90
    np.testing.assert_array_equal(flipped["image"], image[:, ::-1])
    assert flipped["image"].flags.c_contiguous and (flipped["image"][:, -5:] == [1, 2, 3]).all()
    assert transforms.rescale_size(480, 640, 800, 1333) == (800 / 480, 800, 1067)


def test_invalid_boxes_are_dropped_and_counted(caplog):
    rec = _record([[1, 1, 11, 11], [np.nan, 0, 5, 5], [5, 5, 5, 20], [70, 0, 90, 10],
                   [-5, -5, 10, 10], [0, 0, np.inf, 3]])
    with caplog.at_level(logging.WARNING):
        el = transforms.Decode(3).map(rec)
    np.testing.assert_allclose(el["boxes"], [[1, 1, 11, 11], [0, 0, 10, 10]])  # clipped
    assert el["num_invalid"] == 4 and "x/7.png" in caplog.text
    assert np.isfinite(el["boxes"]).all()


def test_image_without_boxes():
    ops = transforms.train_transforms(3, (64, 64), 4, min_size=None, max_size=None,
                                      train=False)
    el = _run(ops, _record([]))
    assert el["boxes"].shape == (4, 4) and not el["valid"].any() and el["num_invalid"] == 0


def test_more_boxes_than_max_boxes_are_truncated_with_a_warning(caplog):
    boxes = [[i, i, i + 10, i + 10] for i in range(7)]
    crowd = [True, False, False, False, False, False, False]
    ops = transforms.train_transforms(3, (64, 64), 4, min_size=None, max_size=None,
                                      train=False)
    with caplog.at_level(logging.WARNING):
        el = _run(ops, _record(boxes, crowd=crowd))
    assert el["valid"].all() and el["num_truncated"] == 3
    assert not el["ignore"].any()  # non-crowd boxes are kept first
    np.testing.assert_allclose(el["boxes"][:, 0], [1, 2, 3, 4])
    assert "max_boxes=4" in caplog.text


def test_bad_records_are_clear_errors():
    with pytest.raises(ValueError, match="label 5 outside"):
        transforms.Decode(3).map(_record([[0, 0, 5, 5]], labels=[5]))
    bad = _record([[0, 0, 5, 5]])
    bad["image"] = b"\x89PNG broken"
    with pytest.raises(ValueError, match="x/7.png"):
        transforms.Decode(3).map(bad)
    with pytest.raises(ValueError, match="larger than the padded size"):
        _run(transforms.train_transforms(3, (32, 32), 4, min_size=None, max_size=None,
                                         train=False), _record([[0, 0, 5, 5]]))


def test_num_classes_mismatch_and_missing_dataset(data, tmp_path):
    with pytest.raises(ValueError, match="num_classes=5"):
        pipeline.make_train_iterator({**data, "num_classes": 5}, batch_size=4)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        pipeline.num_examples({**data, "data_dir": str(tmp_path)}, "train")
    with pytest.raises(FileNotFoundError, match="nothing is ever"):
        pipeline.prepare("coco", str(tmp_path))
