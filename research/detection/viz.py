"""PNG pictures of detections: each canvas drawn twice side by side, ground truth (green boxes, class
names) | predictions (red boxes, class and score, above ``score_threshold``), masks tinted when given."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from research import storage
from research.viz.images import add_titles, fitted_font

__all__ = ['draw_boxes', 'empty_note', 'save_detection_grid']

_GT, _PRED = (40, 220, 60), (235, 50, 40)


def draw_boxes(
    image01: np.ndarray,
    boxes,
    labels,
    scores=None,
    *,
    class_names: Sequence[str] = (),
    colour=_PRED,
    scale: int = 3,
    masks=None,
) -> np.ndarray:
    """uint8 [H*scale, W*scale, 3]: ``image01`` ([H, W, C] in [0, 1]) upscaled, with ``boxes`` (xyxy
    pixels of the original image) outlined and labelled ``name`` or ``name score``; ``masks`` [N, H, W]
    in [0, 1] tint their pixels."""
    x = np.asarray(image01, np.float32)
    x = np.repeat(x, 3, -1) if x.shape[-1] == 1 else x[..., :3]
    if masks is not None and len(masks):
        m = np.clip(np.max(np.asarray(masks, np.float32), 0), 0, 1)[..., None]
        x = x * (1 - 0.5 * m) + 0.5 * m * np.asarray(colour, np.float32) / 255
    img = Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).resize(
        (x.shape[1] * scale, x.shape[0] * scale), Image.NEAREST
    )
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=4 * scale + 2)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    for i, (b, lab) in enumerate(zip(np.asarray(boxes), np.asarray(labels))):
        x1, y1, x2, y2 = (float(v) * scale for v in b)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        name = class_names[int(lab)] if int(lab) < len(class_names) else str(int(lab))
        name = name.replace('digit_', '')
        text = name if scores is None else f'{name} {float(scores[i]):.2f}'
        draw.text((x1 + 2, max(y1 - 4 * scale - 4, 0)), text, fill=colour, font=font)
    return np.asarray(img)


def empty_note(tile: np.ndarray, text: str) -> np.ndarray:
    """uint8 [H, W, 3]: ``tile`` with ``text`` written across its middle (yellow, outlined in black), shrunk to
    fit the tile's width: the note on a prediction panel with nothing above the score threshold."""
    img = Image.fromarray(np.asarray(tile, np.uint8))
    draw = ImageDraw.Draw(img)
    w, h = img.size
    font = fitted_font(draw, text, w - 6, max(min(w // 9, 16), 9))
    tw = draw.textlength(text, font=font)
    draw.text(
        ((w - tw) / 2, h / 2 - 6), text, fill=(255, 230, 0), font=font, stroke_width=1, stroke_fill=(0, 0, 0)
    )
    return np.asarray(img)


def save_detection_grid(
    path: str | os.PathLike,
    images01,
    gt_boxes,
    gt_labels,
    gt_valid,
    pred_boxes,
    pred_scores,
    pred_labels,
    pred_valid,
    *,
    class_names: Sequence[str] = (),
    score_threshold: float = 0.3,
    pred_masks=None,
    titles: Sequence[str] | None = None,
    show_titles: bool = True,
) -> storage.AnyPath:
    """One row per example: ground truth | predictions with score >= ``score_threshold``.

    The columns are titled ``titles`` (default: "ground truth", "predictions (score >= t)"; ``show_titles=False``:
    no title band), and a prediction panel with no box above the threshold says so ("no detection >= t")."""
    rows = []
    for i in range(len(images01)):
        gv = np.asarray(gt_valid[i], bool)
        pv = np.asarray(pred_valid[i], bool) & (np.asarray(pred_scores[i]) >= score_threshold)
        left = draw_boxes(
            images01[i],
            np.asarray(gt_boxes[i])[gv],
            np.asarray(gt_labels[i])[gv],
            class_names=class_names,
            colour=_GT,
        )
        masks = None if pred_masks is None else np.asarray(pred_masks[i])[pv]
        right = draw_boxes(
            images01[i],
            np.asarray(pred_boxes[i])[pv],
            np.asarray(pred_labels[i])[pv],
            np.asarray(pred_scores[i])[pv],
            class_names=class_names,
            masks=masks,
        )
        if not pv.any():
            right = empty_note(right, f'no detection >= {score_threshold:g}')
        gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([left, gap, right], 1))
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, sep)][:-1], 0)
    if show_titles:
        tw = (grid.shape[1] - 4) / 2  # one panel's width (two panels, a 4 px gap)
        names = tuple(titles) if titles else ('ground truth', f'predictions (score >= {score_threshold:g})')
        grid = add_titles(grid, names, centers=[tw / 2, tw + 4 + tw / 2], width=tw)
    return storage.save_image(Image.fromarray(grid), path)
