"""NumPy re-implementations of mmdetection's assigners, for tests and benchmarks.

Each function follows the mmdetection code line by line on one image (GT rows
compacted as mmdetection sees them: real GTs and ignore boxes as two lists),
in float32, and returns jaxdet's convention: `(gt_index [N] int32, quality [N]
float32)` with -1 background, -2 ignored, k >= 0 = row k of the padded input.

jaxdet's documented differences from mmdetection are applied here too:
no valid GT -> -1 / -2 (mmdetection: all negative); `ignore_iof_thr` default
0.5; FCOS ignore regions (points inside -> -2 unless positive); quality = IoU
with the matched GT (1 for FCOS positives).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
EPS = F32(1e-6)


def bbox_overlaps(b1: np.ndarray, b2: np.ndarray, mode: str = "iou") -> np.ndarray:
    """mmdetection's `bbox_overlaps(b1, b2, mode)` -> [n1, n2] float32."""
    b1 = np.asarray(b1, F32)
    b2 = np.asarray(b2, F32)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, F32(0), None)
    overlap = wh[..., 0] * wh[..., 1]
    if mode == "iou":
        union = area1[:, None] + area2[None, :] - overlap
    else:
        union = np.broadcast_to(area1[:, None], overlap.shape)
    return overlap / np.maximum(union, EPS)


def _split(boxes, valid, ignore):
    boxes = np.asarray(boxes, F32)
    valid = np.asarray(valid, bool)
    ignore = np.asarray(ignore, bool)
    rows = np.nonzero(valid & ~ignore)[0]
    return boxes[rows], rows, boxes[valid & ignore]


def _ignored_by_iof(priors, ignore_boxes, thr):
    if thr > 0 and len(ignore_boxes) and len(priors):
        return bbox_overlaps(priors, ignore_boxes, "iof").max(axis=1) > thr
    return np.zeros(len(priors), bool)


def _to_jaxdet(gt_inds, rows, quality):
    """mmdetection gt_inds (0 neg, -1 ignore, k+1) -> jaxdet gt_index, quality."""
    out = np.where(gt_inds > 0, rows[np.maximum(gt_inds - 1, 0)], np.where(gt_inds == 0, -1, -2))
    return out.astype(np.int32), np.where(out >= 0, quality, 0).astype(F32)


def max_iou(
    priors,
    boxes,
    valid,
    ignore,
    *,
    pos_iou_thr=0.5,
    neg_iou_thr=0.4,
    min_pos_iou=0.0,
    gt_max_assign_all=True,
    match_low_quality=True,
    ignore_iof_thr=0.5,
):
    """mmdetection `MaxIoUAssigner.assign` + `assign_wrt_overlaps`."""
    priors = np.asarray(priors, F32)
    gts, rows, ignore_boxes = _split(boxes, valid, ignore)
    n = len(priors)
    ignored = _ignored_by_iof(priors, ignore_boxes, ignore_iof_thr)
    if len(gts) == 0:
        return np.where(ignored, -2, -1).astype(np.int32), np.zeros(n, F32)
    overlaps = bbox_overlaps(gts, priors)  # [G, N]
    overlaps[:, ignored] = -1
    assigned = np.full(n, -1, np.int64)
    max_ov, argmax_ov = overlaps.max(axis=0), overlaps.argmax(axis=0)
    gt_max, gt_argmax = overlaps.max(axis=1), overlaps.argmax(axis=1)
    if isinstance(neg_iou_thr, tuple | list):
        assigned[(max_ov >= neg_iou_thr[0]) & (max_ov < neg_iou_thr[1])] = 0
    else:
        assigned[(max_ov >= 0) & (max_ov < neg_iou_thr)] = 0
    pos = max_ov >= pos_iou_thr
    assigned[pos] = argmax_ov[pos] + 1
    if match_low_quality:
        for i in range(len(gts)):
            if gt_max[i] >= min_pos_iou:
                if gt_max_assign_all:
                    assigned[overlaps[i] == gt_max[i]] = i + 1
                else:
                    assigned[gt_argmax[i]] = i + 1
    quality = overlaps[np.maximum(assigned - 1, 0), np.arange(n)]
    return _to_jaxdet(assigned, rows, quality)


def topk_smallest(d: np.ndarray, k: int) -> np.ndarray:
    """Indices [k, M] of the k smallest entries of each column of d [n, M]; ties go to
    the lower index (a stable sort's order). Returned in increasing index order."""
    kth = np.partition(d, k - 1, axis=0)[k - 1]
    less = d < kth
    eq = d == kth
    sel = less | (eq & (np.cumsum(eq, axis=0) <= k - less.sum(axis=0)))
    cols, idx = np.nonzero(sel.T)
    return idx.reshape(d.shape[1], k).T


def atss(priors, level_sizes, boxes, valid, ignore, *, topk=9, ignore_iof_thr=0.5):
    """mmdetection `ATSSAssigner.assign` (alpha=None)."""
    inf = F32(100000000)
    priors = np.asarray(priors, F32)
    gts, rows, ignore_boxes = _split(boxes, valid, ignore)
    n, g = len(priors), len(gts)
    ignored = _ignored_by_iof(priors, ignore_boxes, ignore_iof_thr)
    if g == 0:
        return np.where(ignored, -2, -1).astype(np.int32), np.zeros(n, F32)
    overlaps = bbox_overlaps(priors, gts)  # [N, G]
    assigned = np.zeros(n, np.int64)
    pcx = (priors[:, 0] + priors[:, 2]) / F32(2.0)
    pcy = (priors[:, 1] + priors[:, 3]) / F32(2.0)
    gcx = (gts[:, 0] + gts[:, 2]) / F32(2.0)
    gcy = (gts[:, 1] + gts[:, 3]) / F32(2.0)
    dx = pcx[:, None] - gcx[None, :]
    dy = pcy[:, None] - gcy[None, :]
    distances = np.sqrt(dx * dx + dy * dy)  # [N, G]
    distances[ignored, :] = inf
    assigned[ignored] = -1
    cands, start = [], 0
    for size in level_sizes:
        cands.append(topk_smallest(distances[start : start + size], min(topk, size)) + start)
        start += size
    cand = np.concatenate(cands, axis=0)  # [K, G]
    cand_ov = overlaps[cand, np.arange(g)]
    thr = cand_ov.mean(axis=0) + cand_ov.std(axis=0, ddof=1)
    is_pos = cand_ov >= thr[None, :]
    ccx, ccy = pcx[cand], pcy[cand]
    l_ = ccx - gts[:, 0]
    t_ = ccy - gts[:, 1]
    r_ = gts[:, 2] - ccx
    b_ = gts[:, 3] - ccy
    is_pos &= np.stack([l_, t_, r_, b_], axis=1).min(axis=1) > 0.01
    ov_inf = np.full((n, g), -inf, F32)
    gi = np.broadcast_to(np.arange(g), cand.shape)
    ov_inf[cand[is_pos], gi[is_pos]] = overlaps[cand[is_pos], gi[is_pos]]
    max_ov, argmax_ov = ov_inf.max(axis=1), ov_inf.argmax(axis=1)
    hit = max_ov != -inf
    assigned[hit] = argmax_ov[hit] + 1
    return _to_jaxdet(assigned, rows, max_ov)


def fcos(
    points,
    strides,
    level_sizes,
    boxes,
    valid,
    ignore,
    *,
    regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)),
    center_sampling=True,
    center_sample_radius=1.5,
    use_ignore=True,
):
    """mmdetection `FCOSHead._get_targets_single`, plus jaxdet's ignore regions."""
    inf = F32(1e8)
    points = np.asarray(points, F32)
    strides = np.asarray(strides, F32)
    gts, rows, ignore_boxes = _split(boxes, valid, ignore)
    n, g = len(points), len(gts)
    xs, ys = points[:, 0][:, None], points[:, 1][:, None]
    ignored = np.zeros(n, bool)
    if use_ignore and len(ignore_boxes):
        ib = ignore_boxes[None]
        inside = np.stack(
            [xs - ib[..., 0], ys - ib[..., 1], ib[..., 2] - xs, ib[..., 3] - ys], -1
        ).min(-1)
        ignored = (inside > 0).any(axis=1)
    if g == 0:
        return np.where(ignored, -2, -1).astype(np.int32), np.zeros(n, F32)
    ranges = np.repeat(np.asarray(regress_ranges, F32), level_sizes, axis=0)
    areas = np.repeat(((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]))[None], n, axis=0)
    gb = gts[None]
    left, right = xs - gb[..., 0], gb[..., 2] - xs
    top, bottom = ys - gb[..., 1], gb[..., 3] - ys
    bbox_targets = np.stack((left, top, right, bottom), -1)
    if center_sampling:
        cx = (gb[..., 0] + gb[..., 2]) / 2
        cy = (gb[..., 1] + gb[..., 3]) / 2
        stride = (strides * F32(center_sample_radius))[:, None]
        x_mins, y_mins, x_maxs, y_maxs = cx - stride, cy - stride, cx + stride, cy + stride
        c0 = np.where(x_mins > gb[..., 0], x_mins, gb[..., 0])
        c1 = np.where(y_mins > gb[..., 1], y_mins, gb[..., 1])
        c2 = np.where(x_maxs > gb[..., 2], gb[..., 2], x_maxs)
        c3 = np.where(y_maxs > gb[..., 3], gb[..., 3], y_maxs)
        center_bbox = np.stack((xs - c0, ys - c1, c2 - xs, c3 - ys), -1)
        inside_gt = center_bbox.min(-1) > 0
    else:
        inside_gt = bbox_targets.min(-1) > 0
    max_reg = bbox_targets.max(-1)
    in_range = (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])
    areas[~inside_gt] = inf
    areas[~in_range] = inf
    min_area, min_inds = areas.min(axis=1), areas.argmin(axis=1)
    pos = min_area != inf
    out = np.where(pos, rows[min_inds], np.where(ignored, -2, -1)).astype(np.int32)
    return out, pos.astype(F32)


def random_gt(rng, batch, m, image_hw=(128, 160), *, p_valid=0.8, p_ignore=0.15, max_wh=None):
    """Random padded GT as numpy arrays (boxes [B, M, 4], labels, valid, ignore).

    Padding rows sit anywhere (not only at the end) and hold NaN, so a result
    that depends on them shows up. Image 0 has no valid row; image 1 has no
    padding and no ignore row.
    """
    h, w = image_hw
    max_wh = max_wh or 0.8 * min(h, w)
    xy = rng.uniform(-0.1, 1.0, (batch, m, 2)) * np.array([w, h])
    wh = rng.uniform(2.0, max_wh, (batch, m, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(F32)
    valid = rng.uniform(size=(batch, m)) < p_valid
    ignore = rng.uniform(size=(batch, m)) < p_ignore
    if batch > 1:
        valid[0] = False
        valid[1] = True
        ignore[1] = False
    labels = rng.integers(0, 5, (batch, m)).astype(np.int32)
    boxes[~valid] = np.nan
    labels[~valid] = -7
    return boxes, labels, valid, ignore


def hambox(
    priors,
    boxes,
    valid,
    ignore,
    pred_boxes,
    *,
    pos_iou_thr=0.35,
    k=5,
    iou_thr=0.5,
    count_matched=True,
    best_anchor_all_ties=True,
    ignore_iof_thr=0.5,
):
    """HAMBox's two stages by the paper's definition, GT by GT:
    (gt_index [N], quality [N], compensated [N])."""
    gi, _ = max_iou(priors, boxes, valid, ignore, pos_iou_thr=pos_iou_thr,
                    neg_iou_thr=pos_iou_thr, min_pos_iou=0.0,
                    gt_max_assign_all=best_anchor_all_ties,
                    ignore_iof_thr=ignore_iof_thr)
    n = len(gi)
    quality = np.where(gi >= 0, 1.0, 0.0).astype(F32)
    comp = np.zeros(n, bool)
    gts, rows, _ = _split(boxes, valid, ignore)
    if len(gts) == 0 or k <= 0:
        return gi, quality, comp
    iou = bbox_overlaps(gts, pred_boxes)  # [G, N]
    free = np.nonzero(gi == -1)[0]
    best = {int(a): int(np.argmax(iou[:, a])) for a in free}  # first max = lowest row
    out = gi.copy()
    for g in range(len(gts)):
        budget = max(k - int(np.sum(gi == rows[g])), 0) if count_matched else k
        cands = [a for a in free if best[a] == g and iou[g, a] >= iou_thr]
        cands.sort(key=lambda a: (-iou[g, a], a))
        for a in cands[:budget]:
            out[a], quality[a], comp[a] = rows[g], iou[g, a], True
    return out, quality, comp


def yolo_grid(priors, feature_shapes, strides, num_base, boxes, valid, ignore, *,
              pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.0):
    """mmdetection `YOLOV3Head.responsible_flags` + `GridAssigner.assign` (gt_max_assign_all),
    per-level lists in the priors' order; a centre on the right / bottom border is clamped
    to the last cell (mmdetection's index would leave the grid)."""
    priors = np.asarray(priors, F32)
    gts, rows, _ = _split(boxes, valid, ignore)
    n = len(priors)
    if len(gts) == 0:
        return np.full(n, -1, np.int32), np.zeros(n, F32)
    flags = []
    for (h, w), s in zip(feature_shapes, strides):
        cx = (gts[:, 0] + gts[:, 2]) * F32(0.5)
        cy = (gts[:, 1] + gts[:, 3]) * F32(0.5)
        gx = np.clip(np.floor(cx / F32(s)).astype(np.int64), 0, w - 1)
        gy = np.clip(np.floor(cy / F32(s)).astype(np.int64), 0, h - 1)
        grid = np.zeros(h * w, bool)
        grid[gy * w + gx] = True
        flags.append(np.repeat(grid, num_base))
    resp = np.concatenate(flags)
    overlaps = bbox_overlaps(gts, priors)  # [G, N]
    assigned = np.full(n, -1, np.int64)
    max_ov = overlaps.max(axis=0)
    assigned[(max_ov >= 0) & (max_ov <= neg_iou_thr)] = 0
    overlaps[:, ~resp] = -1
    max_ov, argmax_ov = overlaps.max(axis=0), overlaps.argmax(axis=0)
    gt_max = overlaps.max(axis=1)
    pos = (max_ov > pos_iou_thr) & resp
    assigned[pos] = argmax_ov[pos] + 1
    for i in range(len(gts)):
        if gt_max[i] > min_pos_iou:
            assigned[(overlaps[i] == gt_max[i]) & resp] = i + 1
    return _to_jaxdet(assigned, rows, np.ones(n, F32))
