"""The one-stage detector template (after detectron2's `DenseDetector`).

`DenseDetector.loss_fn` runs one training forward pass in a fixed order:

    gt         = ground_truth_from_batch(batch)              # built once
    outputs    = forward(params, images, gt, ctx)            # the network, once
    priors     = priors(image_hw, outputs)                   # anchors / points
    assignment = assign(outputs, priors, gt)                 # batched, [B, N, ...]
    terms      = losses(outputs, priors, gt, assignment, ctx)   # dict of scalars
    loss       = sum of the terms whose name starts with 'loss'
    det_state  = update_state(det_state, terms, ctx)

and `predict` runs the network, `priors`, then per image `decode` and
`dense_postprocess`. A method file overrides `priors`, `assign`, `losses` and
`decode` (and, rarely, `forward`, `init_state` / `update_state`); every term it
returns is reported as a metric. Pieces that several methods share (RetinaNet's
anchors and box loss, the focal classification loss) are module-level functions.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import targets
from jaxdet.core.types import Detections, GroundTruth, Priors, ground_truth_from_batch
from jaxdet.losses.focal import sigmoid_focal_loss
from jaxdet.models import torch_import
from jaxdet.models.backbones import resnet
from jaxdet.models.necks.fpn import FPN
from jaxdet.ops.postprocess import dense_postprocess


class OneStageNetwork(nn.Module):
    """Backbone -> neck -> dense head, with its stages callable one by one.

    `features(images [B, H, W, 3])` -> per-level maps [B, h_l, w_l, C];
    `predictions(features)` -> the head's dict of [B, N, ...] arrays;
    `__call__(images)` = both. Parameters: {'backbone', 'neck', 'head'}.
    """

    backbone: nn.Module
    neck: nn.Module
    head: nn.Module

    def features(self, images: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(self.neck(self.backbone(images)))

    def predictions(self, features: tuple[jax.Array, ...]) -> dict[str, jax.Array]:
        return self.head(features)

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        return self.predictions(self.features(images))


def build_backbone_neck(
    model_cfg: Any, platform: platform_lib.Platform = platform_lib.DEFAULT
) -> tuple[nn.Module, nn.Module]:
    """ResNet + FPN from `config.model` (see configs/common.py for the fields)."""
    dtype = jnp.dtype(model_cfg.dtype)
    b = model_cfg.backbone
    backbone = resnet.ResNet(
        depth=b.depth,
        base_width=b.width,
        norm=b.norm,
        frozen_stages=b.frozen_stages,
        out_levels=tuple(b.out_levels),
        gn_groups=b.gn_groups,
        dtype=dtype,
        platform=platform,
    )
    f = model_cfg.fpn
    neck = FPN(
        out_channels=f.channels,
        num_outs=f.num_outs,
        add_extra_convs=f.extra_convs,
        relu_before_extra_convs=f.relu_before_extra,
        dtype=dtype,
        platform=platform,
    )
    if f.num_outs != len(model_cfg.strides):
        raise ValueError(
            f"model.fpn.num_outs={f.num_outs} but {len(model_cfg.strides)} strides "
            f"{tuple(model_cfg.strides)}"
        )
    return backbone, neck


def init_network(net: nn.Module, rng: jax.Array, image_hw: tuple[int, int],
                 model_cfg: Any) -> Any:
    """Parameters of `net` (its 'backbone' a ResNet) for inputs of size image_hw, with
    the ImageNet weights of `model_cfg.pretrained` (an .npz) in the backbone if set."""
    dummy = jnp.zeros((1, *image_hw, 3), jnp.float32)
    params = jax.jit(net.init)(rng, dummy)["params"]
    if model_cfg.pretrained:
        params = dict(params)
        imported = torch_import.resnet_params_from_torch(
            torch_import.load_npz(model_cfg.pretrained), params["backbone"]
        )
        params["backbone"] = jax.tree_util.tree_map(jnp.asarray, imported)
    return params


def backbone_trainable_mask(params: Any, model_cfg: Any) -> Any:
    """Trainable mask: the backbone's frozen stages / norms (`model_cfg.backbone`) False."""
    b = model_cfg.backbone
    return resnet.frozen_param_mask(params, b.frozen_stages, b.norm, prefix="backbone")


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a training step knows besides the batch: the step's rng (already folded
    with the step), the step number ([] int32) and the detector's state."""

    rng: jax.Array
    step: jax.Array
    det_state: Any


def normalizer(x: jax.Array, minimum: float = 1.0) -> jax.Array:
    """max(sum over the global batch, minimum), without gradient (num_pos / avg_factor)."""
    return jax.lax.stop_gradient(jnp.maximum(jnp.sum(x), minimum))


def total_loss(terms: dict[str, jax.Array]) -> jax.Array:
    """Sum of the terms whose name starts with 'loss', in insertion order."""
    names = [k for k in terms if k.startswith("loss")]
    if not names:
        raise ValueError(f"no loss term among {sorted(terms)} (names must start with 'loss')")
    return functools.reduce(operator.add, [terms[k] for k in names])


class DenseDetector:
    """Base of the one-stage detectors: a method passes its head and overrides the hooks."""

    def __init__(self, config: Any, head: nn.Module,
                 backbone_neck: tuple[nn.Module, nn.Module] | None = None):
        """`backbone_neck`: the (backbone, neck) pair; default the ResNet + FPN of
        `config.model` (`build_backbone_neck`)."""
        self.config = config
        self.num_classes = int(config.data.num_classes)
        self.strides = tuple(int(s) for s in config.model.strides)
        if backbone_neck is None:
            backbone_neck = build_backbone_neck(config.model, platform_lib.from_config(config))
        backbone, neck = backbone_neck
        self.net = OneStageNetwork(backbone=backbone, neck=neck, head=head)

    # -- method hooks -----------------------------------------------------------
    def priors(self, image_hw: tuple[int, int], outputs: dict) -> Priors:
        """Priors (jnp leaves) of the static padded input size; `outputs` for methods
        whose priors come from predictions."""
        raise NotImplementedError(f"{type(self).__name__} must define priors()")

    def assign(self, outputs: dict, priors: Priors, gt: GroundTruth) -> Any:
        """Batched assignment ([B, N, ...] leaves) of priors to the GT rows."""
        raise NotImplementedError(f"{type(self).__name__} must define assign()")

    def losses(self, outputs: dict, priors: Priors, gt: GroundTruth, assignment: Any,
               ctx: StepContext) -> dict[str, jax.Array]:
        """Named scalars: 'loss*' terms are summed into the loss, all are metrics."""
        raise NotImplementedError(f"{type(self).__name__} must define losses()")

    def decode(self, outputs: dict, priors: Priors) -> tuple[jax.Array, jax.Array, Any]:
        """One image: outputs [N, ...] -> (boxes [N, 4], scores [N, C], factors [N] | None)."""
        raise NotImplementedError(f"{type(self).__name__} must define decode()")

    def forward(self, params: Any, images: jax.Array, gt: GroundTruth,
                ctx: StepContext) -> dict[str, jax.Array]:
        """The training forward pass (the network once); MAL overrides it."""
        del gt, ctx
        return self.apply(params, images)

    def init_state(self) -> dict:
        """Detector-owned non-trainable state (none for most methods)."""
        return {}

    def update_state(self, det_state: Any, terms: dict, ctx: StepContext) -> Any:
        """The state after this step (unchanged for most methods)."""
        del terms, ctx
        return det_state

    def level_sizes(self, priors: Priors) -> tuple[int, ...]:
        """Candidates per level of `decode`'s output (for the per-level top-k)."""
        return priors.level_sizes

    # -- the network --------------------------------------------------------------
    def apply(self, params: Any, images: jax.Array) -> dict[str, jax.Array]:
        return self.net.apply({"params": params}, images)

    def features(self, params: Any, images: jax.Array) -> tuple[jax.Array, ...]:
        return self.net.apply({"params": params}, images, method=OneStageNetwork.features)

    def predictions(self, params: Any, features: tuple[jax.Array, ...]) -> dict[str, jax.Array]:
        return self.net.apply({"params": params}, features, method=OneStageNetwork.predictions)

    # -- the contract ---------------------------------------------------------------
    def init(self, rng: jax.Array, image_hw: tuple[int, int]) -> tuple[Any, dict]:
        """(params, det_state) for inputs of size image_hw."""
        return init_network(self.net, rng, image_hw, self.config.model), self.init_state()

    def trainable_mask(self, params: Any) -> Any:
        return backbone_trainable_mask(params, self.config.model)

    def loss_fn(self, params: Any, batch: dict, rng: jax.Array, det_state: Any,
                step: jax.Array) -> tuple[jax.Array, tuple[dict, Any]]:
        """(loss, (metrics, det_state)) of one training batch (see the module docstring)."""
        images = batch["image"]
        gt = ground_truth_from_batch(batch)
        ctx = StepContext(rng=rng, step=step, det_state=det_state)
        outputs = self.forward(params, images, gt, ctx)
        priors = self.priors(tuple(images.shape[1:3]), outputs)
        assignment = self.assign(outputs, priors, gt)
        terms = self.losses(outputs, priors, gt, assignment, ctx)
        return total_loss(terms), (terms, self.update_state(det_state, terms, ctx))

    def predict(self, params: Any, images: jax.Array, image_hw: jax.Array) -> Detections:
        """images [B, H, W, 3], image_hw [B, 2] -> Detections with [B, max_det, ...] leaves."""
        outputs = self.apply(params, images)
        priors = self.priors(tuple(images.shape[1:3]), outputs)
        level_sizes = self.level_sizes(priors)
        t = self.config.test

        def one(out, hw):
            boxes, scores, factors = self.decode(out, priors)
            return dense_postprocess(
                boxes, scores, level_sizes, hw, score_thr=t.score_thr,
                pre_nms_topk=t.pre_nms_topk, iou_threshold=t.nms_iou, max_det=t.max_det,
                score_factors=factors,
            )

        return jax.vmap(one)(outputs, image_hw)


def check_assigner(config: Any, names: tuple[str, ...]) -> str:
    """`config.assigner.name`, which must be one of `names` (the ones the method runs)."""
    name = config.assigner.name
    if name not in names:
        raise ValueError(f"{config.detector}: assigner.name={name!r}; expected one of {names}")
    return name


def per_image_normalizer(pos: jax.Array) -> jax.Array:
    """sum over the images of max(positives of the image, 1), without gradient: the
    `avg_factor` of mmdetection's heads that sum `SamplingResult.avg_factor` (RepPoints).
    pos [B, N] bool -> scalar (global under `jit` over the data mesh)."""
    per = jnp.maximum(jnp.sum(pos.astype(jnp.float32), axis=-1), 1.0)
    return jax.lax.stop_gradient(jnp.sum(per))


def focal_classification_loss(
    cls_logits: jax.Array, assignment: Any, gt: Any, num_classes: int, alpha: float,
    gamma: float, num_pos: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sigmoid focal loss over all non-ignored priors of the batch / global num_pos.

    cls_logits [B, N, C]; assignment, gt batched; num_pos: the normaliser (default
    `normalizer` of the positives). Returns (loss, num_pos, pos [B, N]).
    """
    pos = assignment.positive
    cls_t = jax.vmap(lambda a, g: targets.classification_targets(a, g.labels, num_classes))(
        assignment, gt
    )
    cls_w = (~assignment.ignored).astype(jnp.float32)  # ignored priors: no loss
    if num_pos is None:
        num_pos = normalizer(pos.astype(jnp.float32))
    loss = jnp.sum(sigmoid_focal_loss(cls_logits, cls_t, alpha, gamma) * cls_w[..., None])
    return loss / num_pos, num_pos, pos
