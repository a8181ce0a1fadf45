"""Region proposals on the host for the R-CNN lineage (R-CNN, SPPNet, Fast R-CNN): computed once per
(dataset, split, method, settings) and cached as an ``.npz`` next to the TFDS data.

Methods:

- ``'selective_search'``: Uijlings et al. 2013, "Selective Search for Object Recognition", in the
  "fast mode" that R-CNN uses (Girshick et al. 2014, Sec. 2.1): hierarchical grouping of
  Felzenszwalb-Huttenlocher segments over two colour spaces, two k values and two similarity mixes.
  The implementation is OpenCV's ``cv2.ximgproc.segmentation`` (the optional dependency
  ``opencv-contrib-python-headless``). Our 128 x 128 canvases are much smaller than VOC's ~500 px
  images, so they are upsampled ``scale`` x (2) before segmentation, with k = 100, 200 (``base_k``,
  ``inc_k``): measured on 200 ``mnist_det`` test canvases (``settings`` defaults), recall of the
  ground truth 0.958 at IoU 0.5 / 0.940 at 0.7 with ~110 proposals and ~0.11 s per image on one
  core (OpenCV's defaults at 1x: 0.893 / 0.768, ~25 proposals, 0.03 s).
- ``'sliding_window'``: a dense multi-scale grid (no dependency; the same boxes for every image).

``get_proposals(builder, split)`` returns ``(boxes float32 [N, P, 4] xyxy pixels, valid bool [N, P])``
for the whole split, row i = example i of the split (``batch['index']`` of the ``mnist_det`` iterators).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from research import storage
from research.detection import data as det_data

__all__ = [
    'METHODS',
    'cache_path',
    'compute_selective_search',
    'default_method',
    'get_proposals',
    'has_selective_search',
    'proposal_recall',
    'selective_search',
    'sliding_window_boxes',
    'OPENCV_PIP',
]

METHODS = ('selective_search', 'sliding_window')
OPENCV_PIP = 'opencv-contrib-python-headless'
_CACHE_VERSION = 1

SS_DEFAULTS = dict(mode='fast', scale=2.0, base_k=100, inc_k=100, sigma=0.8, min_size=4.0)
SW_DEFAULTS = dict(sizes=(24, 36, 52, 76), aspect_ratios=(1.5,), stride_fraction=0.4)


# --------------------------------------------------------------------------- sliding windows


def sliding_window_boxes(
    image_size: tuple[int, int],
    *,
    sizes: Sequence[float] = SW_DEFAULTS['sizes'],
    aspect_ratios: Sequence[float] = SW_DEFAULTS['aspect_ratios'],
    stride_fraction: float = SW_DEFAULTS['stride_fraction'],
) -> np.ndarray:
    """float32 [P, 4] xyxy windows inside ``image_size`` (h, w): for each size s and aspect ratio a
    (height / width), windows of width ``s / sqrt(a)`` and height ``s sqrt(a)`` (clamped to the image)
    at stride ``stride_fraction`` x their side, from the top-left corner to the last position that
    fits, plus one flush with the far edge when the stride does not land there. Order: size, ratio,
    row, column."""
    h, w = int(image_size[0]), int(image_size[1])
    out = []

    def starts(extent, length, stride):
        s = list(np.arange(0.0, extent - length + 1e-6, stride))
        if extent - length - s[-1] > 1e-6:
            s.append(extent - length)
        return np.asarray(s, np.float64)

    for s in sizes:
        for a in aspect_ratios:
            bw, bh = min(s / np.sqrt(a), w), min(s * np.sqrt(a), h)
            ys = starts(h, bh, max(stride_fraction * bh, 1.0))
            xs = starts(w, bw, max(stride_fraction * bw, 1.0))
            yy, xx = np.meshgrid(ys, xs, indexing='ij')
            out.append(np.stack([xx, yy, xx + bw, yy + bh], -1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------- selective search


def _require_cv2():
    try:
        import cv2  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            f"selective search needs OpenCV's contrib modules: pip install {OPENCV_PIP} "
            "(or the project's 'detection' extra); method='sliding_window' needs nothing"
        ) from e
    if not hasattr(cv2, 'ximgproc'):
        raise ImportError(
            f'cv2 {cv2.__version__} has no ximgproc (contrib) module: pip install {OPENCV_PIP} '
            '(uninstall plain opencv-python first if both are installed)'
        )
    return cv2


def has_selective_search() -> bool:
    try:
        _require_cv2()
        return True
    except ImportError:
        return False


def _seed_c_rand(seed: int) -> None:
    """OpenCV ranks the grouped regions by ``level * std::rand()`` (Uijlings et al. 2013, Sec. 3.4's
    pseudo-random ordering): seeding the C library's ``rand`` makes the order (and so the kept top
    ``max_proposals``) repeatable; without a C library to call, the order stays random."""
    try:
        ctypes.CDLL(None).srand(int(seed))
    except (OSError, AttributeError, TypeError):
        pass


def selective_search(
    image: np.ndarray,
    *,
    mode: str = 'fast',
    scale: float = 2.0,
    base_k: int = 100,
    inc_k: int = 100,
    sigma: float = 0.8,
    min_size: float = 4.0,
    max_proposals: int | None = 300,
) -> np.ndarray:
    """float32 [n, 4] xyxy proposals (n <= ``max_proposals``) of one uint8 image [H, W] or [H, W, C]
    (1 channel is replicated to 3), in OpenCV's order (its hierarchical-grouping rank, seeded, so
    deterministic; Uijlings et al. 2013, Sec. 3.4): ``mode`` 'fast' (R-CNN's; k = base_k, base_k +
    inc_k), 'quality' or 'single' (one strategy); the image is resized by ``scale`` first and boxes
    mapped back; boxes with a side < ``min_size`` pixels are dropped, then exact duplicates."""
    cv2 = _require_cv2()
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    img = np.ascontiguousarray(img.astype(np.uint8))
    if scale != 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(img)
    if mode == 'fast':
        ss.switchToSelectiveSearchFast(int(base_k), int(inc_k), float(sigma))
    elif mode == 'quality':
        ss.switchToSelectiveSearchQuality(int(base_k), int(inc_k), float(sigma))
    elif mode == 'single':
        ss.switchToSingleStrategy(int(base_k), float(sigma))
    else:
        raise ValueError(f"mode must be 'fast', 'quality' or 'single', got {mode!r}")
    _seed_c_rand(0)
    r = np.asarray(ss.process(), np.float64).reshape(-1, 4) / scale  # (x, y, w, h)
    boxes = np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], -1).astype(np.float32)
    boxes = boxes[(r[:, 2] >= min_size) & (r[:, 3] >= min_size)]
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return boxes if max_proposals is None else boxes[: int(max_proposals)]


def _ss_chunk(args) -> list[np.ndarray]:
    images, settings = args
    cv2 = _require_cv2()
    cv2.setNumThreads(1)
    return [selective_search(im, **settings) for im in images]


# --------------------------------------------------------------------------- whole splits, cached


def _pad(lists: list[np.ndarray], p: int) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.zeros((len(lists), p, 4), np.float32)
    valid = np.zeros((len(lists), p), bool)
    for i, b in enumerate(lists):
        b = b[:p]
        boxes[i, : len(b)], valid[i, : len(b)] = b, True
    return boxes, valid


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return (
        f'{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}' if s >= 3600 else f'{s // 60:02d}:{s % 60:02d}'
    )


def _progress(tag: str, done: int, total: int, t0: float, stream) -> None:
    el = time.perf_counter() - t0
    rate = done / max(el, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    end = '\n' if done == total else ''
    line = f'{tag}: {done}/{total} images | {rate:.1f} img/s | {_fmt_time(el)} elapsed | ETA {_fmt_time(eta)}'
    print('\r' + line, end=end, file=stream, flush=True)


def compute_selective_search(
    images: np.ndarray,
    settings: dict,
    *,
    num_workers: int | None = None,
    tag: str = 'selective search',
    stream=sys.stderr,
    chunk: int = 32,
) -> list[np.ndarray]:
    """``selective_search`` of every image (uint8 [N, H, W(, C)]) with a progress line (img/s, ETA),
    over ``num_workers`` spawned processes (default: the CPU count, at most 8, for >= 256 images; 1 = in
    process; a spawned worker takes ~10-20 s to start, it imports the package)."""
    _require_cv2()
    n = len(images)
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8) if n >= 256 else 1
    num_workers = max(1, min(int(num_workers), -(-n // chunk)))
    jobs = [(images[i : i + chunk], settings) for i in range(0, n, chunk)]
    out: list[np.ndarray] = []
    t0 = time.perf_counter()
    if num_workers == 1:
        for job in jobs:
            out += _ss_chunk(job)
            _progress(tag, len(out), n, t0, stream)
        return out
    # spawn, not fork: the caller may have started JAX's threads.
    with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
        for res in pool.imap(_ss_chunk, jobs):
            out += res
            _progress(tag, len(out), n, t0, stream)
    return out


def _settings(method: str, max_proposals: int, settings: dict) -> dict:
    if method not in METHODS:
        raise ValueError(f'unknown proposal method {method!r}; known: {METHODS}')
    defaults = SS_DEFAULTS if method == 'selective_search' else SW_DEFAULTS
    unknown = set(settings) - set(defaults)
    if unknown:
        raise ValueError(f'unknown {method} settings {sorted(unknown)}; known: {sorted(defaults)}')
    s = {**defaults, **settings}
    s = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in s.items()}
    return {'method': method, 'max_proposals': int(max_proposals), **s}


def cache_path(builder, split: str, resolved: dict) -> storage.AnyPath:
    """``<builder.data_dir>/proposals/<split>_<method>_<hash of the settings>.npz`` (the data dir local or
    remote, e.g. ``gs://...``)."""
    digest = hashlib.sha1(json.dumps({**resolved, 'v': _CACHE_VERSION}, sort_keys=True).encode()).hexdigest()
    safe_split = ''.join(c if c.isalnum() or c in '-_' else '_' for c in split)
    return (
        storage.as_path(os.fspath(builder.data_dir))
        / 'proposals'
        / f'{safe_split}_{resolved["method"]}_{digest[:10]}.npz'
    )


def get_proposals(
    builder,
    split: str,
    *,
    method: str = 'selective_search',
    max_proposals: int = 300,
    num_workers: int | None = None,
    **settings,
) -> tuple[np.ndarray, np.ndarray]:
    """Proposals of every example of ``split`` of a prepared ``mnist_det`` builder: ``(boxes float32
    [N, P, 4] xyxy pixels, valid bool [N, P])``, P = ``max_proposals``, row i = example i.

    Computed once and cached under the builder's data dir (see :func:`cache_path`); ``settings`` are
    the method's keyword arguments (``selective_search``: mode, scale, base_k, inc_k, sigma, min_size;
    ``sliding_window``: sizes, aspect_ratios, stride_fraction). Asking for selective search without
    OpenCV-contrib is an ImportError naming the pip package (no silent fallback)."""
    resolved = _settings(method, max_proposals, settings)
    if method == 'selective_search':
        _require_cv2()
    path = cache_path(builder, split, resolved)
    data = det_data.get_split(builder, split)
    n, (h, w) = len(data), data.images.shape[1:3]
    if path.exists():
        with np.load(io.BytesIO(path.read_bytes()) if storage.is_remote(path) else path) as z:
            boxes, valid = z['boxes'], z['valid']
        if boxes.shape == (n, max_proposals, 4):
            return boxes, valid
        print(
            f'proposal cache {path} has shape {boxes.shape}, expected {(n, max_proposals, 4)}: recomputing',
            file=sys.stderr,
        )
    kw = {k: v for k, v in resolved.items() if k not in ('method', 'max_proposals')}
    if method == 'selective_search':
        lists = compute_selective_search(
            data.images,
            {**kw, 'max_proposals': max_proposals},
            num_workers=num_workers,
            tag=f'selective search ({split}, {n} images)',
        )
    else:
        grid = sliding_window_boxes((h, w), **kw)
        if len(grid) > max_proposals:
            raise ValueError(
                f'the sliding-window grid has {len(grid)} boxes > max_proposals={max_proposals}: '
                'raise max_proposals or use fewer sizes / a larger stride_fraction'
            )
        lists = [grid] * n
    boxes, valid = _pad(lists, max_proposals)
    path.parent.mkdir(parents=True, exist_ok=True)
    if storage.is_remote(path):  # one object write
        buf = io.BytesIO()
        np.savez(buf, boxes=boxes, valid=valid, settings=json.dumps(resolved))
        path.write_bytes(buf.getvalue())
        return boxes, valid
    tmp = path.with_name(path.name + f'.tmp{os.getpid()}.npz')
    np.savez(tmp, boxes=boxes, valid=valid, settings=json.dumps(resolved))
    os.replace(tmp, path)
    return boxes, valid


def time_per_image(
    builder,
    split: str,
    *,
    method: str = 'selective_search',
    max_proposals: int = 300,
    n: int = 20,
    **settings,
) -> float:
    """Median wall time (ms) of computing one image's proposals in this process (the first ``n``
    images of ``split``): the host cost a proposal-based detector adds per image at test time
    (0 for the fixed sliding-window grid)."""
    resolved = _settings(method, max_proposals, settings)
    if method != 'selective_search' or n <= 0:
        return 0.0
    kw = {k: v for k, v in resolved.items() if k not in ('method', 'max_proposals')}
    images = det_data.get_split(builder, split).images[:n]
    times = []
    for im in images:
        t0 = time.perf_counter()
        selective_search(im, **kw, max_proposals=max_proposals)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def default_method() -> str:
    """'selective_search' when OpenCV-contrib is importable, else 'sliding_window' (with a message)."""
    if has_selective_search():
        return 'selective_search'
    print(
        f'opencv-contrib is not installed (pip install {OPENCV_PIP}): using sliding-window proposals',
        file=sys.stderr,
    )
    return 'sliding_window'


# --------------------------------------------------------------------------- recall


def _iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [..., M, P] of a [..., M, 4] and b [..., P, 4]."""
    lt = np.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = np.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda z: (z[..., 2] - z[..., 0]) * (z[..., 3] - z[..., 1])  # noqa: E731
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def proposal_recall(proposals, valid, gt_boxes, gt_valid, iou: float = 0.5) -> float:
    """Fraction of the valid ground-truth boxes (``gt_boxes`` [N, M, 4], ``gt_valid`` [N, M]) covered by
    a valid proposal (``proposals`` [N, P, 4], ``valid`` [N, P]) with IoU >= ``iou``."""
    p, v = np.asarray(proposals, np.float64), np.asarray(valid, bool)
    g, gv = np.asarray(gt_boxes, np.float64), np.asarray(gt_valid, bool)
    best = np.where(v[:, None, :], _iou_np(g, p), -1.0).max(-1) if p.shape[1] else np.full(gv.shape, -1.0)
    return float((best[gv] >= iou).mean()) if gv.any() else float('nan')
