"""RandAugment / AutoAugment (research.data.autoaugment) against torchvision's, op by op and draw by draw."""

import io

import numpy as np
import pytest
from imagenet_jpegs import cifar_photos, large_jpeg
from PIL import Image

import research.data as rd
from research.data import augment, autoaugment, pipeline

torch = pytest.importorskip('torch')
pytest.importorskip('torchvision')
import torchvision.transforms.autoaugment as tva
from torchvision.transforms import InterpolationMode


@pytest.fixture(scope='module')
def images():
    photos = cifar_photos(3)
    rgb = [
        Image.open(io.BytesIO(large_jpeg(p, s, seed=i))).convert('RGB')
        for i, (p, s) in enumerate(zip(photos, [(224, 224), (180, 120), (97, 131)]))
    ]
    return rgb + [rgb[1].convert('L')]


@pytest.mark.parametrize('bins, size', [(31, (224, 224)), (10, (120, 180)), (17, (131, 97))])
def test_magnitude_tables_equal_torchvision(bins, size):
    theirs = tva.RandAugment()._augmentation_space(bins, size)
    ours = autoaugment.magnitude_table(bins, *size)
    assert list(ours) == list(theirs)  # same ops, same order (the op index draws into it)
    for name, (mags, signed) in theirs.items():
        assert ours[name][1] == signed
        if mags.ndim == 0:
            assert ours[name][0] is None
        else:
            np.testing.assert_array_equal(ours[name][0], mags.numpy(), err_msg=name)  # float32, bit for bit


def test_linspace32_equals_torch_linspace():
    # The translate magnitudes depend on the image size: every size up to 512 px, and random ranges.
    for n in (10, 31):
        for w in range(1, 513):
            np.testing.assert_array_equal(
                autoaugment._linspace32(0.0, 150 / 331 * w, n), torch.linspace(0.0, 150 / 331 * w, n).numpy()
            )
    rng = np.random.default_rng(0)
    for _ in range(500):
        a, b = rng.uniform(-300, 300, 2)
        n = int(rng.integers(2, 64))
        np.testing.assert_array_equal(autoaugment._linspace32(a, b, n), torch.linspace(a, b, n).numpy())


def test_every_op_equals_torchvision_apply_op(images):
    ops = list(autoaugment.RANDAUGMENT_OPS) + ['Invert']
    for img in images:
        table = autoaugment.magnitude_table(31, img.height, img.width)
        for name in ops:
            mags = table.get(name, (None, False))[0]
            for m in [0, 4, 9, 30] if mags is not None else [None]:
                mag = float(mags[m]) if mags is not None else 0.0
                for sign in (1.0, -1.0) if table.get(name, (None, False))[1] else (1.0,):
                    got = autoaugment.apply_op(img, name, sign * mag)
                    want = tva._apply_op(img, name, sign * mag, InterpolationMode.NEAREST, None)
                    assert got.mode == want.mode and got.size == want.size
                    np.testing.assert_array_equal(
                        np.asarray(got), np.asarray(want), err_msg=f'{name} {sign * mag}'
                    )


class _Ints:
    """Replaces torch.randint / torch.rand inside torchvision.transforms.autoaugment with given values."""

    def __init__(self, values):
        self._v = list(values)

    def __getattr__(self, name):
        return getattr(torch, name)

    def randint(self, *args, **kwargs):
        return torch.tensor([self._v.pop(0)]) if args[-1] == (1,) else torch.tensor(self._v.pop(0))

    def rand(self, shape):
        return torch.tensor(self._v.pop(0), dtype=torch.float32)


def test_randaugment_equals_torchvision_with_the_same_draws(images, monkeypatch):
    rng = np.random.default_rng(0)
    for num_ops, magnitude in ((2, 9), (3, 15), (1, 30)):
        ra = autoaugment.RandAugment(num_ops, magnitude)
        ref = tva.RandAugment(num_ops, magnitude)
        seen = set()
        for trial in range(40):
            img = images[trial % len(images)]
            u = rng.random(ra.uniforms_needed)
            ops = ra.ops(u, img.height, img.width)
            ints = []  # torch draws an op index, then a sign only for signed ops (1 = negate)
            for t in range(num_ops):
                ints.append(int(u[2 * t] * 14))
                if autoaugment.magnitude_table(31, 1, 1)[autoaugment.RANDAUGMENT_OPS[ints[-1]]][1]:
                    ints.append(int(u[2 * t + 1] < 0.5))
            seen.update(name for name, _ in ops)
            monkeypatch.setattr(tva, 'torch', _Ints(ints))
            want = ref(img)
            monkeypatch.setattr(tva, 'torch', torch)
            np.testing.assert_array_equal(np.asarray(ra(img, u)), np.asarray(want), err_msg=str(ops))
        assert len(seen) >= 10


def test_autoaugment_imagenet_equals_torchvision_with_the_same_draws(images, monkeypatch):
    rng = np.random.default_rng(1)
    for policy in ('imagenet', 'cifar10', 'svhn'):
        aa = autoaugment.AutoAugment(policy)
        ref = tva.AutoAugment(tva.AutoAugmentPolicy(policy))
        applied = 0
        for trial in range(60):
            img = images[trial % len(images)]
            u = rng.random(aa.uniforms_needed)
            draws = [int(u[0] * 25), [u[1], u[2]], [int(u[3] >= 0.5), int(u[4] >= 0.5)]]  # signs 0 = negate
            monkeypatch.setattr(tva, 'torch', _Ints(draws))
            want = ref(img)
            monkeypatch.setattr(tva, 'torch', torch)
            applied += len(aa.ops(u, img.height, img.width))
            np.testing.assert_array_equal(np.asarray(aa(img, u)), np.asarray(want), err_msg=f'{policy} {u}')
        assert 40 < applied < 100


def test_parse_and_refuse():
    assert autoaugment.parse_randaugment('') is None
    ra = autoaugment.parse_randaugment('2,9')
    assert (ra.num_ops, ra.magnitude, ra.num_bins) == (2, 9, 31)
    assert autoaugment.parse_randaugment((3, 5, 11)).num_bins == 11  # the command line parses 3,5,11 so
    with pytest.raises(ValueError, match="randaugment='2'"):
        autoaugment.parse_randaugment('2')
    with pytest.raises(ValueError, match='magnitude < bins'):
        autoaugment.parse_randaugment('2,31')
    with pytest.raises(ValueError, match="autoaugment='imagnet'"):
        autoaugment.make_policy('', 'imagnet')
    with pytest.raises(ValueError, match='pick one'):
        autoaugment.make_policy('2,9', 'imagenet')


def _digits_cfg(data_dir, **kw):
    cfg = rd.data_config_defaults()
    cfg.data_dir = str(data_dir)
    cfg.image_size = 16
    cfg.normalize = False
    for k, v in kw.items():
        cfg.augment[k] = v
    return cfg


def test_fixed_size_pipeline_applies_the_policy_after_crop_and_flip(tmp_path):
    # Fixed-size path: pad-crop-flip on uint8, then the policy per example, then x / 255.
    cfg = _digits_cfg(tmp_path, crop_padding=2, flip=True, randaugment='2,9')
    it = rd.make_train_iterator(cfg, seed=3, global_batch_size=8)
    fn = it._fn
    b = next(it)
    pos = fn.positions(0)
    raw, _ = fn._data.gather(fn.source_indices(pos))
    u = augment.uniform_hash(fn._aug_seed, pos, augment.NUM_UNIFORMS)
    p = augment.augment_params(u, crop_padding=2, flip=True)
    crops = augment.pad_crop_flip(raw, p['offset_y'], p['offset_x'], p['flip'], 2)
    ra = autoaugment.RandAugment(2, 9)
    pu = fn.policy_uniforms(pos)
    expect = np.stack(
        [np.asarray(ra(Image.fromarray(c[..., 0]), pu[k]))[..., None] for k, c in enumerate(crops)]
    )
    np.testing.assert_array_equal(np.rint(b['image'] * 255).astype(np.uint8), expect)
    assert not np.array_equal(expect, crops)
    # data.on_device cannot take a host policy after a device crop: refused by name.
    cfg.on_device = True
    with pytest.raises(ValueError, match='randaugment / autoaugment'):
        rd.make_train_iterator(cfg, seed=3, global_batch_size=8)
    cfg.on_device = False
    cfg.augment.randaugment = ''
    cfg.augment.random_resized_crop = True
    with pytest.raises(ValueError, match='data.augment.crop_padding=2'):
        pipeline.check_settings(cfg)
