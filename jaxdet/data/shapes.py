"""The built-in `shapes` dataset: procedural, seeded images of occluding shapes.

Each image (default 128 x 128) holds 1-8 objects of three classes (ellipse,
rectangle, triangle) with random aspect ratios (1:2.5 .. 2.5:1), sizes 8%-60%
of the image side (log-uniform), random colours with per-object shading, drawn
in order over a textured, noisy background so later objects occlude earlier ones.
Boxes and instance masks describe the *visible* part; an object less than 25%
visible is dropped. Pixel noise is added last.

    generate_example(seed, image_size=128) -> dict(image, boxes, labels, masks)
    Shapes(data_dir=..., config='default' | 'tiny' | 'small_objects').download_and_prepare()

Builder configs:
  default        4000 train / 500 val images, 128 px (the demo's dataset).
  tiny           48 train / 12 val images, 64 px (tests).
  small_objects  4000 train / 500 val, 128 px, object sizes 4%-20% of the side
                 (the HAMBox experiment: mostly small objects, like faces).
Example ids are `i + 1` for train and `1_000_000 + i + 1` for val, so an image id
names its split. Everything is a function of (builder config, split, index).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

CLASS_NAMES = ("ellipse", "rectangle", "triangle")
VAL_ID_OFFSET = 1_000_000
MIN_VISIBLE = 0.25


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 128
    num_train: int = 4000
    num_val: int = 500
    min_objects: int = 1
    max_objects: int = 8
    min_rel_size: float = 0.08
    max_rel_size: float = 0.60


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """[s, s, 3] float: a colour gradient plus blurred (low-frequency) noise texture."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t) + c1 * t
    cells = int(rng.integers(4, 16))
    coarse = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
    texture = np.asarray(
        Image.fromarray(((coarse * 0.15 + 0.5).clip(0, 1) * 255).astype(np.uint8)).resize(
            (s, s), Image.BICUBIC
        ),
        np.float32,
    )
    return img + (texture - 128.0) * rng.uniform(0.3, 0.9)


def _shape_mask(rng: np.random.Generator, cls: int, s: int, lo: float, hi: float) -> np.ndarray:
    """[s, s] bool mask of one shape of class `cls` at a random place, size and aspect."""
    size = np.exp(rng.uniform(np.log(lo * s), np.log(hi * s)))
    aspect = np.exp(rng.uniform(np.log(1 / 2.5), np.log(2.5)))
    w = float(np.clip(size * np.sqrt(aspect), 3, hi * s))
    h = float(np.clip(size / np.sqrt(aspect), 3, hi * s))
    # Centre anywhere such that at least half of the box is inside the image.
    cx = rng.uniform(w / 4, s - w / 4)
    cy = rng.uniform(h / 4, s - h / 4)
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    canvas = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(canvas)
    if cls == 0:
        d.ellipse((x1, y1, x2, y2), fill=1)
    elif cls == 1:
        d.rectangle((x1, y1, x2, y2), fill=1)
    else:  # a triangle with its base on one side of the box and apex on the other
        apex = rng.uniform(x1, x2)
        if rng.random() < 0.5:
            d.polygon([(x1, y2), (x2, y2), (apex, y1)], fill=1)
        else:
            d.polygon([(x1, y1), (x2, y1), (apex, y2)], fill=1)
    return np.asarray(canvas, bool)


def generate_example(
    seed: int | np.random.SeedSequence,
    image_size: int = 128,
    *,
    min_objects: int = 1,
    max_objects: int = 8,
    min_rel_size: float = 0.08,
    max_rel_size: float = 0.60,
) -> dict[str, np.ndarray]:
    """One image: image [S, S, 3] uint8; boxes [n, 4] float32 xyxy (visible part, pixel
    edges: x2 = last column + 1); labels [n] int64 in [0, 3); masks [n, S, S] uint8."""
    rng = np.random.default_rng(seed)
    s = int(image_size)
    img = _background(rng, s)
    n = int(rng.integers(min_objects, max_objects + 1))
    full_masks, labels = [], []
    owner = np.full((s, s), -1, np.int32)  # which object is visible at each pixel
    for k in range(n):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        m = _shape_mask(rng, cls, s, min_rel_size, max_rel_size)
        if not m.any():
            continue
        colour = rng.uniform(0, 255, 3)
        # Shading: a linear ramp across the object so a flat colour test is not enough.
        yy, xx = np.nonzero(m)
        ramp = rng.uniform(-40, 40) * ((xx - xx.mean()) / max(np.ptp(xx), 1))
        img[yy, xx] = colour + ramp[:, None]
        owner[m] = len(full_masks)
        full_masks.append(m)
        labels.append(cls)
        del k
    img = img + rng.normal(0, rng.uniform(4, 14), img.shape)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    boxes, keep_labels, masks = [], [], []
    for k, (m, cls) in enumerate(zip(full_masks, labels)):
        visible = owner == k
        if visible.sum() < MIN_VISIBLE * m.sum():
            continue
        ys, xs = np.nonzero(visible)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        keep_labels.append(cls)
        masks.append(visible)
    return dict(
        image=image,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(keep_labels, np.int64),
        masks=np.asarray(masks, np.uint8).reshape(-1, s, s),
    )


def example_seed(config_name: str, split: str, index: int) -> np.random.SeedSequence:
    """The seed of example `index` of a split: a pure function of its name."""
    key = [ord(c) for c in f"jaxdet-shapes/{config_name}/{split}"]
    return np.random.SeedSequence([*key, int(index)])


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class Shapes(tfds.core.GeneratorBasedBuilder):
    """tfds builder of the procedural `shapes` dataset (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", description="4000/500 images, 128 px."),
        ShapesConfig(name="tiny", description="48/12 images, 64 px (tests).",
                     image_size=64, num_train=48, num_val=12),
        ShapesConfig(name="small_objects", description="Objects 4%-20% of the side.",
                     min_rel_size=0.04, max_rel_size=0.20, min_objects=3, max_objects=12),
    ]  # fmt: skip

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=record_features(), homepage=None)

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        return {"train": self._generate_examples("train", c.num_train),
                "val": self._generate_examples("val", c.num_val)}  # fmt: skip

    def _generate_examples(self, split: str, num: int):
        c = self.builder_config
        offset = VAL_ID_OFFSET if split == "val" else 0
        for i in range(num):
            ex = generate_example(
                example_seed(c.name, split, i), c.image_size, min_objects=c.min_objects,
                max_objects=c.max_objects, min_rel_size=c.min_rel_size,
                max_rel_size=c.max_rel_size,
            )  # fmt: skip
            n = len(ex["labels"])
            yield i, dict(
                image=png_bytes(ex["image"]),
                image_id=offset + i + 1,
                file_name=f"{split}/{i:06d}.png",
                boxes=ex["boxes"],
                labels=ex["labels"],
                is_crowd=np.zeros((n,), bool),
                masks=ex["masks"],
            )


def record_features(image_format: str = "png") -> tfds.features.FeaturesDict:
    """The flat feature set shared by `shapes` and `coco_dir` (docs/DESIGN.md, "Data").

    image: encoded image; image_id: int64; file_name: str (for error messages);
    boxes [n, 4] float32 xyxy pixels of the stored image; labels [n] int64 contiguous;
    is_crowd [n] bool; masks [n, h, w] uint8 (zlib).
    """
    f = tfds.features
    return f.FeaturesDict(
        dict(
            image=f.Image(shape=(None, None, 3), encoding_format=image_format),
            image_id=f.Scalar(dtype=np.int64),
            file_name=f.Text(),
            boxes=f.Tensor(shape=(None, 4), dtype=np.float32),
            labels=f.Tensor(shape=(None,), dtype=np.int64),
            is_crowd=f.Tensor(shape=(None,), dtype=np.bool_),
            masks=f.Tensor(shape=(None, None, None), dtype=np.uint8, encoding="zlib"),
        )
    )
