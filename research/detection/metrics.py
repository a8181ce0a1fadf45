"""Detection metrics: PASCAL VOC AP@0.5 (Everingham et al. 2010; 11-point as VOC2007, all-point as
VOC2010+) and COCO AP@[.5:.95] through ``pycocotools`` (Lin et al. 2014), per class and averaged, of
boxes (``iou_type='bbox'``) or instance masks (``iou_type='segm'``, Mask R-CNN's mask AP).

Inputs are per-image numpy records (boxes xyxy in pixels):
predictions ``{'boxes' [K, 4], 'scores' [K], 'labels' [K]}``, ground truth ``{'boxes' [M, 4],
'labels' [M]}`` (+ optional VOC ``'difficult' [M]``); for mask AP both also hold ``'masks'``: binary
full-image masks [K, H, W] / [M, H, W] or their COCO RLEs (:func:`encode_masks`).
``DetectionEvaluator`` collects them from padded, masked batches (the eval pipeline's format, masks
RLE-encoded as they come) and computes all of them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

__all__ = ['DetectionEvaluator', 'coco_evaluate', 'encode_masks', 'voc_ap', 'voc_evaluate']


def _iou_np(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.where(union > 0, inter / np.where(union > 0, union - inter, 1), 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a precision/recall curve (detections by decreasing score).

    11-point (VOC2007): mean over t in {0, 0.1, ..., 1} of the max precision at recall >= t.
    All-point (VOC2010+): area under the monotone (right-to-left max) precision envelope.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        return float(
            np.mean(
                [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(11) / 10]
            )
        )
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _class_ids(predictions, ground_truth, class_ids):
    if class_ids is not None:
        return [int(c) for c in class_ids]
    labels = [np.asarray(g['labels']).ravel() for g in ground_truth]
    labels += [np.asarray(p['labels']).ravel() for p in predictions]
    return sorted({int(c) for c in np.concatenate(labels)}) if labels else []


def voc_evaluate(
    predictions: Sequence[dict],
    ground_truth: Sequence[dict],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    class_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """VOC AP per class (``ap/<c>``) and ``map`` over the classes with ground truth.

    Detections of a class, over all images by decreasing score, are true positives when their best
    IoU with a same-image, same-class ground truth is >= ``iou_threshold`` and that box is not yet
    taken; otherwise false positives (duplicates included). Matches to ``difficult`` boxes count as
    neither, and difficult boxes are not in the recall denominator. A class without ground truth
    gets NaN (excluded from the mean).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f'{len(predictions)} prediction records for {len(ground_truth)} images')
    out, aps = {}, []
    for c in _class_ids(predictions, ground_truth, class_ids):
        gts, npos = [], 0
        for g in ground_truth:
            sel = np.asarray(g['labels']).ravel() == c
            diff = np.asarray(g.get('difficult', np.zeros(sel.shape, bool)), bool).ravel()[sel]
            gts.append(
                (np.asarray(g['boxes'], np.float64).reshape(-1, 4)[sel], diff, np.zeros(sel.sum(), bool))
            )
            npos += int((~diff).sum())
        dets = []
        for i, p in enumerate(predictions):
            sel = np.asarray(p['labels']).ravel() == c
            boxes = np.asarray(p['boxes'], np.float64).reshape(-1, 4)[sel]
            scores = np.asarray(p['scores'], np.float64).ravel()[sel]
            dets += [(s, i, b) for s, b in zip(scores, boxes)]
        order = np.argsort([-d[0] for d in dets], kind='stable')
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for r, j in enumerate(order):
            _, i, box = dets[j]
            gboxes, diff, taken = gts[i]
            if len(gboxes):
                ious = _iou_np(box, gboxes)
                k = int(np.argmax(ious))
                if ious[k] >= iou_threshold:
                    if diff[k]:
                        continue
                    if not taken[k]:
                        tp[r], taken[k] = 1, True
                        continue
            fp[r] = 1
        if npos == 0:
            out[f'ap/{c}'] = float('nan')
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap = voc_ap(recall, precision, use_07_metric) if len(dets) else 0.0
        out[f'ap/{c}'] = ap
        aps.append(ap)
    out['map'] = float(np.mean(aps)) if aps else float('nan')
    return out


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)


def encode_masks(masks) -> list[dict]:
    """COCO compressed RLEs (``pycocotools.mask.encode``) of binary masks ``[N, H, W]`` (bool or
    integer; threshold probabilities first), one ``{'size': [H, W], 'counts': bytes}`` per mask."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f'masks must be [N, H, W], got shape {masks.shape}')
    if not (masks.dtype == bool or np.issubdtype(masks.dtype, np.integer)):
        raise TypeError(f'masks must be binary (bool or integer), got {masks.dtype}: threshold them first')
    if not len(masks):
        return []
    return mask_utils.encode(np.asfortranarray(np.moveaxis(masks != 0, 0, -1).astype(np.uint8)))


def _rles(masks, n: int) -> list[dict]:
    rles = list(masks) if isinstance(masks, (list, tuple)) else encode_masks(masks)
    if len(rles) != n:
        raise ValueError(f'{len(rles)} masks for {n} boxes')
    return rles


_COCO_STATS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def coco_evaluate(
    predictions: Sequence[dict],
    ground_truth: Sequence[dict],
    class_ids: Sequence[int] | None = None,
    max_dets: int = 100,
    iou_type: str = 'bbox',
) -> dict[str, float]:
    """COCO metrics with ``pycocotools.cocoeval.COCOeval``: the 12 summary numbers (``AP`` =
    AP@[.5:.95], ``AP50``, ``AP75``, ``APs/m/l``, ``AR1/10/100``, ``ARs/m/l``; -1 where undefined)
    and ``ap/<c>`` (AP@[.5:.95] of class c, NaN without ground truth). ``max_dets`` replaces 100
    as the largest detections-per-image limit.

    ``iou_type='bbox'``: box AP. ``iou_type='segm'``: mask AP; every record then needs ``'masks'``
    (binary [K, H, W] or RLEs, one per box), matched by mask IoU, with mask areas for the size ranges
    (as torchvision's COCO evaluation of Mask R-CNN)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ('bbox', 'segm'):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if len(predictions) != len(ground_truth):
        raise ValueError(f'{len(predictions)} prediction records for {len(ground_truth)} images')
    segm = iou_type == 'segm'
    if segm and not all('masks' in r for r in (*predictions, *ground_truth)):
        raise ValueError("iou_type='segm' needs 'masks' in every prediction and ground-truth record")
    if segm:
        from pycocotools import mask as mask_utils
    classes = _class_ids(predictions, ground_truth, class_ids)
    images, anns, dets = [], [], []
    for i, (p, g) in enumerate(zip(predictions, ground_truth)):
        image = {'id': i + 1}
        gboxes, glabels = _xywh(g['boxes']), np.asarray(g['labels']).ravel()
        pboxes, plabels = _xywh(p['boxes']), np.asarray(p['labels']).ravel()
        pscores = np.asarray(p['scores']).ravel()
        if segm:
            grles, prles = _rles(g['masks'], len(glabels)), _rles(p['masks'], len(plabels))
            size = next((r['size'] for r in (*grles, *prles)), [0, 0])
            image.update(height=int(size[0]), width=int(size[1]))
        images.append(image)
        for j, (box, lab) in enumerate(zip(gboxes, glabels)):
            ann = {
                'id': len(anns) + 1,
                'image_id': i + 1,
                'category_id': int(lab),
                'bbox': [float(v) for v in box],
                'area': float(box[2] * box[3]),
                'iscrowd': 0,
            }
            if segm:
                ann.update(segmentation=grles[j], area=float(mask_utils.area(grles[j])))
            anns.append(ann)
        for j, (box, s, lab) in enumerate(zip(pboxes, pscores, plabels)):
            det = {'image_id': i + 1, 'category_id': int(lab), 'score': float(s)}
            # segm results carry no 'bbox' (pycocotools then takes the area from the mask, not the box)
            det.update({'segmentation': prles[j]} if segm else {'bbox': [float(v) for v in box]})
            dets.append(det)
    nan = float('nan')
    if not dets or not anns:
        out = dict.fromkeys(_COCO_STATS, 0.0 if anns else nan)
        out.update({f'ap/{c}': (0.0 if any(a['category_id'] == c for a in anns) else nan) for c in classes})
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {'images': images, 'annotations': anns, 'categories': [{'id': c} for c in classes]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iou_type)
        ev.params.catIds = classes
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {k: float(v) for k, v in zip(_COCO_STATS, ev.stats)}
    precision = ev.eval['precision']  # [T, R, K, A, M]
    for k, c in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        out[f'ap/{c}'] = float(p[p > -1].mean()) if (p > -1).any() else nan
    return out


class DetectionEvaluator:
    """Accumulates padded, masked batches; ``voc()`` / ``coco()`` evaluate everything added.

    ``add(pred_boxes [B, K, 4], pred_scores [B, K], pred_labels [B, K], pred_valid [B, K], gt_boxes
    [B, M, 4], gt_labels [B, M], gt_valid [B, M], example_mask [B] | None, pred_masks [B, K, H, W] |
    None, gt_masks [B, M, H, W] | None)``; padded examples (``example_mask`` False) are skipped.
    Masks (binary, full image; both or neither, in every batch) are kept as COCO RLEs of the valid
    detections / objects only, for ``coco(iou_type='segm')`` (mask AP).
    """

    def __init__(self, class_ids: Sequence[int] | None = None):
        self.class_ids = None if class_ids is None else [int(c) for c in class_ids]
        self.predictions: list[dict] = []
        self.ground_truth: list[dict] = []
        self.has_masks: bool | None = None  # set by the first add

    def add(
        self,
        pred_boxes,
        pred_scores,
        pred_labels,
        pred_valid,
        gt_boxes,
        gt_labels,
        gt_valid,
        example_mask=None,
        pred_masks=None,
        gt_masks=None,
    ) -> None:
        if (pred_masks is None) != (gt_masks is None):
            raise ValueError('pass both pred_masks and gt_masks, or neither')
        with_masks = pred_masks is not None
        if self.has_masks is not None and with_masks != self.has_masks:
            raise ValueError('every batch needs masks once one had them (and none once one had none)')
        self.has_masks = with_masks
        arrs = [
            np.asarray(a)
            for a in (pred_boxes, pred_scores, pred_labels, pred_valid, gt_boxes, gt_labels, gt_valid)
        ]
        pb, ps, pl, pv, gb, gl, gv = arrs
        mask = np.ones(len(pb), bool) if example_mask is None else np.asarray(example_mask, bool)
        for i in np.nonzero(mask)[0]:
            v, w = pv[i].astype(bool), gv[i].astype(bool)
            pred = {'boxes': pb[i][v], 'scores': ps[i][v], 'labels': pl[i][v]}
            gt = {'boxes': gb[i][w], 'labels': gl[i][w]}
            if with_masks:
                pred['masks'] = encode_masks(np.asarray(pred_masks[i])[v])
                gt['masks'] = encode_masks(np.asarray(gt_masks[i])[w])
            self.predictions.append(pred)
            self.ground_truth.append(gt)

    def voc(self, iou_threshold: float = 0.5, use_07_metric: bool = False) -> dict[str, float]:
        return voc_evaluate(self.predictions, self.ground_truth, iou_threshold, use_07_metric, self.class_ids)

    def coco(self, max_dets: int = 100, iou_type: str = 'bbox') -> dict[str, float]:
        """COCO box AP (``iou_type='bbox'``) or mask AP (``'segm'``, needs masks in ``add``)."""
        if iou_type == 'segm' and not self.has_masks:
            raise ValueError("coco(iou_type='segm') needs pred_masks and gt_masks in add()")
        return coco_evaluate(self.predictions, self.ground_truth, self.class_ids, max_dets, iou_type)
