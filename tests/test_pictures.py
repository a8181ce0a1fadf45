"""The pictures carry their labels: column titles on the segmentation and detection grids, a note on an
empty detection panel, class names on the CAM pictures, integer ticks on the receptive-field plot, and a
marker for a run with one log point in a sweep's training-loss panel."""

import json

import numpy as np
from PIL import Image

from research.detection import viz as det_viz
from research.experiments import plots
from research.segmentation.viz import save_result_grid
from research.viz import cam as cam_lib
from research.viz.images import add_titles
from research.viz.receptive_field import DilatedStack, model_rf_figure


def _ink(a: np.ndarray) -> int:
    """Pixels that are not white (text on a white band)."""
    return int((np.asarray(a)[..., :3] < 200).any(-1).sum())


def test_add_titles_writes_each_title_over_its_column():
    img = np.zeros((20, 90, 3), np.uint8)
    out = add_titles(img, ['a', '', 'ccc'])
    band = out.shape[0] - 20
    assert band > 0 and (out[band:] == 0).all()  # the image is intact under the band
    cols = [out[:band, i * 30 : (i + 1) * 30] for i in range(3)]
    assert _ink(cols[0]) > 0 and _ink(cols[1]) == 0 and _ink(cols[2]) > _ink(cols[0])


def test_segmentation_grid_has_column_titles(tmp_path):
    x = np.zeros((2, 16, 16, 1), np.float32)
    lab = np.ones((2, 16, 16), int)
    path = save_result_grid(tmp_path / 'g.png', x, lab, lab, 3, scale=2)
    a = np.asarray(Image.open(path).convert('RGB'))
    grid_h, grid_w = 2 * (2 + 2 * 18), 2 * (2 + 3 * 18)  # make_grid's padding 2, then scale 2
    band = a.shape[0] - grid_h
    assert a.shape[1] == grid_w and band > 8
    for i in range(3):  # "input", "ground truth", "prediction": ink over every column
        assert _ink(a[:band, 2 * (2 + i * 18) : 2 * (2 + i * 18 + 16)]) > 10
    plain = save_result_grid(tmp_path / 'p.png', x, lab, lab, 3, scale=2, titles=None)
    assert np.asarray(Image.open(plain)).shape[0] == grid_h


def _det(tmp_path, scores, **kw):
    ims = np.zeros((1, 32, 32, 1), np.float32)
    boxes = np.array([[[4.0, 4.0, 20.0, 20.0]]])
    return np.asarray(
        Image.open(
            det_viz.save_detection_grid(
                tmp_path / 'd.png',
                ims,
                boxes,
                np.array([[1]]),
                np.ones((1, 1), bool),
                boxes,
                np.array([scores]),
                np.array([[1]]),
                np.ones((1, 1), bool),
                class_names=['bg', 'one'],
                score_threshold=0.3,
                **kw,
            )
        ).convert('RGB')
    )


def _yellow(a):
    return int(((a[..., 0] > 200) & (a[..., 1] > 180) & (a[..., 2] < 80)).sum())


def test_detection_grid_titles_and_empty_note(tmp_path):
    found = _det(tmp_path, [0.9])
    empty = _det(tmp_path, [0.1])  # below the threshold: nothing drawn, so the panel says so
    h = 32 * 3  # one row, scale 3
    band = found.shape[0] - h
    assert band > 8 and found.shape[1] == 2 * h + 4
    assert _ink(found[:band, :h]) > 10 and _ink(found[:band, h + 4 :]) > 10  # both columns titled
    right = slice(band, None), slice(h + 4, None)
    assert _yellow(empty[right]) > 20 and _yellow(found[right]) == 0
    untitled = _det(tmp_path, [0.9], show_titles=False)
    assert untitled.shape[0] == h


def test_cam_grid_writes_class_names_and_marks_mistakes():
    x = np.zeros((2, 8, 8, 1), np.float32)
    cams = np.random.default_rng(0).normal(size=(2, 8, 8))
    g = cam_lib.cam_grid(x, cams, [3, 4], class_names=[f'c{i}' for i in range(5)], labels=[3, 1], scale=4)
    row = 4 * 12  # 8 px + make_grid's padding of 2 on both sides, scaled by 4
    assert g.shape[1] == 4 * (2 + 2 * 10) and g.shape[0] > 2 * row
    bottom_caption = g[-(g.shape[0] - 2 * row) // 2 :]
    half = g.shape[1] // 2  # between the two captions (centred at 4 * 6 and 4 * 16)
    first, second = bottom_caption[:, :half], bottom_caption[:, half:]
    green = lambda a: int(((a[..., 1] > 90) & (a[..., 0] < 60)).sum())
    red = lambda a: int(((a[..., 0] > 150) & (a[..., 1] < 60)).sum())
    assert green(first) > 5 and red(first) == 0  # CAM: c3, right
    assert red(second) > 5 and green(second) == 0  # CAM: c4, label c1: wrong
    unlabelled = cam_lib.cam_grid(x, cams, [3, 4], scale=4)
    assert unlabelled.shape[0] < g.shape[0]  # no label captions on the top row


def test_receptive_field_plot_has_integer_ticks():
    fig, rows = model_rf_figure(DilatedStack((1, 2, 4)), (1, 33, 33, 1))
    fig.canvas.draw()
    ax = fig.axes[0]
    for ticks, (lo, hi) in ((ax.get_xticks(), ax.get_xlim()), (ax.get_yticks(), ax.get_ylim())):
        shown = [t for t in ticks if lo <= t <= hi]
        assert len(shown) >= 2 and all(float(t).is_integer() for t in shown), shown
    assert [r for _, r, _ in rows] == [3, 7, 15]


def test_single_point_run_is_a_marker(tmp_path, monkeypatch):
    runs = []
    for name, n in (('one', 1), ('many', 3)):
        wd = tmp_path / name
        wd.mkdir()
        rows = [dict(split='train', step=j + 1, epoch=0.1 * (j + 1), loss=1.0 / (j + 1)) for j in range(n)]
        (wd / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
        runs.append(dict(workdir=wd, label=name))
    figs = []
    monkeypatch.setattr(plots.plt, 'close', figs.append)
    plots.plot_training_curves(runs, tmp_path / 'c.png')
    loss_ax = figs[0].axes[0]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert lines['one'].get_marker() == 'o' and len(lines['one'].get_xdata()) == 1
    assert lines['many'].get_marker() in ('None', None, '')
