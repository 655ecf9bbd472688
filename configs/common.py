"""Shared config pieces: every method config starts from `base()` and overrides fields.

Not an inheritance chain: one function that returns the full field set, so a
reader sees every knob in one place and `--config.a.b=...` validates against it.
"""

from __future__ import annotations

import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def data_shapes(image_size: int = 128, builder_config: str = "default"
                ) -> ml_collections.ConfigDict:
    """The built-in procedural `shapes` dataset (generated on first use).

    Every data field the input pipeline (`jaxdet.data.pipeline`) reads is here and in
    `data_coco`, with its default: this is the one place they are defined."""
    return ml_collections.ConfigDict(
        dict(
            name="shapes",
            builder_config=builder_config,
            data_dir=os.path.join(REPO, "data", "tfds"),
            coco_dir="",
            train_split="train",
            val_split="val",
            num_classes=3,
            image_size=(image_size, image_size),
            min_size=image_size,
            max_size=image_size,
            max_boxes=16,
            with_masks=False,
            mask_stride=4,  # instance masks stored at 1/mask_stride of the padded input
            flip_prob=0.5,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            num_workers=0,
            prefetch=2,  # batches read ahead in a thread (0: off)
            read_threads=0,  # grain reader threads (local files: 0 is cheapest)
            cache_mb=1024,  # decoded train images kept in memory (4000 x 48 KiB; 0: off)
        )
    )


def data_coco(coco_dir: str = "") -> ml_collections.ConfigDict:
    """COCO 2017 from a local COCO-format directory (instances_{train,val}2017.json).

    builder_config 'boxes' stores no masks (box detectors); 'default' stores them
    (set with_masks=True too for mask heads). Any COCO-format directory works: the
    number of classes is read from its annotations (a fixed num_classes must match)."""
    return ml_collections.ConfigDict(
        dict(
            name="coco_dir",
            builder_config="boxes",
            data_dir=os.path.join(REPO, "data", "tfds"),
            coco_dir=coco_dir,
            train_split="train",
            val_split="val",
            num_classes=0,  # 0: the annotations' category count (80 for COCO 2017)
            image_size=(800, 1344),
            min_size=800,
            max_size=1333,
            max_boxes=100,
            with_masks=False,
            mask_stride=4,  # instance masks stored at 1/mask_stride of the padded input
            flip_prob=0.5,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            num_workers=8,
            prefetch=2,
            read_threads=16,
            cache_mb=0,  # decoded train images kept in memory, MiB (COCO: too big)
        )
    )


def model_r50_fpn() -> ml_collections.ConfigDict:
    """ResNet-50 + FPN P3-P7 with 256 channels (the papers' R50-FPN)."""
    return ml_collections.ConfigDict(
        dict(
            backbone=dict(depth=50, width=64, norm="frozen_bn", frozen_stages=1, gn_groups=32,
                          out_levels=(3, 4, 5)),  # C3-C5 (two-stage: C2-C5)
            pretrained="",  # .npz of a torchvision ResNet state dict (jaxdet.models.torch_import)
            fpn=dict(channels=256, num_outs=5, extra_convs="on_output", relu_before_extra=True),
            head=dict(num_convs=4, channels=256, norm="gn", gn_groups=32),
            strides=(8, 16, 32, 64, 128),
            dtype="float32",
            # Bilinear-sampling back end of deformable convs and point sampling
            # (jaxdet.ops.pallas): 'auto' (XLA) | 'xla' | 'pallas'.
            sampling_backend="auto",
        )
    )


def model_tiny() -> ml_collections.ConfigDict:
    """A narrow ResNet-18 + FPN P3-P5 with 64 channels: trains on CPU in minutes."""
    return ml_collections.ConfigDict(
        dict(
            backbone=dict(depth=18, width=16, norm="gn", frozen_stages=-1, gn_groups=8,
                          out_levels=(3, 4, 5)),
            pretrained="",
            fpn=dict(channels=64, num_outs=3, extra_convs="on_output", relu_before_extra=True),
            head=dict(num_convs=2, channels=64, norm="gn", gn_groups=16),
            strides=(8, 16, 32),
            dtype="float32",
            # Bilinear-sampling back end of deformable convs and point sampling
            # (jaxdet.ops.pallas): 'auto' (XLA) | 'xla' | 'pallas'.
            sampling_backend="auto",
        )
    )


def schedule_1x() -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """mmdetection 1x: 12 epochs at batch 16, lr 0.01, decay at 8 and 11."""
    train = ml_collections.ConfigDict(
        dict(
            batch_size=16, epochs=12.0, num_steps=0, log_every=50, checkpoint_every=2000,
            keep_checkpoints=3, async_checkpoint=True, tensorboard=True,
        )
    )
    optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_steps=500,
            warmup_ratio=0.001, schedule="step", decay_epochs=(8, 11), decay_factor=0.1,
            grad_clip=0.0,
        )
    )
    return train, optimizer


def schedule_tiny(num_steps: int) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """A short CPU schedule: batch 16, cosine decay, short warm-up."""
    train = ml_collections.ConfigDict(
        dict(
            batch_size=16, epochs=0.0, num_steps=num_steps, log_every=100,
            checkpoint_every=1000, keep_checkpoints=2, async_checkpoint=True, tensorboard=True,
        )
    )
    optimizer = ml_collections.ConfigDict(
        dict(
            name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_steps=200,
            warmup_ratio=0.001, schedule="cosine", decay_epochs=(), decay_factor=0.1,
            grad_clip=10.0,
        )
    )
    return train, optimizer


def base(detector: str, data: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
         train: ml_collections.ConfigDict, optimizer: ml_collections.ConfigDict,
         ) -> ml_collections.ConfigDict:
    """The full field set; method configs add their `assigner` / `loss` / `test` fields."""
    config = ml_collections.ConfigDict()
    config.detector = detector
    config.seed = 0
    config.num_devices = 0  # 0 = all local devices
    config.data = data
    config.model = model
    config.train = train
    # Global batches sent to the devices ahead of the step (jaxdet.train.device_prefetch).
    config.train.device_prefetch = 1
    config.optimizer = optimizer
    config.eval = ml_collections.ConfigDict(dict(batch_size=train.batch_size))
    # metric: 'bbox' (COCO AP of the detections; plus 'segm' when they carry masks) |
    # 'proposal' (class-agnostic COCO AR@100/300/1000 of the detections as proposals).
    # mask_stride: Detections.masks are at 1/mask_stride of the padded input.
    config.test = ml_collections.ConfigDict(
        dict(score_thr=0.05, nms_iou=0.6, max_det=100, pre_nms_topk=1000, metric="bbox",
             mask_stride=1)
    )
    # What the model is compiled for (jaxdet.platform): 'auto' or a value each.
    # target: 'cpu' | 'gpu' | 'tpu'; cpu_conv: 'on' | 'off' (jaxdet.ops.conv's CPU
    # kernels); ynnpack: 'on' | 'off' (XLA:CPU's YNNPACK fusions).
    config.platform = ml_collections.ConfigDict(
        dict(target="auto", cpu_conv="auto", ynnpack="auto")
    )
    return config


def two_stage(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Makes `config` (a `base` config) a Faster R-CNN FPN: mmdetection's
    `faster-rcnn_r50_fpn_1x` fields (P2-P6 with a max-pooled P6, the RPN's anchors,
    assignment, sampling and proposals, the RoI heads'). Returns `config`."""
    m = config.model
    m.backbone.out_levels = (2, 3, 4, 5)
    m.fpn.num_outs, m.fpn.extra_convs, m.fpn.relu_before_extra = 5, "pool", False
    m.strides = (4, 8, 16, 32, 64)
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=8, scales_per_octave=1, ratios=(0.5, 1.0, 2.0),
             round_base=False, torchvision_grid=False)  # True: torchvision's anchors
    )
    config.rpn = ml_collections.ConfigDict(
        dict(
            pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, ignore_iof_thr=0.5,
            num_samples=256, pos_fraction=0.5, box_stds=(1.0, 1.0, 1.0, 1.0),
            train_pre_nms_topk=2000, train_post_nms_topk=1000,  # per level / per image
            test_pre_nms_topk=1000, test_post_nms_topk=1000,
            nms_iou=0.7, min_size=0.0, cls_weight=1.0, box_weight=1.0,
        )
    )
    config.roi = ml_collections.ConfigDict(
        dict(
            pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, ignore_iof_thr=0.5,
            add_gt=True, num_samples=512, pos_fraction=0.25,
            box_stds=(0.1, 0.1, 0.2, 0.2), class_agnostic=False,
            featmap_strides=(4, 8, 16, 32), box_size=7, mask_size=14, sampling_ratio=0,
            aligned=True, finest_scale=56.0,
            num_fcs=2, fc_channels=1024, mask_convs=4, mask_channels=256,
            cls_weight=1.0, box_weight=1.0, mask_weight=1.0,
            # The mask branch runs on the smallest of these many leading slots per image
            # that holds every image's positives (then on all num_samples x pos_fraction).
            mask_slot_buckets=(16, 32, 64),
        )
    )
    config.test.score_thr, config.test.nms_iou, config.test.max_det = 0.05, 0.5, 100
    config.test.pre_nms_topk = 2000  # (RoI, class) candidates kept for the class-aware NMS
    config.test.min_box_size = 0.0  # > 0: drop smaller clipped boxes (torchvision 1e-2)
    return config


# mmdetection's YOLOv3 COCO anchors, (w, h) per level in stride order (8, 16, 32).
YOLO_COCO_ANCHORS = (((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)),
                     ((116, 90), (156, 198), (373, 326)))


def model_darknet53() -> ml_collections.ConfigDict:
    """Darknet-53 + YOLOv3 neck and head (mmdetection's yolov3_d53), lists in stride order.

    norm: mmdetection trains BN with batch statistics, which jaxdet does not offer; GN
    (groups of 32) stands in."""
    return ml_collections.ConfigDict(
        dict(
            backbone=dict(width=32, blocks=(1, 2, 8, 8, 4), norm="gn", gn_groups=32),
            neck=dict(channels=(128, 256, 512)),
            head=dict(channels=(256, 512, 1024)),
            strides=(8, 16, 32),
            dtype="float32",
        )
    )


def model_darknet_tiny() -> ml_collections.ConfigDict:
    """A narrow, shallow Darknet (width 8, blocks 1, 1, 2, 2, 1) + YOLOv3 neck and head."""
    return ml_collections.ConfigDict(
        dict(
            backbone=dict(width=8, blocks=(1, 1, 2, 2, 1), norm="gn", gn_groups=8),
            neck=dict(channels=(32, 64, 128)),
            head=dict(channels=(64, 128, 256)),
            strides=(8, 16, 32),
            dtype="float32",
        )
    )


def yolo(config: ml_collections.ConfigDict, base_sizes) -> ml_collections.ConfigDict:
    """Adds YOLOv3's groups to `config` (mmdetection's yolov3_d53 train / test cfg):
    anchors, the grid assigner, the loss normalisation and the test thresholds."""
    config.anchor = ml_collections.ConfigDict(dict(base_sizes=base_sizes))
    # name: 'grid' (mmdetection's GridAssigner) | 'darknet' (best shape-IoU anchor,
    # predictions with IoU > ignore_thr ignored).
    config.assigner = ml_collections.ConfigDict(
        dict(name="grid", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.0,
             ignore_iof_thr=0.0, ignore_thr=0.5)
    )
    # The summed losses are divided by batch_size / images_per_sum (mmdetection: the
    # sum over each GPU's 8 images).
    config.loss = ml_collections.ConfigDict(dict(images_per_sum=8))
    config.test.score_thr, config.test.nms_iou, config.test.max_det = 0.05, 0.45, 100
    config.test.pre_nms_topk = 1000
    config.test.conf_thr = 0.005
    return config


def aligndet(config: ml_collections.ConfigDict, anchor_scale: float = 8.0
             ) -> ml_collections.ConfigDict:
    """AlignDet's fields: 1 square anchor of side anchor_scale x stride per location;
    RoIConv on (grid 'bins'); delta-xywh stds (0.1, 0.1, 0.2, 0.2) for the first stage and
    (0.05, 0.05, 0.1, 0.1) for the second; first stage ATSS (topk 9), second stage max-IoU
    0.5 / 0.4 on the refined boxes; focal 0.25 / 2 and GIoU (weight 2.0) in both stages;
    test NMS 0.5."""
    config.anchor = ml_collections.ConfigDict(
        dict(octave_base_scale=anchor_scale, scales_per_octave=1, ratios=(1.0,))
    )
    config.aligndet = ml_collections.ConfigDict(
        dict(roi_conv=True, grid="bins", init_box_stds=(0.1, 0.1, 0.2, 0.2),
             box_stds=(0.05, 0.05, 0.1, 0.1))
    )
    config.assigner = ml_collections.ConfigDict(
        dict(name="atss", topk=9, pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0,
             ignore_iof_thr=0.5)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, box_weight=2.0, init_weight=1.0,
             prior_prob=0.01)
    )
    config.test.nms_iou = 0.5
    return config


def reppoints(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """RepPoints' fields (mmdetection's reppoints-moment): 9 points, gradient_mul 0.1,
    point_base_scale 4; init stage PointAssigner(scale 4, pos_num 1), refine stage max-IoU
    0.5 / 0.4 on pseudo-boxes; focal 0.25 / 2, SmoothL1 beta 0.11 (init 0.5, refine 1.0);
    test NMS 0.5. `use_grid_points` (False): the box representation (with transform
    'minmax'; assigner.name 'max_iou' for the box-anchor variant)."""
    config.reppoints = ml_collections.ConfigDict(
        dict(transform="moment", num_points=9, gradient_mul=0.1, point_base_scale=4.0,
             moment_mul=0.01, use_grid_points=False)
    )
    config.assigner = ml_collections.ConfigDict(
        dict(name="point", scale=4.0, pos_num=1, pos_iou_thr=0.5, neg_iou_thr=0.4,
             min_pos_iou=0.0, ignore_iof_thr=0.5)
    )
    config.loss = ml_collections.ConfigDict(
        dict(focal_alpha=0.25, focal_gamma=2.0, smooth_l1_beta=0.11, init_weight=0.5,
             refine_weight=1.0)
    )
    config.test.nms_iou = 0.5
    return config
