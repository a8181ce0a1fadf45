"""Object detection foundations (Ren et al. 2015 Faster R-CNN; Liu et al. 2016 SSD; Lin et al. 2017 FPN).

One module per concern: ``boxes`` (formats, IoU, box deltas), ``anchors`` (anchors, FPN levels, SSD
default boxes), ``nms`` (static-shape NMS), ``assign`` (matching, sampling, regression targets),
``data`` (the offline ``mnist_det`` dataset and its pipelines) and ``metrics`` (VOC / COCO AP).
"""

from research.detection.anchors import default_boxes, grid_anchors, multilevel_anchors
from research.detection.assign import assign_anchors, assign_proposals, match, sample_balanced
from research.detection.boxes import (
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    decode_boxes,
    encode_boxes,
    xyxy_to_cxcywh,
)
from research.detection.nms import batched_nms, nms

__all__ = [
    'assign_anchors',
    'assign_proposals',
    'batched_nms',
    'box_iou',
    'clip_boxes',
    'cxcywh_to_xyxy',
    'decode_boxes',
    'default_boxes',
    'encode_boxes',
    'grid_anchors',
    'match',
    'multilevel_anchors',
    'nms',
    'sample_balanced',
    'xyxy_to_cxcywh',
]
