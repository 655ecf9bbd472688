"""What every dense (one-stage) detector shares: the network (ResNet -> FPN ->
head), priors, initialisation, the frozen-parameter mask, loss normalisation
and post-processing. A method file (retinanet.py, fcos.py, atss.py, ...)
subclasses `DenseDetector` once and writes its `loss_fn` and `decode`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet import platform as platform_lib
from jaxdet.assign import targets
from jaxdet.core.types import Detections, Priors
from jaxdet.losses.focal import sigmoid_focal_loss
from jaxdet.models import torch_import
from jaxdet.models.backbones import resnet
from jaxdet.models.necks.fpn import FPN
from jaxdet.ops.postprocess import dense_postprocess


class DenseNet(nn.Module):
    """images [B, H, W, 3] -> head outputs (dict of [B, N, ...] arrays)."""

    backbone: nn.Module
    neck: nn.Module
    head: nn.Module

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        return self.head(self.neck(self.backbone(images)))


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
        gn_groups=b.get("gn_groups", 32),
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


def normalizer(x: jax.Array, minimum: float = 1.0) -> jax.Array:
    """max(sum over the global batch, minimum), without gradient (num_pos / avg_factor)."""
    return jax.lax.stop_gradient(jnp.maximum(jnp.sum(x), minimum))


class DenseDetector:
    """Base of the one-stage detectors. Subclasses set `head` and implement
    `make_priors`, `loss_fn` and `decode`."""

    def __init__(self, config: Any, head: nn.Module):
        self.config = config
        self.num_classes = int(config.data.num_classes)
        self.strides = tuple(int(s) for s in config.model.strides)
        backbone, neck = build_backbone_neck(config.model, platform_lib.from_config(config))
        self.net = DenseNet(backbone=backbone, neck=neck, head=head)

    # -- priors ---------------------------------------------------------------
    def make_priors(self, image_hw: tuple[int, int]) -> Priors:
        raise NotImplementedError  # implemented by each method (anchors or points)

    def priors_for(self, images: jax.Array) -> Priors:
        """Priors of the (static) padded input size, as jnp constants."""
        p = self.make_priors(tuple(images.shape[1:3]))
        return jax.tree_util.tree_map(jnp.asarray, p)

    # -- parameters -----------------------------------------------------------
    def init(self, rng: jax.Array, image_hw: tuple[int, int]) -> tuple[Any, dict]:
        """(params, det_state) for inputs of size image_hw."""
        dummy = jnp.zeros((1, *image_hw, 3), jnp.float32)
        params = jax.jit(self.net.init)(rng, dummy)["params"]
        path = self.config.model.get("pretrained", "")
        if path:
            params = dict(params)
            imported = torch_import.resnet_params_from_torch(
                torch_import.load_npz(path), params["backbone"]
            )
            params["backbone"] = jax.tree_util.tree_map(jnp.asarray, imported)
        return params, self.init_state()

    def init_state(self) -> dict:
        """Detector-owned non-trainable state (none for the baselines)."""
        return {}

    def trainable_mask(self, params: Any) -> Any:
        b = self.config.model.backbone
        return resnet.frozen_param_mask(params, b.frozen_stages, b.norm, prefix="backbone")

    def apply(self, params: Any, images: jax.Array) -> dict[str, jax.Array]:
        return self.net.apply({"params": params}, images)

    # -- inference ------------------------------------------------------------
    def decode(self, outputs: dict, priors: Priors) -> tuple[jax.Array, jax.Array, Any]:
        """Per image: outputs [N, ...] -> (boxes [N, 4], scores [N, C], factors [N] | None)."""
        raise NotImplementedError  # implemented by each method

    def predict(self, params: Any, images: jax.Array, image_hw: jax.Array) -> Detections:
        """images [B, H, W, 3], image_hw [B, 2] -> Detections with [B, max_det, ...] leaves."""
        outputs = self.apply(params, images)
        priors = self.priors_for(images)
        t = self.config.test

        def one(out, hw):
            boxes, scores, factors = self.decode(out, priors)
            return dense_postprocess(
                boxes,
                scores,
                priors.level_sizes,
                hw,
                score_thr=t.score_thr,
                pre_nms_topk=t.pre_nms_topk,
                iou_threshold=t.nms_iou,
                max_det=t.max_det,
                score_factors=factors,
            )

        return jax.vmap(one)(outputs, image_hw)


def focal_classification_loss(
    cls_logits: jax.Array, assignment: Any, gt: Any, num_classes: int, alpha: float, gamma: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sigmoid focal loss over all non-ignored priors of the batch / global num_pos.

    cls_logits [B, N, C]; assignment, gt batched. Returns (loss, num_pos, pos [B, N]).
    """
    pos = assignment.gt_index >= 0
    cls_t = jax.vmap(lambda a, g: targets.classification_targets(a, g.labels, num_classes))(
        assignment, gt
    )
    cls_w = (assignment.gt_index != -2).astype(jnp.float32)  # ignored priors: no loss
    num_pos = normalizer(pos.astype(jnp.float32))
    loss = jnp.sum(sigmoid_focal_loss(cls_logits, cls_t, alpha, gamma) * cls_w[..., None])
    return loss / num_pos, num_pos, pos
