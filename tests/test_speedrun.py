"""The airbench94 network and the CIFAR-10 speed run (research/models/airbench.py, research/tasks/speedrun.py)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.config import base_config, validate_config, with_model
from research.models import airbench
from research import tasks
from research.tasks import speedrun as sr
from research.train.state import create_train_state


def _conv(cin, cout, k=3):
    return k * k * cin * cout


def test_airbench94_exact_parameter_count():
    # whitening 2x2 conv 3 -> 24 with bias; per group: conv 3x3 (no bias) + BN bias, twice; head 256 -> 10.
    whiten = _conv(3, 24, 2) + 24
    block1 = _conv(24, 64) + 64 + _conv(64, 64) + 64
    block2 = _conv(64, 256) + 256 + _conv(256, 256) + 256
    block3 = _conv(256, 256) + 256 + _conv(256, 256) + 256
    head = 256 * 10
    expected = whiten + block1 + block2 + block3 + head
    assert expected == 1_971_640
    v = models.abstract_variables(models.create('airbench94_cifar'), (1, 32, 32, 3))
    assert models.count_params(v) == expected
    assert models.param_counts_by_layer(v) == {
        'whiten': whiten,
        'block1': block1,
        'block2': block2,
        'block3': block3,
        'head': head,
    }
    # BatchNorm: no scale, running mean/var of every norm layer; 2 * (64 + 256 + 256) * 2 statistics.
    assert models.count_params(v, 'batch_stats') == 2 * 2 * (64 + 256 + 256)
    assert 'scale' not in v['params']['block1']['norm1']


def test_airbench95_exact_parameter_count():
    # airbench95.py: widths 128, 384, 384, otherwise airbench94's layers.
    expected = (
        _conv(3, 24, 2)
        + 24
        + _conv(24, 128)
        + 128
        + _conv(128, 128)
        + 128
        + _conv(128, 384)
        + 384
        + _conv(384, 384)
        + 384
        + 2 * (_conv(384, 384) + 384)
        + 384 * 10
    )
    assert expected == 4_604_728
    v = models.abstract_variables(models.create('airbench95_cifar'), (1, 32, 32, 3))
    assert models.count_params(v) == expected


def test_airbench_forward_shapes_and_dirac_init():
    m = models.create('airbench94_cifar', widths=(4, 8, 8), num_classes=7)
    v = jax.jit(m.init)(jax.random.key(0), jnp.zeros((2, 32, 32, 1)))
    k = v['params']['block2']['conv2']['kernel']  # 8 -> 8: every filter starts as the identity
    np.testing.assert_array_equal(k[1, 1], np.eye(8))
    assert float(jnp.abs(k).sum()) == 8.0
    k1 = v['params']['block1']['conv1']['kernel']  # 8 whitening maps -> 4: min(8, 4) identity filters
    np.testing.assert_array_equal(k1[1, 1, :4, :4], np.eye(4))
    logits, feats = jax.jit(functools.partial(m.apply, return_features=True))(v, jnp.ones((2, 32, 32, 1)))
    assert logits.shape == (2, 7)
    assert feats['whiten'].shape == (2, 31, 31, 8)
    assert [feats[f'block{i}'].shape[1] for i in (1, 2, 3)] == [15, 7, 3]


def test_whitening_kernel_whitens_patches():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 9, 9, 3)).astype(np.float32)
    images = base + 0.5 * np.roll(base, 1, axis=2)  # correlated neighbours and channels
    images[..., 1] += images[..., 0]
    kernel = airbench.whitening_kernel(images, 2, eps=0.0)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    y = jax.lax.conv_general_dilated(
        images, kernel[..., :12], (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    y = np.asarray(y).reshape(-1, 12).astype(np.float64)
    np.testing.assert_allclose(y.T @ y / len(y), np.eye(12), atol=1e-3)  # uncentred: as airbench
    # filters come largest-eigenvalue first: the first filter has the smallest norm
    norms = np.linalg.norm(kernel[..., :12].reshape(12, 12), axis=0)
    assert norms[0] == norms.min()


def test_airbench_matches_a_pytorch_airbench94_net():
    """The Flax net against airbench94's PyTorch layers (re-typed here at tiny widths): same weights, same
    train-mode logits and BatchNorm running statistics (momentum 0.4 in torch), same eval-mode logits;
    and the whitening filters against airbench's ``get_whitening_parameters`` (up to each filter's sign)."""
    torch = pytest.importorskip('torch')
    tnn = torch.nn
    widths = (4, 8, 8)

    def bn(c):
        b = tnn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
        b.weight.requires_grad = False
        return b

    def group(cin, cout):
        return tnn.Sequential(
            tnn.Conv2d(cin, cout, 3, padding='same', bias=False),
            tnn.MaxPool2d(2),
            bn(cout),
            tnn.GELU(),
            tnn.Conv2d(cout, cout, 3, padding='same', bias=False),
            bn(cout),
            tnn.GELU(),
        )

    net = tnn.Sequential(
        tnn.Conv2d(3, 24, 2, padding=0, bias=True),
        tnn.GELU(),
        group(24, widths[0]),
        group(widths[0], widths[1]),
        group(widths[1], widths[2]),
        tnn.MaxPool2d(3),
        tnn.Flatten(),
        tnn.Linear(widths[2], 10, bias=False),
    )
    m = models.create('airbench94_cifar', widths=widths)
    x = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype(np.float32)
    v = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    noise = lambda a: (np.asarray(a) + 0.01 * np.random.default_rng(a.size).normal(size=a.shape)).astype(
        np.float32
    )  # noqa: E731
    p = jax.tree.map(noise, v['params'])  # non-zero BN biases, non-identity convs
    v = {'params': p, 'batch_stats': v['batch_stats']}
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(p['whiten']['kernel'].transpose(3, 2, 0, 1)))
        net[0].bias.copy_(torch.from_numpy(p['whiten']['bias']))
        for i in range(3):
            g, b = net[2 + i], p[f'block{i + 1}']
            g[0].weight.copy_(torch.from_numpy(b['conv1']['kernel'].transpose(3, 2, 0, 1)))
            g[4].weight.copy_(torch.from_numpy(b['conv2']['kernel'].transpose(3, 2, 0, 1)))
            g[2].bias.copy_(torch.from_numpy(b['norm1']['bias']))
            g[5].bias.copy_(torch.from_numpy(b['norm2']['bias']))
        net[-1].weight.copy_(torch.from_numpy(p['head']['kernel'].T))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    net.train()
    with torch.no_grad():
        want_train = net(xt).numpy() / 9
    logits, new = jax.jit(functools.partial(m.apply, train=True, mutable=['batch_stats']))(v, x)
    np.testing.assert_allclose(logits, want_train, rtol=1e-4, atol=1e-5)
    stats = new['batch_stats']['block2']['norm1']
    np.testing.assert_allclose(stats['mean'], net[3][2].running_mean.numpy(), rtol=1e-4, atol=1e-5)
    # the running variance takes the unbiased batch variance (n = 6 x 7 x 7), as torch's
    np.testing.assert_allclose(stats['var'], net[3][2].running_var.numpy(), rtol=1e-4, atol=1e-6)
    net.eval()
    with torch.no_grad():  # eval mode on each framework's own running statistics
        want_eval = net(xt).numpy() / 9
    v_eval = {'params': p, 'batch_stats': new['batch_stats']}
    np.testing.assert_allclose(jax.jit(m.apply)(v_eval, x), want_eval, rtol=1e-4, atol=1e-5)
    # whitening: airbench's patches (c, h, w order), uncentred covariance, eigh, largest first
    imgs = torch.from_numpy(x.transpose(0, 3, 1, 2))
    patches = imgs.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).double()
    flat = patches.reshape(len(patches), -1)
    evals, evecs = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO='U')
    ref = (evecs.T.reshape(12, 3, 2, 2).flip(0) / torch.sqrt(evals.flip(0) + 5e-4).view(-1, 1, 1, 1)).numpy()
    ours = airbench.whitening_kernel(x, 2, 5e-4)[..., :12].transpose(3, 2, 0, 1)  # -> (out, c, h, w)
    for j in range(12):
        sign = np.sign(np.sum(ours[j] * ref[j]))
        np.testing.assert_allclose(ours[j], sign * ref[j], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- augmentation


def _np_crop_flip(x, dy, dx, flip, pad):
    b, h, w, _ = x.shape
    p = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
    out = np.stack([p[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    return np.where(flip[:, None, None, None], out[:, :, ::-1], out)


def test_crop_flip_matches_numpy_reference():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (16, 6, 7, 3), dtype=np.uint8)
    dy, dx, flip = jax.device_get(sr.draw_augmentation(jax.random.key(3), 16, 2))
    assert dy.min() >= 0 and dy.max() <= 4 and dx.min() >= 0 and dx.max() <= 4
    got = jax.jit(functools.partial(sr.crop_flip, pad=2))(x, dy, dx, flip)
    np.testing.assert_array_equal(np.asarray(got), _np_crop_flip(x, dy, dx, flip, 2))
    # fixed offsets: dy = dx = pad is the identity; 0 shifts the image down-right by pad (reflected border)
    same = sr.crop_flip(x, np.full(16, 2), np.full(16, 2), np.zeros(16, bool), 2)
    np.testing.assert_array_equal(np.asarray(same), x)
    shifted = np.asarray(sr.crop_flip(x, np.zeros(16, int), np.zeros(16, int), np.ones(16, bool), 2))
    np.testing.assert_array_equal(shifted[:, 2:, :, :][:, :, ::-1][:, :, 2:], x[:, :-2, :-2])


def _toy_data(n=32, size=16, channels=1, epochs=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        'images': rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
        'labels': rng.integers(0, 10, n).astype(np.int32),
        'perms': np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int32),
        'flip_bits': rng.random(n) < 0.5,
        'mean': np.full(channels, 0.5, np.float32),
        'std': np.full(channels, 0.25, np.float32),
    }


def test_alternating_flip_mirrors_every_image_on_odd_epochs():
    data = _toy_data()
    data['perms'] = np.stack([np.arange(32), np.arange(32)]).astype(np.int32)  # same order both epochs
    data = jax.device_put(data)
    recipe = sr.Recipe(batch_size=8, steps_per_epoch=4, total_steps=8, translate=0, flip='alternating')
    key = jax.random.key_data(jax.random.key(0))
    e0 = sr.train_batch(data, jnp.int32(1), key, recipe)
    e1 = sr.train_batch(data, jnp.int32(5), key, recipe)  # same images, next epoch
    raw = np.asarray(sr.normalize(data['images'][8:16], data['mean'], data['std']))
    bits = np.asarray(data['flip_bits'][8:16])
    np.testing.assert_array_equal(e0['label'], data['labels'][8:16])
    np.testing.assert_allclose(e0['image'], np.where(bits[:, None, None, None], raw[:, :, ::-1], raw))
    np.testing.assert_allclose(e1['image'], e0['image'][:, :, ::-1])


def test_tta_of_flip_symmetric_input_equals_plain_and_level2_weights():
    m = models.create('airbench94_cifar', widths=(4, 8, 8))
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    v = jax.jit(m.init)(jax.random.key(0), x)
    apply = jax.jit(m.apply)
    tta = jax.jit(functools.partial(sr.tta_logits, m.apply), static_argnums=2)
    sym = x + x[:, :, ::-1]
    plain, tta1 = tta(v, sym, 1)
    np.testing.assert_allclose(tta1, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain, apply(v, sym), rtol=1e-5, atol=1e-6)
    # level 2 = airbench's 0.5 mirror(x) + 0.25 mirror(up-left) + 0.25 mirror(down-right), one pass
    f = lambda z: np.asarray(apply(v, z))  # noqa: E731
    mirror = lambda z: 0.5 * (f(z) + f(z[:, :, ::-1]))  # noqa: E731
    p = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
    want = 0.5 * mirror(x) + 0.25 * mirror(p[:, :32, :32]) + 0.25 * mirror(p[:, 2:, 2:])
    _, tta2 = tta(v, x, 2)
    np.testing.assert_allclose(tta2, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- optimizer and the scanned step


def _speedrun_config(**speedrun):
    c = base_config()
    c.task = 'speedrun'
    c.optimizer.name = 'nesterov'
    c.optimizer.momentum = 0.85
    c.optimizer.lr = 0.2
    c.optimizer.weight_decay = 0.01
    c.train.label_smoothing = 0.2
    for k, val in speedrun.items():
        c.speedrun[k] = val
    validate_config(c)
    return c


def test_optimizer_groups_bias_scaler_frozen_whitening():
    c = _speedrun_config(bias_lr_scale=64.0, whiten_bias_epochs=1.0)
    tx = sr.make_speedrun_optimizer(c, lambda s: 0.2, steps_per_epoch=2)
    params = {
        'whiten': {'kernel': jnp.ones((2, 2, 1, 8)), 'bias': jnp.ones(8)},
        'block1': {'conv1': {'kernel': jnp.ones((3, 3, 8, 4))}, 'norm1': {'bias': jnp.ones(4)}},
    }
    labels = sr.param_groups(params)
    assert labels['whiten'] == {'kernel': 'frozen', 'bias': 'whiten_bias'}
    assert labels['block1'] == {'conv1': {'kernel': 'other'}, 'norm1': {'bias': 'norm'}}
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    for step in range(3):
        upd, state = tx.update(zero, state, params)
        # pure decay: norm biases get 64x the lr and 1/64 the decay, i.e. the same step as the rest
        np.testing.assert_allclose(
            upd['block1']['norm1']['bias'], upd['block1']['conv1']['kernel'][0, 0, 0, :4]
        )
        assert float(jnp.abs(upd['whiten']['kernel']).max()) == 0.0
        assert (float(jnp.abs(upd['whiten']['bias']).max()) > 0) == (step < 2)  # trains for 1 epoch = 2 steps


_RECIPE = sr.Recipe(
    batch_size=8, steps_per_epoch=2, total_steps=8, translate=2, ema_start_step=1, ema_every=2
)
_K = 4  # crosses the lookahead start (step 1), its init (step 2) and update (step 4), epoch ends (2, 4)


@pytest.fixture(scope='module')
def k_single_steps():
    """The initial state, the data and the state after K jitted single steps (shared by both scans)."""
    c = _speedrun_config(whiten_bias_epochs=1.0)
    model = models.create('airbench94_cifar', widths=(4, 8, 8))
    tx = sr.make_speedrun_optimizer(c, lambda s: 0.2 * (1 - s / 8), steps_per_epoch=2)
    init = jax.jit(functools.partial(create_train_state, model, tx, sample_input=jnp.zeros((1, 16, 16, 1))))
    train = init(jax.random.key_data(jax.random.key(0)))
    data = jax.device_put(_toy_data(n=16))
    one = jax.jit(functools.partial(sr.speedrun_step, recipe=_RECIPE))
    state, losses = sr.init_speedrun_state(train, 0), []
    for _ in range(_K):
        state, m = one(state, data)
        losses.append(float(m['loss']))
    return train, data, state, losses


@pytest.mark.parametrize('unroll', [1, True])
def test_scanned_k_steps_equal_k_single_steps(k_single_steps, unroll):
    train, data, state, losses = k_single_steps
    run = jax.jit(functools.partial(sr.run_steps, recipe=_RECIPE, num_steps=_K, unroll=unroll))
    scanned, metrics = run(sr.init_speedrun_state(train, 0), data)
    assert int(scanned.train.step) == _K and bool(scanned.ema_ready)
    np.testing.assert_allclose(metrics['loss'], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(scanned.train.params), jax.tree.leaves(state.train.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(scanned.train.batch_stats), jax.tree.leaves(state.train.batch_stats)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # the lookahead ran: after its update at step 4 the net equals the EMA
    for a, b in zip(jax.tree.leaves(scanned.train.params), jax.tree.leaves(scanned.ema_params)):
        np.testing.assert_array_equal(a, b)
    # training moved the parameters; the frozen whitening kernel stayed (the lerp keeps equal values exact)
    assert not np.allclose(scanned.train.params['head']['kernel'], train.params['head']['kernel'])
    np.testing.assert_array_equal(scanned.train.params['whiten']['kernel'], train.params['whiten']['kernel'])


# --------------------------------------------------------------------------- end to end


def test_speedrun_task_on_digits_writes_summary(tmp_path):
    c = _speedrun_config(steps_per_call=2, unroll=1, whiten_samples=256, tta_level=0, ema_start_epochs=0.0)
    with_model(c, 'airbench94_cifar', widths=(4, 8, 8))
    c.data.name = 'digits'
    c.data.image_size = 32
    c.data.data_dir = str(tmp_path / 'tfds')
    c.schedule.name = 'linear'
    c.schedule.warmup = '4 steps'
    c.train.batch_size = 64
    c.train.eval_batch_size = 100
    c.train.duration = '5 steps'  # 2 + 2 + a compiled remainder of 1
    c.train.eval_every = '4 steps'
    c.train.log_every_steps = 2
    summary = tasks.train_and_evaluate(c, tmp_path / 'run', show_progress=False)
    saved = json.loads((tmp_path / 'run' / 'summary.json').read_text())
    for key in (
        'test_accuracy',
        'train_time_s',
        'compile_time_s',
        'images_per_sec',
        'eval_time_s',
        'complete',
    ):
        assert key in saved, key
    assert saved['complete'] and saved['step'] == 5 and saved['tta_level'] == 0
    assert saved['final']['test']['count'] == 360
    assert 0.0 <= saved['test_accuracy'] <= 1.0 and saved['images_per_sec'] > 0
    assert saved['train_time_s'] > 0 and saved['compile_time_s'] > 0
    assert summary['test_accuracy'] == saved['test_accuracy']
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows if r['split'] == 'train'] == [2, 4, 5]
    assert [r['step'] for r in rows if r['split'] == 'test'] == [4, 5]
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['_resolved']['steps_per_epoch'] == 22


def test_airbench_config_validates_and_scales_lr():
    from experiments.classification import airbench_cifar

    full = airbench_cifar.get_config()
    validate_config(full)
    assert full.task == 'speedrun' and full.train.batch_size == 1024 and full.train.duration == '9.9 epochs'
    assert abs(full.optimizer.lr - 1.5) < 1e-12  # 11.5 / (1 + 1 / 0.15) per 1024 examples
    quick = airbench_cifar.get_config('quick')
    validate_config(quick)
    assert abs(quick.optimizer.lr - 1.5 * quick.train.batch_size / 1024) < 1e-12
    with pytest.raises(ValueError, match='unknown config argument'):
        airbench_cifar.get_config('epoch=3')
    # airbench95.py: widths 128/384/384, lr 10.0 per 1024 examples, 15 epochs, the rest unchanged.
    v95 = airbench_cifar.get_config('variant=95')
    validate_config(v95)
    assert v95.model.name == 'airbench95_cifar' and tuple(v95.model.widths) == (128, 384, 384)
    assert v95.train.duration == '15.0 epochs' and abs(v95.optimizer.lr - 10.0 / (1 + 1 / 0.15)) < 1e-12
    assert abs(v95.optimizer.weight_decay - 0.0153 / 10.0) < 1e-12
    assert v95.schedule.warmup == f'{0.23 * 15.0} epochs' and v95.train.label_smoothing == 0.2
    assert tuple(airbench_cifar.get_config('variant=95,width=8').model.widths) == (16, 48, 48)
    with pytest.raises(ValueError, match='unknown airbench variant 96'):
        airbench_cifar.get_config('variant=96')
