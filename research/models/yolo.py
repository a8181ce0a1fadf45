"""YOLO v1: Redmon, Divvala, Girshick, Farhadi 2016, "You Only Look Once: Unified, Real-Time Object Detection".

- Network (Sec. 2.1, Fig. 3): 24 convolutional layers (7x7/2 64, 2x2/2 max pool, 3x3 192, pool, 1x1 128,
  3x3 256, 1x1 256, 3x3 512, pool, 4 x [1x1 256, 3x3 512], 1x1 512, 3x3 1024, pool, 2 x [1x1 512, 3x3 1024],
  3x3 1024, 3x3/2 1024, 3x3 1024, 3x3 1024) and 2 fully connected layers (4096, then S x S x (5B + C)) on
  448x448 inputs, leaky ReLU 0.1 everywhere but the linear output (Sec. 2.2), dropout 0.5 after the first FC.
  ``yolov1``: S = 7, B = 2, C = 20 (``num_classes`` = 21 incl. a background slot that YOLO does not
  predict): a 7x7x30 output, 271,703,550 parameters (convs with biases, no BN).
- Output per cell: B x (x, y, sqrt(w), sqrt(h), confidence) then C conditional class probabilities.
  x, y are the box centre's offsets within the cell, w, h relative to the image; the network predicts the
  square roots (Sec. 2.2: "we predict the square root of the bounding box width and height"), so the
  decoded w = output^2.
- Loss (Sec. 2.2, Eq. 3), summed per image and averaged over the batch: the cell that holds an object's
  centre is responsible for it (one object per cell: the last one listed wins a shared cell), and within
  the cell the predictor of highest current IoU with it; lambda_coord (5) x squared error of x, y,
  sqrt w, sqrt h of responsible predictors; squared error of their confidence against the IoU
  (``rescore``; 1 otherwise); lambda_noobj (0.5) x squared confidence of all other predictors; squared
  error of the class probabilities of cells with an object (one-hot target).
- Detection (Sec. 2 "At test time"): class-specific confidence Pr(class_i | object) x confidence per box,
  then ``select_detections`` (threshold, class-wise NMS). Outputs are clipped to [0, 1] for the scores.

``yolov1_mnist``: a CPU-sized net for 128x128 mnist_det canvases, S = 8 (16 px cells), B = 2, 10 classes;
``yolov1_mnist_conv``: the same with BatchNorm and ``head='conv'`` (no fully connected layers).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.detection.boxes import box_iou
from research.detection.postprocess import select_detections
from research.layers.common import BatchNorm, FlaxConv, conv_general_dilated
from research.layers.pooling import max_pool

M = 'M'
#: Fig. 3: (filters, kernel, stride) per conv, 'M' = 2x2/2 max pool.
YOLOV1_CFG = (
    (64, 7, 2),
    M,
    (192, 3, 1),
    M,
    (128, 1, 1),
    (256, 3, 1),
    (256, 1, 1),
    (512, 3, 1),
    M,
    *((256, 1, 1), (512, 3, 1)) * 4,
    (512, 1, 1),
    (1024, 3, 1),
    M,
    *((512, 1, 1), (1024, 3, 1)) * 2,
    (1024, 3, 1),
    (1024, 3, 2),
    (1024, 3, 1),
    (1024, 3, 1),
)
#: CPU-sized: 128 -> 8x8 (4 pools), then a 1x1 reduction before the FC layers.
YOLOV1_MNIST_CFG = ((16, 3, 1), M, (32, 3, 1), M, (64, 3, 1), M, (128, 3, 1), M, (128, 3, 1), (32, 1, 1))


def leaky_relu(x):
    return nn.leaky_relu(x, 0.1)


class YOLOv1(nn.Module):
    """YOLO v1 (Redmon et al. 2016, Fig. 3: S x S grid, B boxes and C class probabilities per cell). Detector contract: ``__call__(images, targets=None, train=False,
    proposals=None)``; ``predict(images, train)`` gives the raw [B, S, S, 5 B + C] output.

    Fields: grid (S), boxes_per_cell (B), cfg (conv stack), width_mult (scales the conv widths), fc_width
    (4096), dropout_rate (0.5), batch_norm (False; YOLO v2 adds it), head ('fc': the paper's two fully
    connected layers over the flattened map; 'conv': an ablation in the direction of YOLO v2, which
    "removes the fully connected layers": a 3x3 conv of ``fc_width`` channels then a 1x1 conv to
    5B + C per cell, weights shared by all cells; needs the conv stack to end at S x S), lambda_coord (5), lambda_noobj (0.5),
    rescore (confidence target = IoU), score_thresh, nms_thresh, detections_per_img.
    """

    num_classes: int = 21
    grid: int = 7
    boxes_per_cell: int = 2
    cfg: Sequence[Any] = YOLOV1_CFG
    width_mult: float = 1.0
    fc_width: int = 4096
    dropout_rate: float = 0.5
    batch_norm: bool = False
    head: str = 'fc'
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    rescore: bool = True
    score_thresh: float = 0.01
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    dtype: Any = jnp.float32

    needs_masks: ClassVar[bool] = False
    needs_proposals: ClassVar[bool] = False

    @property
    def cell_channels(self) -> int:
        return 5 * self.boxes_per_cell + self.num_classes - 1

    @nn.compact
    def predict(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.asarray(images, self.dtype)
        i = 0
        for v in self.cfg:
            if v == M:
                x = max_pool(x, 2, 2)
                continue
            f, k, s = v
            i += 1
            f = max(1, int(round(f * self.width_mult)))
            x = FlaxConv(
                f,
                (k, k),
                (s, s),
                padding=k // 2,
                use_bias=not self.batch_norm,
                dtype=self.dtype,
                name=f'conv{i}',
                conv_general_dilated=conv_general_dilated,
            )(x)
            if self.batch_norm:
                x = BatchNorm(use_running_average=not train, dtype=self.dtype, name=f'bn{i}')(x)
            x = leaky_relu(x)
        s = self.grid
        if self.head == 'conv':
            if x.shape[1:3] != (s, s):
                raise ValueError(
                    f"head='conv' needs the conv stack to end at the {s}x{s} grid, got {x.shape[1]}x{x.shape[2]} "
                    f'for {images.shape[1]}x{images.shape[2]} inputs'
                )
            x = FlaxConv(
                self.fc_width, (3, 3), padding=1, use_bias=not self.batch_norm, dtype=self.dtype, name='head1'
            )(x)
            if self.batch_norm:
                x = BatchNorm(use_running_average=not train, dtype=self.dtype, name='head_bn')(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(leaky_relu(x))
            x = FlaxConv(self.cell_channels, (1, 1), dtype=self.dtype, name='head2')(x)
            return x.astype(jnp.float32)
        if self.head != 'fc':
            raise ValueError(f"head must be 'fc' or 'conv', got {self.head!r}")
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = leaky_relu(nn.Dense(self.fc_width, dtype=self.dtype, name='fc1')(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(s * s * self.cell_channels, dtype=self.dtype, name='fc2')(x)
        return x.reshape(x.shape[0], s, s, self.cell_channels).astype(jnp.float32)

    def __call__(self, images, targets=None, train: bool = False, proposals=None):
        out = self.predict(images, train=train)
        size = tuple(images.shape[1:3])
        if train:
            losses = jax.vmap(functools.partial(self.image_loss, image_size=size))(
                out,
                jnp.asarray(targets['boxes'], jnp.float32),
                jnp.asarray(targets['labels'], jnp.int32),
                jnp.asarray(targets['box_mask'], bool),
            )
            return {k: v.mean() for k, v in losses.items()}
        post = functools.partial(
            yolo_decode,
            boxes_per_cell=self.boxes_per_cell,
            image_size=size,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
        )
        return jax.vmap(post)(out)

    def image_loss(self, out, boxes, labels, valid, *, image_size) -> dict[str, jax.Array]:
        """Eq. 3 for one image: ``out`` [S, S, 5B + C], ground truth padded with ``valid``."""
        return yolo_loss(
            out,
            boxes,
            labels,
            valid,
            image_size=image_size,
            boxes_per_cell=self.boxes_per_cell,
            lambda_coord=self.lambda_coord,
            lambda_noobj=self.lambda_noobj,
            rescore=self.rescore,
        )


def _pred_boxes(out: jax.Array, b: int, image_size) -> tuple[jax.Array, jax.Array]:
    """(xyxy pixels [S, S, B, 4], raw box outputs [S, S, B, 5]) of an [S, S, 5B + C] output."""
    s = out.shape[0]
    h, w = image_size
    raw = out[..., : 5 * b].reshape(s, s, b, 5)
    jj, ii = jnp.meshgrid(jnp.arange(s, dtype=jnp.float32), jnp.arange(s, dtype=jnp.float32))
    cx = (jj[..., None] + raw[..., 0]) / s * w
    cy = (ii[..., None] + raw[..., 1]) / s * h
    bw, bh = raw[..., 2] ** 2 * w, raw[..., 3] ** 2 * h
    return jnp.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1), raw


def yolo_loss(
    out: jax.Array,
    boxes: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    *,
    image_size: tuple[int, int],
    boxes_per_cell: int = 2,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    rescore: bool = True,
) -> dict[str, jax.Array]:
    """Eq. 3 for one image (see the module docstring); returns its four terms."""
    s, b = out.shape[0], boxes_per_cell
    h, w = image_size
    pred, raw = _pred_boxes(out, b, image_size)
    probs = out[..., 5 * b :]
    # The responsible cell of each ground truth: the one holding its centre.
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = jnp.clip(jnp.floor(cx / w * s), 0, s - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(cy / h * s), 0, s - 1).astype(jnp.int32)
    cell = row * s + col
    m = boxes.shape[0]
    owns = (cell[None, :] == jnp.arange(s * s)[:, None]) & valid[None, :]  # [S S, M]
    has_obj = owns.any(1)
    gt = jnp.argmax(jnp.where(owns, jnp.arange(1, m + 1)[None, :], 0), 1)  # the last listed object
    gbox = boxes[gt]  # [S S, 4]
    pred = pred.reshape(s * s, b, 4)
    raw = raw.reshape(s * s, b, 5)
    iou = jax.vmap(lambda p, g: box_iou(p, g[None])[:, 0])(pred, gbox)  # [S S, B]
    resp = jax.nn.one_hot(jnp.argmax(iou, 1), b, dtype=bool) & has_obj[:, None]
    # Targets: centre offsets within the cell, square roots of the relative sizes.
    gcx, gcy = (gbox[:, 0] + gbox[:, 2]) / 2, (gbox[:, 1] + gbox[:, 3]) / 2
    tx = gcx / w * s - jnp.arange(s * s) % s
    ty = gcy / h * s - jnp.arange(s * s) // s
    tw = jnp.sqrt(jnp.maximum(gbox[:, 2] - gbox[:, 0], 0) / w)
    th = jnp.sqrt(jnp.maximum(gbox[:, 3] - gbox[:, 1], 0) / h)
    t = jnp.stack([tx, ty, tw, th], -1)[:, None, :]
    sq = (raw[..., :4] - t) ** 2
    coord = lambda_coord * jnp.where(resp[..., None], sq, 0.0).sum()
    conf_t = jax.lax.stop_gradient(iou) if rescore else jnp.ones_like(iou)
    obj = jnp.where(resp, (raw[..., 4] - conf_t) ** 2, 0.0).sum()
    noobj = lambda_noobj * jnp.where(resp, 0.0, raw[..., 4] ** 2).sum()
    onehot = jax.nn.one_hot(labels[gt] - 1, probs.shape[-1])
    cls = jnp.where(has_obj[:, None], (probs.reshape(s * s, -1) - onehot) ** 2, 0.0).sum()
    return {'loss_coord': coord, 'loss_obj': obj, 'loss_noobj': noobj, 'loss_class': cls}


def yolo_decode(
    out: jax.Array,
    *,
    boxes_per_cell: int = 2,
    image_size: tuple[int, int],
    score_thresh: float = 0.01,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> dict[str, jax.Array]:
    """One image: class-specific confidences Pr(class | object) x confidence (clipped to [0, 1]) of every
    predicted box, then ``select_detections``."""
    s, b = out.shape[0], boxes_per_cell
    pred, raw = _pred_boxes(out, b, image_size)
    probs = jnp.clip(out[..., 5 * b :], 0, 1)
    conf = jnp.clip(raw[..., 4], 0, 1)
    scores = (conf[..., None] * probs[:, :, None, :]).reshape(s * s * b, -1)
    return select_detections(
        pred.reshape(-1, 4),
        scores,
        image_size=image_size,
        score_threshold=score_thresh,
        iou_threshold=nms_thresh,
        max_detections=detections_per_img,
        pre_nms_top_k=min(1000, scores.size),
    )


YOLOv1Paper = functools.partial(YOLOv1)
YOLOv1Mnist = functools.partial(
    YOLOv1,
    num_classes=11,
    grid=8,
    cfg=YOLOV1_MNIST_CFG,
    fc_width=256,
    dropout_rate=0.0,
    detections_per_img=50,
)

#: The conv-head ablation of ``yolov1_mnist`` (BatchNorm, no fully connected layers): see ``head``.
YOLOv1MnistConv = functools.partial(YOLOv1Mnist, batch_norm=True, head='conv')

REGISTRY_ENTRIES = {'yolov1': YOLOv1Paper, 'yolov1_mnist': YOLOv1Mnist, 'yolov1_mnist_conv': YOLOv1MnistConv}

__all__ = ['YOLOV1_CFG', 'YOLOv1', 'yolo_decode', 'yolo_loss']
