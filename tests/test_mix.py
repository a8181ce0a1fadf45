"""mixup / CutMix (research.data.mix) against torchvision.transforms.v2 with fixed draws, and the
soft-target loss (research.train.losses) against torch's cross_entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import data_config_defaults, mix
from research.train import losses

torch = pytest.importorskip('torch')
pytest.importorskip('torchvision')
import torchvision.transforms.v2._augment as v2aug
from torchvision.transforms import v2


class _Randint:
    def __init__(self, values):
        self._v = list(values)

    def __getattr__(self, name):
        return getattr(torch, name)

    def randint(self, high, size):
        return torch.tensor([self._v.pop(0)])


def _batch(b=6, h=13, w=17, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((b, h, w, 3)).astype(np.float32), rng.integers(0, k, b)


def test_cutmix_box_and_batch_equal_torchvision_v2(monkeypatch):
    images, labels = _batch()
    b, h, w, _ = images.shape
    rng = np.random.default_rng(1)
    box_fn = jax.jit(lambda lam, x, y: mix.cutmix_box(lam, x, y, h, w))
    for trial in range(60):
        lam = float(rng.beta(1.0, 1.0)) if trial else 0.0  # lam 0: the largest box
        r_x, r_y = int(rng.integers(w)), int(rng.integers(h))
        ref = v2.CutMix(alpha=1.0, num_classes=5)
        monkeypatch.setattr(ref._dist, 'sample', lambda shape, lam=lam: torch.tensor(lam))
        monkeypatch.setattr(v2aug, 'torch', _Randint([r_x, r_y] * 2))  # make_params, then the call
        params = ref.make_params([torch.zeros(b, 3, h, w)])
        out_x, out_y = ref(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(labels))
        monkeypatch.setattr(v2aug, 'torch', torch)
        box, lam_adj = box_fn(lam, r_x, r_y)
        assert tuple(int(v) for v in box) == params['box']
        assert float(lam_adj) == pytest.approx(params['lam_adjusted'], abs=1e-7)
        # the box's area is what the targets are mixed by
        x1, y1, x2, y2 = params['box']
        assert params['lam_adjusted'] == pytest.approx(1 - (x2 - x1) * (y2 - y1) / (h * w))
        got_x, got_y = mix.cutmix(jnp.asarray(images), mix.one_hot(labels, 5), lam, r_x, r_y)
        np.testing.assert_array_equal(np.asarray(got_x), out_x.numpy().transpose(0, 2, 3, 1))
        np.testing.assert_allclose(np.asarray(got_y), out_y.numpy(), rtol=0, atol=1e-6)


def test_mixup_equals_torchvision_v2(monkeypatch):
    images, labels = _batch(seed=2)
    for lam in (0.0, 0.3, 0.77, 1.0):
        ref = v2.MixUp(alpha=0.2, num_classes=5)
        monkeypatch.setattr(ref._dist, 'sample', lambda shape, lam=lam: torch.tensor(lam))
        out_x, out_y = ref(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(labels))
        got_x, got_y = mix.mixup(jnp.asarray(images), mix.one_hot(labels, 5), lam)
        np.testing.assert_allclose(np.asarray(got_x), out_x.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got_y), out_y.numpy(), rtol=0, atol=1e-6)


def test_mix_batch_choice_probability_and_identity():
    images, labels = _batch(b=8, seed=3)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    off = mix.MixSettings()
    out, t = mix.mix_batch(jax.random.key(0), x, y, 5, off)
    assert out is x and np.array_equal(np.asarray(t), np.eye(5)[labels])
    both = mix.MixSettings(mixup=0.2, cutmix=1.0, prob=0.8, switch_prob=0.5)
    f = jax.jit(lambda k: mix.mix_batch(k, x, y, 5, both))
    kinds = {'none': 0, 'cutmix': 0, 'mixup': 0}
    for i in range(200):
        out, t = f(jax.random.key(i))
        out, t = np.asarray(out), np.asarray(t)
        np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)
        changed = out != images
        if not changed.any():
            kinds['none'] += 1
            np.testing.assert_array_equal(t, np.eye(5)[labels])
        elif np.all((out == images) | (out == np.roll(images, 1, 0))):  # pasted pixels only: CutMix
            kinds['cutmix'] += 1
            frac = changed[..., 0].mean(axis=(1, 2))  # the box's area per example (where pairs differ)
            lam = 1 - frac.max()
            onehot = np.eye(5)[labels]
            np.testing.assert_allclose(t, lam * onehot + (1 - lam) * np.roll(onehot, 1, 0), atol=1e-6)
        else:
            kinds['mixup'] += 1
    # mixed with probability 0.8, half of those by CutMix (a CutMix box can be empty: rare)
    assert 20 <= kinds['none'] <= 65 and kinds['cutmix'] >= 55 and kinds['mixup'] >= 55, kinds


def test_settings_from_config_refuse_bad_values():
    c = data_config_defaults()
    assert not mix.MixSettings.from_config(c).enabled
    c.augment.mixup, c.augment.cutmix = 0.2, 1.0
    assert mix.MixSettings.from_config(c) == mix.MixSettings(0.2, 1.0, 1.0, 0.5)
    c.augment.mix_prob = 1.5
    with pytest.raises(ValueError, match='data.augment.mix_prob=1.5'):
        mix.MixSettings.from_config(c)
    c.augment.mix_prob, c.augment.cutmix = 1.0, -1.0
    with pytest.raises(ValueError, match='data.augment.cutmix=-1.0'):
        mix.MixSettings.from_config(c)


def test_soft_target_cross_entropy_equals_torch():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, 7)
    soft = rng.random((7, 11)).astype(np.float32)
    soft /= soft.sum(1, keepdims=True)
    for eps in (0.0, 0.1):
        for t in (soft, np.eye(11, dtype=np.float32)[labels]):
            want = torch.nn.functional.cross_entropy(
                torch.from_numpy(logits), torch.from_numpy(t), reduction='none', label_smoothing=eps
            ).numpy()
            got = losses.soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(t), eps)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
        # one-hot targets = the integer-label loss
        want = torch.nn.functional.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(labels), reduction='none', label_smoothing=eps
        ).numpy()
        got = losses.soft_target_cross_entropy(jnp.asarray(logits), mix.one_hot(jnp.asarray(labels), 11), eps)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_pipeline_refuses_mixing_unless_the_step_applies_it(tmp_path):
    import research.data as rd

    c = data_config_defaults()
    c.data_dir = str(tmp_path)
    c.augment.cutmix = 1.0
    with pytest.raises(ValueError, match=r'data.augment.cutmix=1 is applied in the train step'):
        rd.make_train_iterator(c, seed=0, global_batch_size=8)
    it = rd.make_train_iterator(c, seed=0, global_batch_size=8, step_mixes=True)
    assert next(it)['image'].shape == (8, 8, 8, 1)  # the pipeline's batches are unchanged
