"""research.detection.metrics: VOC AP (11-point, all-point) and COCO AP via pycocotools, by hand."""

import numpy as np
import pytest

from research.detection.metrics import DetectionEvaluator, coco_evaluate, encode_masks, voc_ap, voc_evaluate


def _gt():
    return [
        {'boxes': np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), 'labels': np.array([1, 1])},
        {'boxes': np.array([[5, 5, 25, 30]], np.float32), 'labels': np.array([2])},
    ]


def _perfect(gt):
    return [
        {'boxes': g['boxes'], 'scores': np.linspace(0.9, 0.5, len(g['labels'])), 'labels': g['labels']}
        for g in gt
    ]


def test_voc_ap_curve_hand_computation():
    # TP, FP, TP with 2 ground truths: recall .5 .5 1, precision 1 .5 .667.
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # Only half the objects ever found: 11-point gets 6/11 of the points at precision 1.
    assert voc_ap(np.array([0.5]), np.array([1.0]), True) == pytest.approx(6 / 11)
    assert voc_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)


def test_perfect_predictions_score_one():
    gt = _gt()
    for m in (voc_evaluate(_perfect(gt), gt), voc_evaluate(_perfect(gt), gt, use_07_metric=True)):
        assert m['map'] == pytest.approx(1.0) and m['ap/1'] == m['ap/2'] == pytest.approx(1.0)
    c = coco_evaluate(_perfect(gt), gt)
    assert (
        c['AP'] == pytest.approx(1.0) and c['AP50'] == pytest.approx(1.0) and c['ap/2'] == pytest.approx(1.0)
    )


def test_one_false_positive_at_rank_two():
    gt = [_gt()[0]]
    pred = [
        {
            'boxes': np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 40, 40]], np.float32),
            'scores': np.array([0.9, 0.8, 0.7]),
            'labels': np.array([1, 1, 1]),
        }
    ]
    assert voc_evaluate(pred, gt)['map'] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_evaluate(pred, gt, use_07_metric=True)['map'] == pytest.approx((6 + 5 * 2 / 3) / 11)
    # COCO: 101 recall points, 51 (r <= 0.5) at precision 1, 50 at 2/3; exact boxes -> every IoU threshold.
    c = coco_evaluate(pred, gt)
    assert c['AP'] == pytest.approx((51 + 50 * 2 / 3) / 101) and c['AP75'] == pytest.approx(c['AP'])
    # The false positive last instead: no precision lost.
    pred[0]['scores'] = np.array([0.9, 0.1, 0.7])
    assert voc_evaluate(pred, gt)['map'] == pytest.approx(1.0)
    assert coco_evaluate(pred, gt)['AP'] == pytest.approx(1.0)


def test_localisation_duplicates_difficult_and_classes():
    gt = _gt()
    pred = [
        {
            'boxes': np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 40, 34]], np.float32),
            'scores': np.array([0.9, 0.8, 0.7]),
            'labels': np.array([1, 1, 1]),
        },  # duplicate; IoU 0.7 box
        {'boxes': np.array([[5, 5, 25, 30]], np.float32), 'scores': np.array([0.6]), 'labels': np.array([3])},
    ]
    m = voc_evaluate(pred, gt)
    assert m['ap/1'] == pytest.approx(0.5 + 0.5 * 2 / 3)  # TP, FP (duplicate), TP
    assert m['ap/2'] == 0.0 and np.isnan(m['ap/3'])  # class 2 missed; class 3 has no ground truth
    assert m['map'] == pytest.approx((m['ap/1'] + 0.0) / 2)
    assert voc_evaluate(pred, gt, iou_threshold=0.75)['ap/1'] == pytest.approx(0.5)  # the 0.7 box fails
    # A difficult box is neither required nor penalised.
    gt_d = [dict(gt[0], difficult=np.array([False, True])), gt[1]]
    assert voc_evaluate(pred, gt_d)['ap/1'] == pytest.approx(1.0)
    c = coco_evaluate(pred, gt)
    assert c['AP50'] == pytest.approx(((51 + 50 * 2 / 3) / 101 + 0) / 2)
    # AP@[.5:.95] for class 1: the 0.7-IoU box is a TP at thresholds .5-.7 (5 of 10), FP above.
    hi = np.mean([1.0 if t <= 0.7 + 1e-9 else 0.0 for t in np.linspace(0.5, 0.95, 10)])
    ap1 = hi * (51 + 50 * 2 / 3) / 101 + (1 - hi) * 51 / 101
    assert c['ap/1'] == pytest.approx(ap1)


def test_evaluator_accumulates_masked_batches():
    gt = _gt()
    ev = DetectionEvaluator(class_ids=[1, 2])
    pb = np.zeros((3, 4, 4), np.float32)
    gb = np.zeros((3, 3, 4), np.float32)
    pl, gl = np.zeros((3, 4), int), np.zeros((3, 3), int)
    pv, gv = np.zeros((3, 4), bool), np.zeros((3, 3), bool)
    for i, g in enumerate(gt):
        n = len(g['labels'])
        pb[i, :n], gb[i, :n], pl[i, :n], gl[i, :n], pv[i, :n], gv[i, :n] = (
            g['boxes'],
            g['boxes'],
            g['labels'],
            g['labels'],
            True,
            True,
        )
    pb[2, 0], pl[2, 0], pv[2, 0] = [0, 0, 5, 5], 1, True  # a padded example with a "detection": skipped
    ev.add(pb, np.ones((3, 4)), pl, pv, gb, gl, gv, example_mask=np.array([True, True, False]))
    assert len(ev.predictions) == 2
    assert ev.voc()['map'] == pytest.approx(1.0) and ev.coco()['AP'] == pytest.approx(1.0)


def _rect_masks(boxes, size=48):
    """Binary [N, size, size] masks filling each (integer) box."""
    m = np.zeros((len(boxes), size, size), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, int)):
        m[k, y0:y1, x0:x1] = 1
    return m


def test_mask_ap_perfect_masks_score_one():
    gt = [dict(g, masks=_rect_masks(g['boxes'])) for g in _gt()]
    with pytest.raises(ValueError, match='masks'):  # predictions without masks
        coco_evaluate(_perfect(gt), gt, iou_type='segm')
    pred = [dict(p, masks=g['masks']) for p, g in zip(_perfect(gt), gt)]
    c = coco_evaluate(pred, gt, iou_type='segm')
    assert (
        c['AP'] == pytest.approx(1.0) and c['AP50'] == pytest.approx(1.0) and c['ap/2'] == pytest.approx(1.0)
    )
    # Masks given as RLEs (as the evaluator stores them) score the same.
    rle = [dict(p, masks=encode_masks(p['masks'])) for p in pred]
    assert coco_evaluate(rle, gt, iou_type='segm')['AP'] == pytest.approx(1.0)


def test_mask_ap_uses_mask_iou_not_box_iou():
    # One object: a stroke x 10..14, y 10..29 (100 px) with box (10, 10, 30, 30); the prediction has
    # the exact box but its mask is x 20..29 (200 px): box IoU 1, mask IoU 0.
    box = np.array([[10, 10, 30, 30]], np.float32)
    gt_mask = np.zeros((1, 48, 48), np.uint8)
    gt_mask[0, 10:30, 10:15] = 1
    pred_mask = np.zeros((1, 48, 48), bool)
    pred_mask[0, 10:30, 20:30] = True
    gt = [{'boxes': box, 'labels': np.array([1]), 'masks': gt_mask}]
    pred = [{'boxes': box, 'scores': np.array([0.9]), 'labels': np.array([1]), 'masks': pred_mask}]
    box_ap = coco_evaluate(pred, gt)
    assert box_ap['AP50'] == pytest.approx(1.0) and box_ap['AP'] == pytest.approx(1.0)
    segm = coco_evaluate(pred, gt, iou_type='segm')
    assert segm['AP50'] == 0.0 and segm['AP'] == 0.0
    # x 12..29: mask IoU 60 / (100 + 360 - 60) = 0.15, still a miss.
    pred_mask[0, 10:30, 12:30] = True
    assert coco_evaluate(pred, gt, iou_type='segm')['AP50'] == 0.0
    # x 10..16: mask IoU 100 / 140 = 0.714, a hit at IoU thresholds .5-.7 (5 of 10) only.
    pred_mask[0] = False
    pred_mask[0, 10:30, 10:17] = True
    segm = coco_evaluate(pred, gt, iou_type='segm')
    assert segm['AP50'] == pytest.approx(1.0) and segm['AP75'] == 0.0 and segm['AP'] == pytest.approx(0.5)


def test_evaluator_masks_skip_padding_and_are_rle():
    ev = DetectionEvaluator(class_ids=[1])
    b, k, s = 3, 2, 48
    box = [10, 10, 30, 30]
    boxes = np.zeros((b, k, 4), np.float32)
    boxes[:, 0] = box
    valid = np.zeros((b, k), bool)
    valid[:, 0] = True
    labels = np.ones((b, k), int)
    scores = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7]])
    gt_masks = np.zeros((b, k, s, s), np.uint8)
    gt_masks[:, 0] = _rect_masks([box])[0]
    pred_masks = gt_masks.astype(bool)
    pred_masks[0, 1, 0:5, 0:5] = True  # an invalid detection's mask: not kept
    pred_masks[1, 0] = False  # example 1: the right box, a wrong mask (IoU 0)
    pred_masks[1, 0, 0:5, 0:5] = True
    gt_masks[2, 0] = 0  # example 2 (padding): would be a mask false positive and a miss, if it counted
    ev.add(
        boxes,
        scores,
        labels,
        valid,
        boxes,
        labels,
        valid,
        np.array([True, True, False]),
        pred_masks=pred_masks,
        gt_masks=gt_masks,
    )
    assert ev.has_masks and len(ev.predictions) == len(ev.ground_truth) == 2
    assert all(isinstance(r, dict) and 'counts' in r for p in ev.predictions for r in p['masks'])
    assert [len(p['masks']) for p in ev.predictions] == [1, 1]  # valid detections only
    assert ev.coco()['AP50'] == pytest.approx(1.0)  # boxes: both right
    # Masks: TP (0.9), FP (0.8) for two objects -> precision 1 up to recall 0.5 (51 of 101 points).
    segm = ev.coco(iou_type='segm')
    assert segm['AP50'] == pytest.approx(51 / 101) and segm['AP'] == pytest.approx(51 / 101)
    with pytest.raises(ValueError, match='masks'):  # masks in every batch once given
        ev.add(boxes, scores, labels, valid, boxes, labels, valid)
    with pytest.raises(TypeError, match='threshold'):
        DetectionEvaluator().add(
            boxes,
            scores,
            labels,
            valid,
            boxes,
            labels,
            valid,
            pred_masks=pred_masks.astype(np.float32),
            gt_masks=gt_masks,
        )
    with pytest.raises(ValueError, match='segm'):
        DetectionEvaluator().coco(iou_type='segm')
