"""The ImageNet recipe's input side against torchvision: random-resized crop, resize + center-crop
evaluation, ImageNet normalisation, full-resolution storage, worker processes, exact resume."""

import math

import numpy as np
import pytest
from imagenet_jpegs import SIZES, make_jpeg_tree
from PIL import Image

import research.data as rd
from research.data import augment, datasets, pipeline, transforms

torch = pytest.importorskip('torch')
tv = pytest.importorskip('torchvision')
from torchvision.transforms import functional as TF


def _cfg(data_dir, **kw):
    cfg = rd.data_config_defaults()
    cfg.data_dir = str(data_dir)
    for k, v in kw.items():
        if k.startswith('augment_'):
            cfg.augment[k[len('augment_') :]] = v
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(scope='module')
def jpeg_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('jpegs')
    files = make_jpeg_tree(root / 'tree')
    return root / 'tree', root / 'tfds', files


def _folder_cfg(jpeg_tree, **kw):
    tree, data_dir, _ = jpeg_tree
    kw.setdefault('image_size', 224)
    return _cfg(data_dir, name='image_folder', path=str(tree), train_split='train', eval_split='val', **kw)


def _source_order(cfg, split):
    """The JPEG bytes of a split in the builder's order (the pipeline's example indices)."""
    data = datasets.get_full_split(cfg, split)
    refs, labels = data.records(np.arange(len(data)))
    return [bytes(np.asarray(r).tobytes()) for r in refs], labels


# --------------------------------------------------------------------------- crop geometry


class _Draws:
    """Stands in for torch in torchvision's RandomResizedCrop.get_params: its ``uniform_`` and
    ``randint`` draws come from the uniforms we give (``a + u (b - a)`` and ``floor(u n)``)."""

    def __init__(self, uniforms):
        self._u = list(uniforms)

    def _next(self):
        return float(self._u.pop(0))

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *shape):
        draws = self

        class _T:
            def uniform_(self, a, b):
                a, b = float(a), float(b)
                return torch.tensor([a + draws._next() * (b - a)], dtype=torch.float64)

        return _T()

    def randint(self, low, high, size):
        return torch.tensor([low + int(self._next() * (high - low))])


@pytest.mark.parametrize(
    'scale, ratio',
    [
        ((0.08, 1.0), (3 / 4, 4 / 3)),  # the recipe's: 1 fallback in these 300 draws
        ((0.9, 1.0), (0.2, 0.3)),  # too narrow: fallback, full height
        ((0.5, 1.0), (4.0, 5.0)),  # too wide: fallback, full width
        ((1.5, 2.0), (0.5, 2.0)),  # more than the image: fallback, the whole image (most sizes)
    ],
)
def test_rrc_box_matches_torchvision_get_params(monkeypatch, scale, ratio):
    # torchvision's own get_params, its draws replaced by ours, gives our box: all ten tries, the
    # integer rounding and the center-crop fallback (the odd ratios force it on most images).
    import torchvision.transforms.transforms as tvT

    rng = np.random.default_rng(0)
    fallbacks = 0
    for trial in range(300):
        w, h = SIZES[trial % len(SIZES)]
        u = rng.random(transforms.RRC_UNIFORMS)
        ours = transforms.rrc_box(h, w, u, scale, ratio)
        # torch draws scale, ratio, then the two offsets only for the try that fits: feed it the
        # same uniforms in that order.
        seq = []
        for t in range(transforms.RRC_TRIES):
            seq += [u[4 * t], u[4 * t + 1]]
            area = h * w * (scale[0] + u[4 * t] * (scale[1] - scale[0]))
            lr = math.log(ratio[0]) + u[4 * t + 1] * (math.log(ratio[1]) - math.log(ratio[0]))
            cw, ch = round(math.sqrt(area * math.exp(lr))), round(math.sqrt(area / math.exp(lr)))
            if 0 < cw <= w and 0 < ch <= h:
                seq += [u[4 * t + 2], u[4 * t + 3]]
                break
        else:
            fallbacks += 1
        monkeypatch.setattr(tvT, 'torch', _Draws(seq))
        img = Image.new('RGB', (w, h))
        theirs = tvT.RandomResizedCrop.get_params(img, list(scale), list(ratio))
        monkeypatch.setattr(tvT, 'torch', torch)
        assert tuple(int(v) for v in theirs) == ours, (w, h, u[:8])
    assert fallbacks > (0 if scale == (0.08, 1.0) else 100)


def test_rrc_box_statistics():
    # Over many draws: the crop area fraction spans [0.08, 1] and the aspect ratio [3/4, 4/3].
    u = augment.uniform_hash(3, np.arange(4000), transforms.RRC_UNIFORMS)
    boxes = np.array([transforms.rrc_box(375, 500, row) for row in u])
    area = boxes[:, 2] * boxes[:, 3] / (375 * 500)
    ratio = boxes[:, 3] / boxes[:, 2]
    assert 0.075 < area.min() < 0.1 and area.max() > 0.95
    assert 0.74 < ratio.min() < 0.8 and 1.28 < ratio.max() < 1.35
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 375).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 500).all()


def test_resized_crop_and_eval_transform_equal_torchvision_on_pil(jpeg_tree):
    # The same Pillow calls as torchvision's functional API on PIL images: bit for bit.
    _, _, files = jpeg_tree
    for i, path in enumerate(files[:8]):
        img = transforms.open_image(path.read_bytes())
        ref = Image.open(path).convert('RGB')
        box = transforms.rrc_box(img.height, img.width, augment.uniform_hash(i, np.arange(1), 40)[0])
        np.testing.assert_array_equal(
            np.asarray(transforms.resized_crop(img, box, (224, 224))),
            np.asarray(TF.resized_crop(ref, *box, [224, 224], antialias=True)),
        )
        for resize, crop in ((256, 224), (232, 224), (0, 224), (160, 224), (300, 299)):
            expect = TF.center_crop(TF.resize(ref, resize) if resize else ref, [crop, crop])
            got = transforms.eval_transform(img, resize, (crop, crop))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expect), err_msg=f'{path} {resize}')


# --------------------------------------------------------------------------- the pipeline


def test_large_image_folder_stores_jpeg_bytes(jpeg_tree):
    # ImageNet-size images are stored as the files' bytes (not decoded, not resized): the records are
    # the JPEG files themselves, and the dataset reports varying sizes.
    cfg = _folder_cfg(jpeg_tree)
    builder = rd.get_builder(cfg)
    assert datasets.image_storage(builder) == 'bytes'
    assert datasets.output_shape(cfg) == (224, 224, 3)
    stored, _ = _source_order(cfg, 'train')
    _, _, files = jpeg_tree
    assert sorted(stored) == sorted(p.read_bytes() for p in files if '/train/' in str(p))


def test_eval_pipeline_equals_resnet50_v2_transforms(jpeg_tree):
    # The parity: data.eval_resize=232 + image_size=224 + normalize='imagenet' gives what
    # ResNet50_Weights.IMAGENET1K_V2.transforms() gives on the same JPEG files, to 1/255 per pixel
    # before normalisation (measured: bit for bit).
    preset = tv.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    assert (preset.resize_size, preset.crop_size) == ([232], [224])
    cfg = _folder_cfg(jpeg_tree, eval_resize=232, normalize='imagenet')
    stored, labels = _source_order(cfg, 'val')
    batches = list(rd.make_eval_iterator(cfg, 'val', global_batch_size=4))
    ours = np.concatenate([b['image'][b['mask']] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b['label'][b['mask']] for b in batches]), labels)
    import io

    theirs = np.stack([preset(Image.open(io.BytesIO(s)).convert('RGB')).numpy() for s in stored])
    std = np.asarray(datasets.IMAGENET_STD, np.float32)
    diff = np.abs(ours - theirs.transpose(0, 2, 3, 1)) * std  # back on the [0, 1] pixel scale
    assert diff.max() <= 1 / 255 + 1e-6
    assert diff.max() < 1e-5  # in fact the same pixels: only float32 rounding of the normalisation


def test_train_crop_geometry_equals_torchvision_with_the_crop_fixed(jpeg_tree):
    # The train batch's example k is torchvision's resized_crop(img, *box, 224) (+ hflip where drawn),
    # box being the pipeline's own draw (rrc_box on its counter-based uniforms).
    cfg = _folder_cfg(jpeg_tree, augment_random_resized_crop=True, augment_flip=True, normalize=False)
    stored, labels = _source_order(cfg, 'train')
    fn_it = rd.make_train_iterator(cfg, seed=5, global_batch_size=4)
    batches = [next(fn_it) for _ in range(4)]  # two epochs
    fn = fn_it._fn
    flips_seen = set()
    for step, b in enumerate(batches):
        idx = fn.source_indices(fn.positions(step))
        pos = fn.positions(step)
        u = augment.uniform_hash(fn._seed ^ pipeline._CROP_TAG, pos, transforms.RRC_UNIFORMS)
        flips = augment.uniform_hash(fn._aug_seed, pos, augment.NUM_UNIFORMS)[:, 2] < 0.5
        np.testing.assert_array_equal(b['label'], labels[idx])
        for k, i in enumerate(idx):
            import io

            ref = Image.open(io.BytesIO(stored[i])).convert('RGB')
            box = transforms.rrc_box(ref.height, ref.width, u[k])
            expect = TF.resized_crop(ref, *box, [224, 224], antialias=True)
            if flips[k]:
                expect = TF.hflip(expect)
            flips_seen.add(bool(flips[k]))
            np.testing.assert_array_equal(np.rint(b['image'][k] * 255).astype(np.uint8), np.asarray(expect))
    assert flips_seen == {True, False}


def test_normalize_imagenet_and_auto(jpeg_tree, tmp_path):
    cfg = _folder_cfg(jpeg_tree, normalize='imagenet')
    assert datasets.norm_constants(cfg, 3) == (datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
    info = rd.get_dataset_info(cfg)
    assert (info.mean, info.std) == (datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
    cfg.normalize = True
    own = datasets.norm_constants(cfg, 3)
    assert own != (datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
    cfg.normalize = False
    assert datasets.norm_constants(cfg, 3) == ((0.0,) * 3, (1.0,) * 3)
    cfg.normalize = 'imagenett'
    with pytest.raises(ValueError, match="data.normalize='imagenett'"):
        datasets.norm_constants(cfg, 3)
    # 'auto' (the default) follows the weights: ImageNet's for torchvision weights, else the dataset's.
    from research.config import base_config

    c = base_config()
    c.data = _folder_cfg(jpeg_tree)
    assert c.data.normalize == 'auto' and datasets.resolve_normalize(c) is True
    assert datasets.resolved_data_config(c).normalize is True
    for ckpt in ('torchvision:resnet50.IMAGENET1K_V2', '/w/resnet50-11ad3fa6.pth'):
        c.init.checkpoint = ckpt
        assert datasets.resolve_normalize(c) == 'imagenet'
        assert datasets.norm_constants(datasets.resolved_data_config(c), 3)[0] == datasets.IMAGENET_MEAN
    c.data.normalize = False  # an explicit choice wins
    assert datasets.resolve_normalize(c) is False


def _assert_streams_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)


def test_worker_processes_give_the_same_stream_and_resume_exactly(jpeg_tree):
    # data.num_workers=2 (grain's mp_prefetch, worker w makes batches w, w + 2, ...) gives the stream
    # of the main thread, bit for bit; the state {'next_index': k} restores it exactly, in either mode.
    kw = {
        'augment_random_resized_crop': True,
        'augment_flip': True,
        'augment_randaugment': '2,9',
        'normalize': 'imagenet',
    }
    ref_it = rd.make_train_iterator(_folder_cfg(jpeg_tree, **kw), seed=1, global_batch_size=4)
    ref = [next(ref_it) for _ in range(5)]  # 2.5 epochs of the 8 train images
    assert ref_it.get_state() == {'next_index': 5}
    it = rd.make_train_iterator(_folder_cfg(jpeg_tree, num_workers=2, **kw), seed=1, global_batch_size=4)
    try:
        got = [next(it) for _ in range(3)]
        _assert_streams_equal(got, ref[:3])
        state = it.get_state()
        assert state == {'next_index': 3}
        del got
        threads = rd.make_train_iterator(
            _folder_cfg(jpeg_tree, num_threads=2, **kw), seed=1, global_batch_size=4
        )
        threads.set_state(state)
        _assert_streams_equal([next(threads) for _ in range(2)], ref[3:])
        it.set_state({'next_index': 1})  # restarts the workers at batch 1
        _assert_streams_equal([next(it) for _ in range(4)], ref[1:])
    finally:
        it.close()
    # Eval with workers: every example once, in order, as without.
    cfg = _folder_cfg(jpeg_tree, eval_resize=256, normalize='imagenet')
    plain = list(rd.make_eval_iterator(cfg, 'val', global_batch_size=4))
    ev = rd.make_eval_iterator(
        _folder_cfg(jpeg_tree, eval_resize=256, normalize='imagenet', num_workers=2),
        'val',
        global_batch_size=4,
    )
    try:
        _assert_streams_equal(list(ev), plain)
    finally:
        ev.close()


def test_on_device_with_full_resolution_crops(jpeg_tree):
    # data.on_device + random_resized_crop: the host decodes, crops, flips (the expensive part) and
    # ships uint8; the step only normalises (no 'aug' draws). Same floats as the host pipeline.
    import jax

    from research.data import device_augment

    kw = {
        'augment_random_resized_crop': True,
        'augment_flip': True,
        'normalize': 'imagenet',
        'eval_resize': 256,
    }
    host = _folder_cfg(jpeg_tree, **kw)
    dev = _folder_cfg(jpeg_tree, on_device=True, **kw)
    aug = device_augment.DeviceAugment.from_config(dev, 3)
    assert aug.mean == datasets.IMAGENET_MEAN
    prepare = jax.jit(lambda b: device_augment.prepare_batch(b, aug)['image'])
    h = next(rd.make_train_iterator(host, seed=2, global_batch_size=4))
    d = next(rd.make_train_iterator(dev, seed=2, global_batch_size=4))
    assert set(d) == {'image', 'label'} and d['image'].dtype == np.uint8
    np.testing.assert_allclose(np.asarray(prepare(d)), h['image'], rtol=0, atol=1e-5)
    he = next(rd.make_eval_iterator(host, 'val', global_batch_size=8))
    de = next(rd.make_eval_iterator(dev, 'val', global_batch_size=8))
    np.testing.assert_allclose(np.asarray(prepare(de)), he['image'], rtol=0, atol=1e-5)


def test_converted_resnet50_logits_equal_torch_on_the_pipelines_images(jpeg_tree):
    # End to end: JPEG files -> this package's eval pipeline (resize 232, crop 224, ImageNet
    # normalisation) and train crops (random-resized crop + flip, the crop drawn by the pipeline) ->
    # the converted ResNet-50, against the same files -> ResNet50_Weights.IMAGENET1K_V2.transforms()
    # (and torchvision's resized_crop + hflip with the same box) -> torch's ResNet-50. Random weights,
    # BatchNorm statistics calibrated on this batch so activations have realistic scales.
    import io

    import jax

    from research.interop import torchvision as tvi

    preset = tv.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    ev_cfg = _folder_cfg(jpeg_tree, eval_resize=232, normalize='imagenet')
    stored, _ = _source_order(ev_cfg, 'val')
    ours_eval = np.concatenate(
        [b['image'][b['mask']] for b in rd.make_eval_iterator(ev_cfg, 'val', global_batch_size=6)]
    )
    theirs_eval = [preset(Image.open(io.BytesIO(s)).convert('RGB')) for s in stored]
    tr_cfg = _folder_cfg(jpeg_tree, augment_random_resized_crop=True, augment_flip=True, normalize='imagenet')
    train_stored, _ = _source_order(tr_cfg, 'train')
    it = rd.make_train_iterator(tr_cfg, seed=7, global_batch_size=4)
    batch, fn = next(it), it._fn
    pos = fn.positions(0)
    u = augment.uniform_hash(fn._seed ^ pipeline._CROP_TAG, pos, transforms.RRC_UNIFORMS)
    flips = augment.uniform_hash(fn._aug_seed, pos, augment.NUM_UNIFORMS)[:, 2] < 0.5
    theirs_train = []
    norm = tv.transforms.Normalize(datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
    for k, i in enumerate(fn.source_indices(pos)):
        img = Image.open(io.BytesIO(train_stored[i])).convert('RGB')
        crop = TF.resized_crop(
            img, *transforms.rrc_box(img.height, img.width, u[k]), [224, 224], antialias=True
        )
        crop = TF.hflip(crop) if flips[k] else crop
        theirs_train.append(norm(TF.to_tensor(crop)))
    x_torch = torch.stack(theirs_eval + theirs_train)
    x_ours = np.concatenate([ours_eval, batch['image']])
    np.testing.assert_allclose(x_ours, x_torch.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-5)

    torch.manual_seed(0)
    model = tvi.torchvision_model('resnet50')
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the statistics of this batch
            m.reset_running_stats()
    with torch.no_grad():
        model.train()(x_torch)
        ref = model.eval()(x_torch).numpy()
    variables = tvi.from_torchvision('resnet50', model)
    flax_model = tvi.flax_model('resnet50')
    out = np.asarray(jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(variables, x_ours))
    err = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
    print(f'ResNet-50 logits, max rel. error {err:.2e} over {len(ref)} images')
    assert err < 1e-4, err
    assert np.array_equal(out.argmax(-1), ref.argmax(-1))


def test_big_in_memory_splits_are_reread_by_workers_not_pickled(jpeg_tree, monkeypatch):
    # What a worker process gets: the stored images themselves while small, else only the data
    # source (the worker reads the same records).
    import pickle

    data = datasets.get_full_split(_folder_cfg(jpeg_tree), 'train')
    assert data.in_memory
    small = pickle.loads(pickle.dumps(data))
    assert small.in_memory
    monkeypatch.setattr(datasets, 'MAX_PICKLED_BYTES', 1000)
    big = pickle.loads(pickle.dumps(data))
    assert not big.in_memory and len(pickle.dumps(data)) < 100_000
    idx = np.array([5, 0, 7])
    (a, la), (b, lb) = data.records(idx), big.records(idx)
    assert [bytes(np.asarray(r)) for r in a] == [bytes(np.asarray(r)) for r in b] and np.array_equal(la, lb)
    digits = datasets.get_split(_cfg(jpeg_tree[1], image_size=16), 'train')
    lazy = pickle.loads(pickle.dumps(digits))
    assert not lazy.in_memory
    np.testing.assert_array_equal(lazy.gather(idx)[0], digits.gather(idx)[0])
