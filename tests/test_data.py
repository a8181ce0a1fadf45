"""Tests for research.data: offline TFDS builders, registry, grain pipelines."""

import collections
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import research.data as rd
from research.data import augment, datasets
from research.data.builders import Digits, ImageFolder

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
MNIST_TGZ = SHARED_DATA / 'mnist10k-png.tgz'
CIFAR_TGZ = SHARED_DATA / 'cifar10-jpg.tgz'


def _cfg(data_dir, **kw):
    cfg = rd.data_config_defaults()
    cfg.data_dir = str(data_dir)
    for k, v in kw.items():
        if k.startswith('augment_'):
            cfg.augment[k[len('augment_') :]] = v
        else:
            cfg[k] = v
    return cfg


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('tfds_digits')
    rd.get_dataset_info(_cfg(d))  # build once for the module
    return d


# --------------------------------------------------------------------------- digits


def test_digits_builder_splits_and_values(digits_dir):
    builder = rd.get_builder(_cfg(digits_dir))
    n = {s: builder.info.splits[s].num_examples for s in ('train', 'test')}
    assert n == {'train': 1437, 'test': 360}
    assert sum(n.values()) == 1797
    from sklearn.datasets import load_digits

    all_labels = load_digits().target
    per_split = {}
    for split in ('train', 'test'):
        src = builder.as_data_source(split)
        recs = src.__getitems__(list(range(len(src))))
        images = np.stack([r['image'] for r in recs])
        labels = np.array([r['label'] for r in recs])
        assert images.shape == (n[split], 8, 8, 1) and images.dtype == np.uint8
        assert images.min() == 0 and images.max() == 255
        assert set(labels.tolist()) == set(range(10))
        per_split[split] = np.bincount(labels, minlength=10)
    # Stratified: each class split ~80/20 (within one example).
    total = np.bincount(all_labels, minlength=10)
    np.testing.assert_array_equal(per_split['train'] + per_split['test'], total)
    assert np.all(np.abs(per_split['test'] - 0.2 * total) <= 1)
    # Pixel values are round(v * 255 / 16) of sklearn's.
    d = load_digits()
    expected = set(np.unique(np.round(d.images * 255 / 16)).astype(int).tolist())
    got = set(np.unique(images).tolist())
    assert got <= expected


def test_building_and_reading_digits_never_imports_tensorflow(tmp_path):
    """The embedded dataset needs no TensorFlow. Checked in a fresh interpreter: in the suite, another
    test of the same worker (a TFDS-by-name builder) may have imported it already."""
    import subprocess

    code = (
        'import sys, research.data as rd\n'
        'c = rd.data_config_defaults(); c.data_dir = sys.argv[1]\n'
        'b = rd.get_builder(c); src = b.as_data_source("train"); src.__getitems__([0, 1])\n'
        'print(len(src), "tensorflow" in sys.modules)\n'
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, 'PYTHONPATH': str(root), 'JAX_PLATFORMS': 'cpu'}
    out = subprocess.run(
        [sys.executable, '-c', code, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1].split() == ['1437', 'False'], out.stdout[-2000:]


def test_digits_reused_not_rebuilt(digits_dir, monkeypatch):
    info_file = Path(rd.get_builder(_cfg(digits_dir)).data_path) / ('dataset_info.json')
    mtime = info_file.stat().st_mtime_ns
    monkeypatch.setattr(datasets, '_BUILDERS', {})  # forget the process cache

    def fail(*a, **k):
        raise AssertionError('dataset was rebuilt')

    monkeypatch.setattr(Digits, 'download_and_prepare', fail)
    info = rd.get_dataset_info(_cfg(digits_dir))
    assert info.num_examples['train'] == 1437
    assert info_file.stat().st_mtime_ns == mtime


def test_dataset_info_digits(digits_dir):
    info = rd.get_dataset_info(_cfg(digits_dir))
    assert info.name == 'digits'
    assert info.num_classes == 10
    assert info.class_names == tuple(str(i) for i in range(10))
    assert info.image_shape == (8, 8, 1)
    assert info.num_examples == {'train': 1437, 'test': 360}
    assert len(info.mean) == len(info.std) == 1
    assert 0.1 < info.mean[0] < 0.6 and 0.1 < info.std[0] < 0.6
    raw = rd.get_dataset_info(_cfg(digits_dir, normalize=False))
    assert raw.mean == (0.0,) and raw.std == (1.0,)


def test_resize_image_size(digits_dir):
    cfg = _cfg(digits_dir, image_size=32)
    info = rd.get_dataset_info(cfg)
    assert info.image_shape == (32, 32, 1)
    batch = next(rd.make_train_iterator(cfg, seed=0, global_batch_size=16))
    assert batch['image'].shape == (16, 32, 32, 1)
    assert batch['image'].dtype == np.float32
    ev = next(rd.make_eval_iterator(cfg, 'test', global_batch_size=8))
    assert ev['image'].shape == (8, 32, 32, 1)


def test_resize_weights_and_values():
    for n_in, n_out in [(8, 32), (32, 8), (28, 28), (5, 3)]:
        w = augment.resize_weights(n_in, n_out)
        assert w.shape == (n_out, n_in)
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    const = np.full((2, 7, 5, 3), 99, np.uint8)
    np.testing.assert_allclose(augment.resize(const, 16, 9), 99.0, atol=1e-3)
    # Upsampling a 2-pixel ramp gives a monotone ramp with the same ends.
    ramp = np.array([0, 200], np.float32).reshape(1, 1, 2, 1)
    up = augment.resize(ramp, 1, 4)[0, 0, :, 0]
    np.testing.assert_allclose(up, [0, 50, 150, 200], atol=1e-4)
    # Downsampling a checkerboard by 2 averages it (antialiasing).
    board = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[None, ..., None]
    small = augment.resize(board, 4, 4)
    np.testing.assert_allclose(small[:, 1:3, 1:3], 127.5, atol=1e-3)
    np.testing.assert_allclose(small, 127.5, atol=3)  # borders renormalised


# --------------------------------------------------------------------------- eval / sharding


def _split_labels(cfg, split):
    src = rd.get_builder(cfg).as_data_source(split)
    return sorted(int(r['label']) for r in src.__getitems__(list(range(len(src)))))


@pytest.mark.parametrize('batch,hosts', [(64, 1), (50, 2), (360, 4)])
def test_eval_iterator_covers_split_exactly_once(digits_dir, batch, hosts):
    cfg = _cfg(digits_dir, normalize=False)
    per_host = []
    for p in range(hosts):
        batches = list(
            rd.make_eval_iterator(cfg, 'test', global_batch_size=batch, process_index=p, process_count=hosts)
        )
        assert len(batches) == -(-360 // batch)
        for b in batches:
            assert b['image'].shape == (batch // hosts, 8, 8, 1)
            assert b['image'].dtype == np.float32 and b['label'].dtype == np.int32
            assert b['mask'].dtype == bool
            assert np.all(b['image'][~b['mask']] == 0)
        per_host.append(batches)
    # Global batch b is the process-ordered concatenation of the host batches.
    steps = [
        {k: np.concatenate([h[i][k] for h in per_host]) for k in ('image', 'label', 'mask')}
        for i in range(len(per_host[0]))
    ]
    mask = np.concatenate([s['mask'] for s in steps])
    assert mask.sum() == 360 and np.all(mask[:360]) and not np.any(mask[360:])
    labels = np.concatenate([s['label'] for s in steps])[mask]
    images = np.concatenate([s['image'] for s in steps])[mask]
    # Same examples, in split order, each exactly once.
    src = rd.get_builder(cfg).as_data_source('test')
    recs = src.__getitems__(list(range(360)))
    np.testing.assert_array_equal(labels, [r['label'] for r in recs])
    np.testing.assert_array_equal(
        np.rint(images * 255).astype(np.uint8), np.stack([r['image'] for r in recs])
    )
    assert sorted(labels.tolist()) == _split_labels(cfg, 'test')


def test_train_sharding_disjoint_and_complete(digits_dir):
    cfg = _cfg(
        digits_dir, augment_crop_padding=2, augment_flip=True, augment_brightness=0.1, augment_rotation=10.0
    )
    full = _take(rd.make_train_iterator(cfg, seed=3, global_batch_size=32), 3)
    parts = [
        _take(rd.make_train_iterator(cfg, seed=3, global_batch_size=32, process_index=p, process_count=2), 3)
        for p in range(2)
    ]
    for step in range(3):
        a, b = parts[0][step], parts[1][step]
        assert a['image'].shape == (16, 8, 8, 1)
        for k in ('image', 'label'):
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), full[step][k])
        rows_a = {bytes(x) for x in a['image']}
        rows_b = {bytes(x) for x in b['image']}
        assert not rows_a & rows_b


def test_train_epochs_are_permutations_and_reshuffled(digits_dir):
    cfg = _cfg(digits_dir, normalize=False)
    g = 100
    steps = rd.steps_per_epoch(cfg, g)
    assert steps == 1437 // g == 14
    it = rd.make_train_iterator(cfg, seed=0, global_batch_size=g)
    epochs = []
    for _ in range(2):
        batches = _take(it, steps)
        epochs.append(np.concatenate([b['image'] for b in batches]).reshape(steps * g, -1))
        labels = np.concatenate([b['label'] for b in batches])
        assert np.all(
            np.bincount(labels, minlength=10) <= np.bincount(_split_labels(cfg, 'train'), minlength=10)
        )
    # No example repeats within an epoch (digits images are unique up to a few).
    assert len({bytes(r) for r in epochs[0]}) >= steps * g - 5
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    # A different seed gives a different order.
    other = next(rd.make_train_iterator(cfg, seed=1, global_batch_size=g))
    assert not np.array_equal(other['image'].reshape(g, -1), epochs[0][:g])


@pytest.mark.parametrize('threads', [0, 2])
def test_train_state_round_trip(digits_dir, threads):
    cfg = _cfg(
        digits_dir,
        num_threads=threads,
        augment_crop_padding=2,
        augment_flip=True,
        augment_rotation=15.0,
        augment_scale=0.1,
        augment_brightness=0.2,
    )
    k, m = 5, 20  # 20 batches of 100 cross the epoch boundary (14 per epoch)
    it = rd.make_train_iterator(cfg, seed=7, global_batch_size=100)
    _take(it, k)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, m)
    it2 = rd.make_train_iterator(cfg, seed=7, global_batch_size=100)
    it2.set_state(state)
    _assert_batches_equal(_take(it2, m), expected)
    # Uninterrupted iteration gives the same stream too.
    it3 = rd.make_train_iterator(cfg, seed=7, global_batch_size=100)
    _assert_batches_equal(_take(it3, k + m)[k:], expected)


def test_shuffle_seed_overrides_run_seed(digits_dir):
    cfg = _cfg(digits_dir, shuffle_seed=11, augment_flip=True)
    a = next(rd.make_train_iterator(cfg, seed=1, global_batch_size=32))
    b = next(rd.make_train_iterator(cfg, seed=2, global_batch_size=32))
    _assert_batches_equal([a], [b])


def test_normalisation_zero_mean_unit_std(digits_dir):
    cfg = _cfg(digits_dir, normalize=True)
    info = rd.get_dataset_info(cfg)
    xs = [b['image'][b['mask']] for b in rd.make_eval_iterator(cfg, 'train', global_batch_size=500)]
    x = np.concatenate(xs)
    assert x.shape[0] == 1437
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std()) - 1.0) < 1e-4
    stats_file = Path(rd.get_builder(cfg).data_path) / 'norm_stats_train.json'
    cached = json.loads(stats_file.read_text())
    np.testing.assert_allclose(cached['mean'], info.mean)
    # Normalised pixels invert back to the raw ones.
    raw = np.concatenate(
        [
            b['image'][b['mask']]
            for b in rd.make_eval_iterator(_cfg(digits_dir, normalize=False), 'train', global_batch_size=500)
        ]
    )
    np.testing.assert_allclose(x * info.std[0] + info.mean[0], raw, atol=1e-5)


# --------------------------------------------------------------------------- augmentation ops


def _hand_image():
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(1, 5, 6, 3)
    return np.concatenate([img, 255 - img])


def test_pad_crop_flip_hand_made():
    img = _hand_image()
    b = len(img)
    zeros = np.zeros(b, np.int64)
    no, yes = np.zeros(b, bool), np.ones(b, bool)
    np.testing.assert_array_equal(augment.pad_crop_flip(img, zeros, zeros, no, 0), img)
    np.testing.assert_array_equal(augment.pad_crop_flip(img, zeros + 3, zeros + 3, no, 3), img)
    flipped = augment.pad_crop_flip(img, zeros, zeros, yes, 0)
    np.testing.assert_array_equal(flipped, img[:, :, ::-1])
    np.testing.assert_array_equal(augment.pad_crop_flip(flipped, zeros, zeros, yes, 0), img)
    # Offset (0, 0) with padding 2 shifts the content down-right by 2.
    shifted = augment.pad_crop_flip(img, zeros, zeros, no, 2)
    np.testing.assert_array_equal(shifted[:, 2:, 2:], img[:, :-2, :-2])
    assert np.all(shifted[:, :2] == 0) and np.all(shifted[:, :, :2] == 0)
    # Offset (4, 1): content moves up by 2 and right by 1.
    moved = augment.pad_crop_flip(img, zeros + 4, zeros + 1, no, 2)
    np.testing.assert_array_equal(moved[:, :-2, 1:], img[:, 2:, :-1])
    assert np.all(moved[:, -2:] == 0)


def test_augment_batch_off_and_identity():
    img = _hand_image()
    u = augment.uniform_hash(0, np.arange(len(img)), augment.NUM_UNIFORMS)
    np.testing.assert_allclose(augment.augment_batch(img, u), img / 255.0, atol=1e-7)
    # Crop draws stay within [0, 2P]: every output pixel comes from the padded
    # image, and flip only ever mirrors.
    out = augment.augment_batch(img, u, crop_padding=1, flip=True)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    bright = augment.augment_batch(img, u, brightness=0.3)
    delta = (bright - img / 255.0)[:, 1:-1, 1:-1]  # away from clipping
    assert np.all(np.abs(delta) <= 0.3 + 1e-6)


def test_rotate_scale():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 7, 7, 3)).astype(np.uint8)
    same = augment.rotate_scale(img, np.zeros(2), np.ones(2))
    np.testing.assert_array_equal(same, img.astype(np.float32))
    rot = augment.rotate_scale(img, np.full(2, 90.0), np.ones(2))
    np.testing.assert_allclose(rot, np.rot90(img, 1, axes=(1, 2)), atol=1e-3)
    # Zooming in keeps the centre pixel, zooming out leaves zero corners.
    zin = augment.rotate_scale(img, np.zeros(2), np.full(2, 2.0))
    np.testing.assert_allclose(zin[:, 3, 3], img[:, 3, 3], atol=1e-4)
    zout = augment.rotate_scale(img, np.zeros(2), np.full(2, 0.5))
    assert np.all(zout[:, 0, 0] == 0)


def test_rotate_scale_matches_scipy_bilinear(monkeypatch):
    # Independent reference: scipy's order-1 spline with zeros outside, on the
    # same inverse map; small chunks so a batch spans several, the last partial.
    from scipy import ndimage

    monkeypatch.setattr(augment, '_WARP_PIXELS', 2 * 9 * 11)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 9, 11, 2)).astype(np.uint8)
    angle = np.array([17.0, -40.0, 90.0, 3.0, -120.0])
    zoom = np.array([0.7, 1.3, 1.0, 2.2, 0.5])
    out = augment.rotate_scale(img, angle, zoom)
    cy, cx = 4.0, 5.0
    yy, xx = np.meshgrid(np.arange(9) - cy, np.arange(11) - cx, indexing='ij')
    for i in range(5):
        t = np.deg2rad(angle[i])
        cos, sin = np.cos(t) / zoom[i], np.sin(t) / zoom[i]
        coords = [sin * xx + cos * yy + cy, cos * xx - sin * yy + cx]
        for ch in range(2):
            ref = ndimage.map_coordinates(
                img[i, :, :, ch].astype(np.float64), coords, order=1, mode='grid-constant'
            )
            np.testing.assert_allclose(out[i, :, :, ch], ref, atol=1e-3)


@pytest.mark.parametrize('warp_pixels', [1, 3 * 8 * 8, 1 << 16])
def test_rotate_scale_fused_crop_flip_equals_the_composed_ops(monkeypatch, warp_pixels):
    # The pipeline fuses warp, crop, flip and the 1/255 into one pass; it must
    # equal the three separate ops bit for bit, so augmentation streams (and
    # resumed runs) do not depend on the fusion or on the chunk size.
    monkeypatch.setattr(augment, '_WARP_PIXELS', warp_pixels)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (7, 8, 8, 3)).astype(np.uint8)
    angle = rng.uniform(-30, 30, 7)
    zoom = rng.uniform(0.7, 1.3, 7)
    oy = np.array([0, 6, 3, 1, 5, 3, 6])
    ox = np.array([6, 0, 3, 2, 4, 0, 6])
    flip = np.array([0, 1, 0, 1, 1, 0, 1], bool)
    fused = augment.rotate_scale(
        img, angle, zoom, offset_y=oy, offset_x=ox, flip=flip, padding=3, out_scale=1 / 255
    )
    composed = augment.pad_crop_flip(augment.rotate_scale(img, angle, zoom), oy, ox, flip, 3)
    np.testing.assert_array_equal(fused, composed * np.float32(1 / 255))
    # Padding shows as zeros: image 0 is shifted down 3 rows, image 1 (flipped) left 3 columns.
    assert np.all(fused[0, :3] == 0) and np.all(fused[1, :, 5:] == 0)


def test_uniform_hash_deterministic_and_spread():
    a = augment.uniform_hash(5, np.arange(10_000), 6)
    b = augment.uniform_hash(5, np.arange(10_000), 6)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 1
    assert abs(a.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(augment.uniform_hash(5, [42], 6)[0], a[42])
    assert not np.array_equal(augment.uniform_hash(6, np.arange(10), 6), a[:10])


def test_augmentation_differs_across_epochs(tmp_path):
    root = tmp_path / 'ramps'
    # 8 one-row ramps (id in channel 0, x-gradient in channel 1): a flip is
    # visible as a descending gradient.
    for split, n in (('train', 8), ('test', 2)):
        for k in range(n):
            img = np.zeros((4, 6, 3), np.uint8)
            img[..., 0] = 20 * (k + 1)
            img[..., 1] = np.arange(6) * 40
            d = root / split / ('a' if k % 2 else 'b')
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f'{k}.png')
    cfg = _cfg(tmp_path / 'tfds', name='image_folder', path=str(root), normalize=False, augment_flip=True)
    it = rd.make_train_iterator(cfg, seed=0, global_batch_size=8)
    flips = []
    for _ in range(4):
        b = next(it)
        ids = np.rint(b['image'][:, 0, 0, 0] * 255 / 20).astype(int)
        assert sorted(ids.tolist()) == list(range(1, 9))  # a permutation
        g = b['image'][:, 0, :, 1]
        flipped = g[:, 0] > g[:, -1]
        flips.append(dict(zip(ids.tolist(), flipped.tolist())))
    assert len({tuple(sorted(f.items())) for f in flips}) > 1


# --------------------------------------------------------------------------- image_folder


def _make_tree(root: Path, sizes=None, mode='RGB'):
    """train: 3 classes x 4 images, test: 3 classes x 2; 12x10 images."""
    rng = np.random.default_rng(0)
    classes = ['cat', 'dog', 'eel']
    for split, n in (('train', 4), ('test', 2)):
        for ci, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                h, w = sizes[k % len(sizes)] if sizes else (12, 10)
                shape = (h, w, 3) if mode == 'RGB' else (h, w)
                arr = rng.integers(0, 256, shape).astype(np.uint8)
                Image.fromarray(arr, mode).save(d / f'{cls}_{k}.png')
    (root / 'README.txt').write_text('not an image')
    return classes


def _tar(src: Path, dest: Path, wrap: bool):
    with tarfile.open(dest, 'w:gz') as tar:
        for child in sorted(src.iterdir()):
            if child.is_dir():
                tar.add(child, arcname=f'wrap/{child.name}' if wrap else child.name)
    return dest


def _all_examples(cfg, split):
    src = rd.get_builder(cfg).as_data_source(split)
    recs = src.__getitems__(list(range(len(src))))
    return sorted((bytes(r['image']), int(r['label'])) for r in recs)


def test_image_folder_tree_and_tgz(tmp_path):
    tree = tmp_path / 'tree'
    classes = _make_tree(tree)
    data_dir = tmp_path / 'tfds'
    cfg = _cfg(data_dir, name='image_folder', path=str(tree))
    info = rd.get_dataset_info(cfg)
    assert info.class_names == tuple(classes)
    assert info.num_classes == 3
    assert info.image_shape == (12, 10, 3)
    assert info.num_examples == {'train': 12, 'test': 6}
    assert info.name.startswith('image_folder/tree_')
    # Pixels are stored exactly (PNG is lossless).
    src = rd.get_builder(cfg).as_data_source('test')
    rec = src[0]
    name = None
    for path in (tree / 'test').rglob('*.png'):
        if np.array_equal(np.asarray(Image.open(path)), rec['image']):
            name = path
    assert name is not None and classes[rec['label']] == name.parent.name
    expected = {s: _all_examples(cfg, s) for s in ('train', 'test')}

    for wrap in (False, True):
        tgz = _tar(tree, tmp_path / f'tree_{wrap}.tgz', wrap)
        cfg_t = _cfg(data_dir, name='image_folder', path=str(tgz))
        info_t = rd.get_dataset_info(cfg_t)
        assert info_t.class_names == tuple(classes)
        assert info_t.num_examples == info.num_examples
        assert info_t.name != info.name  # separate datasets in one data_dir
        for s in ('train', 'test'):
            assert _all_examples(cfg_t, s) == expected[s]
    names = {p.name for p in (data_dir / 'image_folder').iterdir()}
    assert len(names) == 3

    batch = next(rd.make_train_iterator(cfg, seed=0, global_batch_size=4))
    assert batch['image'].shape == (4, 12, 10, 3)


def test_image_folder_grayscale_and_variable_sizes(tmp_path):
    tree = tmp_path / 'gray'
    _make_tree(tree, sizes=[(12, 10), (9, 14)], mode='L')
    cfg = _cfg(tmp_path / 'tfds', name='image_folder', path=str(tree))
    builder = rd.get_builder(cfg)
    assert tuple(builder.info.features['image'].shape) == (None, None, 1)
    shapes = {r['image'].shape for r in builder.as_data_source('train')}
    assert shapes == {(12, 10, 1), (9, 14, 1)}
    with pytest.raises(ValueError, match='image_size'):
        rd.get_dataset_info(cfg)
    cfg.image_size = 8
    assert rd.get_dataset_info(cfg).image_shape == (8, 8, 1)
    b = next(rd.make_train_iterator(cfg, seed=0, global_batch_size=6))
    assert b['image'].shape == (6, 8, 8, 1)


def test_image_folder_class_mismatch_names_class(tmp_path):
    tree = tmp_path / 'bad'
    _make_tree(tree)
    extra = tree / 'test' / 'zebra'
    extra.mkdir()
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(extra / 'z.png')
    with pytest.raises(ValueError, match="'zebra'"):
        ImageFolder(path=tree, data_dir=tmp_path / 'tfds')


def test_image_folder_missing_path(tmp_path):
    missing = tmp_path / 'no' / 'such' / 'folder'
    cfg = _cfg(tmp_path / 'tfds', name='image_folder', path=str(missing))
    with pytest.raises(FileNotFoundError) as e:
        rd.get_dataset_info(cfg)
    assert str(missing) in str(e.value)
    assert 'does not exist' in str(e.value)


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError) as e:
        rd.get_dataset_info(_cfg(tmp_path, name='nosuchset_xyz'))
    assert 'nosuchset_xyz' in str(e.value)
    assert 'digits' in str(e.value) and 'image_folder' in str(e.value)


def test_unknown_split(digits_dir):
    cfg = _cfg(digits_dir)
    with pytest.raises(ValueError) as e:
        rd.make_eval_iterator(cfg, 'validation', global_batch_size=8)
    assert "'validation'" in str(e.value)
    assert "'test'" in str(e.value) and "'train'" in str(e.value)
    cfg.train_split = 'bogus'
    with pytest.raises(ValueError, match='bogus'):
        rd.get_dataset_info(cfg)


def test_batch_not_divisible_by_process_count(digits_dir):
    cfg = _cfg(digits_dir)
    with pytest.raises(ValueError, match='30.*4'):
        rd.make_train_iterator(cfg, seed=0, global_batch_size=30, process_index=0, process_count=4)
    with pytest.raises(ValueError, match='30.*4'):
        rd.make_eval_iterator(cfg, 'test', global_batch_size=30, process_index=1, process_count=4)


def test_data_config_defaults():
    cfg = rd.data_config_defaults()
    assert cfg.name == 'digits' and cfg.path == '' and cfg.data_dir == ''
    assert (cfg.train_split, cfg.eval_split) == ('train', 'test')
    assert cfg.image_size == 0 and cfg.normalize == 'auto' and cfg.eval_resize == 0
    assert cfg.shuffle_seed == -1 and cfg.num_threads == 0 and cfg.num_workers == 0
    assert dict(cfg.augment) == {
        'crop_padding': 0,
        'flip': False,
        'rotation': 0.0,
        'scale': 0.0,
        'brightness': 0.0,
        'random_resized_crop': False,
        'crop_scale': (0.08, 1.0),
        'crop_ratio': (3.0 / 4.0, 4.0 / 3.0),
        'randaugment': '',
        'autoaugment': '',
        'mixup': 0.0,
        'cutmix': 0.0,
        'mix_prob': 1.0,
        'mix_switch_prob': 0.5,
    }


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not MNIST_TGZ.exists(), reason=f'shared dataset {MNIST_TGZ} not present')
def test_mnist10k_tgz_builds(tmp_path):
    cfg = _cfg(tmp_path, name='image_folder', path=str(MNIST_TGZ))
    start = time.time()
    info = rd.get_dataset_info(cfg)
    assert time.time() - start < 60
    assert info.num_examples == {'train': 8004, 'test': 1996}
    assert info.num_classes == 10
    assert info.class_names == tuple(str(i) for i in range(10))
    assert info.image_shape == (28, 28, 1)
    assert 0.1 < info.mean[0] < 0.15  # MNIST mean ~0.13
    counts = collections.Counter(_split_labels(cfg, 'test'))
    assert set(counts) == set(range(10))
    batch = next(rd.make_train_iterator(cfg, seed=0, global_batch_size=32))
    assert batch['image'].shape == (32, 28, 28, 1)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_TGZ.exists(), reason=f'shared dataset {CIFAR_TGZ} not present')
def test_cifar10_tgz_builds(tmp_path):
    cfg = _cfg(tmp_path, name='image_folder', path=str(CIFAR_TGZ), augment_crop_padding=4, augment_flip=True)
    info = rd.get_dataset_info(cfg)
    assert info.num_examples == {'train': 50000, 'test': 10000}
    assert info.image_shape == (32, 32, 3)
    assert info.class_names == (
        'airplane',
        'automobile',
        'bird',
        'cat',
        'deer',
        'dog',
        'frog',
        'horse',
        'ship',
        'truck',
    )
    np.testing.assert_allclose(info.mean, (0.491, 0.482, 0.447), atol=0.01)
    batch = next(rd.make_train_iterator(cfg, seed=0, global_batch_size=128))
    assert batch['image'].shape == (128, 32, 32, 3)
    n = sum(int(b['mask'].sum()) for b in rd.make_eval_iterator(cfg, 'test', global_batch_size=1000))
    assert n == 10000


def test_on_device_batches_match_the_host_pipeline_after_prepare(digits_dir):
    # data.on_device: the pipeline's uint8 images + draws, prepared in jit, equal the host's float
    # batch to float32 rounding (XLA contracts the normalisation's multiply-add); eval too. The crop
    # and flip alone, before normalisation, are bit for bit the host's.
    import jax

    from research.data import device_augment

    kw = dict(image_size=16, augment_crop_padding=2, augment_flip=True)
    for extra, atol in [
        ({}, 1e-6),
        (dict(augment_rotation=20.0, augment_scale=0.3, augment_brightness=0.2), 1e-5),
    ]:
        host_cfg = _cfg(digits_dir, **kw, **extra)
        dev_cfg = _cfg(digits_dir, **kw, **extra, on_device=True)
        aug = device_augment.DeviceAugment.from_config(dev_cfg, 1)
        prepare = jax.jit(lambda b: device_augment.prepare_batch(b, aug))
        host = _take(rd.make_train_iterator(host_cfg, seed=4, global_batch_size=16), 2)
        dev = _take(rd.make_train_iterator(dev_cfg, seed=4, global_batch_size=16), 2)
        for h, d in zip(host, dev):
            assert d['image'].dtype == np.uint8 and d['image'].shape == (16, 16, 16, 1)
            assert set(d['aug']) == {'offset_y', 'offset_x', 'flip'} | (
                {'angle', 'zoom', 'delta'} if extra else set()
            )
            np.testing.assert_array_equal(h['label'], d['label'])
            np.testing.assert_allclose(np.asarray(prepare(d)['image']), h['image'], rtol=0, atol=atol)
        he = list(rd.make_eval_iterator(host_cfg, 'test', global_batch_size=64))
        de = list(rd.make_eval_iterator(dev_cfg, 'test', global_batch_size=64))
        assert de[-1]['image'].dtype == np.uint8 and not de[-1]['mask'].all()  # padded last batch
        for h, d in zip(he, de):
            np.testing.assert_allclose(np.asarray(prepare(d)['image']), h['image'], rtol=0, atol=1e-6)
    raw = dev[0]['image']
    u = augment.uniform_hash(9, np.arange(16), augment.NUM_UNIFORMS)
    crop = dict(crop_padding=2, flip=True)
    on_device = jax.jit(lambda x, p: device_augment.augment(x, p, device_augment.DeviceAugment(**crop)))
    np.testing.assert_array_equal(
        np.asarray(on_device(raw, augment.augment_params(u, **crop))), augment.augment_batch(raw, u, **crop)
    )


# --------------------------------------------------------------------------- splits as TFDS reads them


@pytest.mark.parametrize(
    'split, n', [('train[:90%]', 1293), ('train[:200]', 200), ('train[90%:]', 144), ('train+test', 1797)]
)
def test_split_slices_tfds_reads_are_accepted(digits_dir, split, n):
    cfg = _cfg(digits_dir, train_split=split)
    info = rd.get_dataset_info(cfg)
    assert info.num_examples[split] == n
    assert rd.steps_per_epoch(cfg, 100) == n // 100
    batch = next(rd.make_train_iterator(cfg, seed=0, global_batch_size=100))
    assert batch['image'].shape[0] == 100


def test_bad_split_is_one_line_naming_the_key_and_value(digits_dir):
    cfg = _cfg(digits_dir, train_split='train[:200%]')
    with pytest.raises(ValueError) as e:
        rd.get_dataset_info(cfg)
    msg = str(e.value)
    assert '\n' not in msg
    assert msg.startswith("data.train_split='train[:200%]': not a split of dataset 'digits'")
    assert 'percent slice boundaries should be in [-100, 100]' in msg and 'its splits: test, train' in msg
    cfg = _cfg(digits_dir, eval_split='validation')
    with pytest.raises(ValueError, match=r"^data.eval_split='validation': not a split of dataset 'digits'"):
        rd.make_eval_iterator(cfg, 'validation', global_batch_size=8)


def test_launch_with_a_bad_split_prints_one_line(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            'launch.py',
            '--config=experiments/classification/lenet5_digits.py',
            '--config.data.train_split=train[:200%]',
            f'--config.data.data_dir={tmp_path / "tfds"}',
            f'--workdir={tmp_path / "run"}',
            '--progress=false',
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'PYTHONPATH': str(repo)},
    )
    assert out.returncode != 0 and 'Traceback' not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "data.train_split='train[:200%]'" in last and 'percent slice boundaries' in last
