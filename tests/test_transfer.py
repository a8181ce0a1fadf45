"""Transfer learning: class subsets, pretrained init (workdir / msgpack), freezing, per-part learning rates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.config import base_config, with_model
from research.data import datasets, pipeline
from research.tasks import train_and_evaluate
from research.train import transfer
from research.train.checkpoint import Checkpointer
from research.train.optim import make_optimizer


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


def _config(data_dir, classes, *, model='lenet5_modern', steps=12, **kw):
    c = base_config()
    with_model(c, model, **kw)
    c.data.name = 'digits'
    c.data.data_dir = data_dir
    c.data.image_size = 32 if model == 'lenet5_modern' else 16
    c.data.classes = classes
    c.optimizer.name = 'momentum'
    c.optimizer.lr = 0.05
    c.optimizer.weight_decay = 1e-3
    c.schedule.name = 'constant'
    c.train.duration = f'{steps} steps'
    c.train.batch_size = 32
    c.train.eval_batch_size = 64
    c.train.log_every_steps = 4
    c.train.eval_every = ''
    c.train.checkpoint_every = ''
    c.train.async_checkpoints = False
    return c


def _state(workdir):
    return Checkpointer(workdir, async_save=False).restore_raw()


# -- data.classes --------------------------------------------------------------------------------
def test_class_subset_relabels_and_counts(data_dir):
    full = _config(data_dir, ()).data
    sub = _config(data_dir, ('7', 2)).data
    info = datasets.get_dataset_info(sub)
    assert info.num_classes == 2 and info.class_names == ('7', '2')
    all_labels = datasets.get_split(full, 'test').labels
    assert info.num_examples['test'] == int(np.sum((all_labels == 7) | (all_labels == 2)))
    seen = np.concatenate(
        [b['label'][b['mask']] for b in pipeline.make_eval_iterator(sub, 'test', global_batch_size=64)]
    )
    assert len(seen) == info.num_examples['test']
    np.testing.assert_array_equal(np.bincount(seen), [np.sum(all_labels == 7), np.sum(all_labels == 2)])
    batch = next(pipeline.make_train_iterator(sub, seed=0, global_batch_size=32))
    assert set(np.unique(batch['label'])) <= {0, 1}


@pytest.mark.parametrize(
    'classes, needle', [(('cat',), "unknown class 'cat'"), ((11,), 'index 11'), ((1, '1'), 'twice')]
)
def test_class_subset_bad_values_are_named(data_dir, classes, needle):
    with pytest.raises(ValueError, match=needle):
        datasets.get_dataset_info(_config(data_dir, classes).data)


# -- optimizer groups ----------------------------------------------------------------------------
def _toy_params():
    return {
        'backbone': {'kernel': jnp.ones((3, 2))},
        'head': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
    }


def test_lr_multipliers_scale_updates_exactly():
    oc = base_config().optimizer
    oc.name, oc.momentum, oc.lr_multipliers = 'sgd', 0.0, ('^head/=1', '.*=0.1')
    tx = make_optimizer(oc, optax.constant_schedule(0.5))
    params = _toy_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates['head']['kernel'], -1.0)  # -lr * g
    np.testing.assert_allclose(updates['backbone']['kernel'], -0.1, rtol=1e-6)  # 0.1 * lr * g


def test_freeze_gives_zero_updates_even_with_weight_decay_and_momentum():
    oc = base_config().optimizer
    oc.name, oc.weight_decay, oc.freeze = 'momentum', 0.1, '^backbone/'
    tx = make_optimizer(oc, optax.constant_schedule(0.5))
    params = _toy_params()
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params['backbone']['kernel'], 1.0)
    assert float(jnp.abs(params['head']['kernel'] - 1).min()) > 0.1


def test_patterns_that_match_nothing_are_errors():
    with pytest.raises(ValueError, match=r"'\^stem/' matches no parameter"):
        transfer.check_patterns(_toy_params(), freeze='^stem/')
    with pytest.raises(ValueError, match="'fc9' matches no parameter"):
        transfer.check_patterns(_toy_params(), multipliers=('fc9=2',))
    with pytest.raises(ValueError, match="expected 'regex=factor'"):
        transfer.parse_multipliers(('head',))
    with pytest.raises(ValueError, match='needs init.exclude'):
        transfer.param_labels(_toy_params(), freeze='pretrained')


def test_merge_pretrained_names_mismatches():
    target = {'params': _toy_params(), 'batch_stats': {}}
    src = {
        'params': {
            'backbone': {'kernel': np.zeros((3, 2))},
            'head': {'kernel': np.zeros((2, 5)), 'bias': np.zeros(5)},
        }
    }
    with pytest.raises(
        transfer.PretrainedMismatchError, match=r'params/head/kernel \(2, 5\) vs model \(2, 2\)'
    ):
        transfer.merge_pretrained(target, src)
    merged, loaded = transfer.merge_pretrained(target, src, exclude='^head/')
    assert loaded == ['params/backbone/kernel']
    np.testing.assert_array_equal(merged['params']['backbone']['kernel'], 0.0)
    np.testing.assert_array_equal(merged['params']['head']['kernel'], 1.0)
    with pytest.raises(ValueError, match='matches no parameter'):
        transfer.merge_pretrained(target, {'params': _toy_params()}, exclude='^nothing')


# -- end to end ----------------------------------------------------------------------------------
def test_feature_extraction_keeps_backbone_and_bn_stats(data_dir, tmp_path):
    """Pretrain ResNet-20 on digits 0-4, then train only a new head on 5-9: every backbone
    parameter and BatchNorm statistic stays bitwise equal to the pretrained one."""
    src = tmp_path / 'source'
    train_and_evaluate(
        _config(data_dir, (0, 1, 2, 3, 4), model='resnet20', steps=4), src, show_progress=False
    )
    c = _config(data_dir, (5, 6, 7, 8, 9), model='resnet20', steps=4)
    c.init.checkpoint = str(src)
    c.init.exclude = '^head/'
    c.optimizer.freeze = 'pretrained'
    dst = tmp_path / 'target'
    train_and_evaluate(c, dst, show_progress=False)
    a, b = _state(src), _state(dst)
    for key in ('params', 'batch_stats'):
        fa = dict(jax.tree_util.tree_leaves_with_path(a[key]))
        for path, leaf in jax.tree_util.tree_leaves_with_path(b[key]):
            if transfer.leaf_path(path).startswith('head/'):
                continue
            np.testing.assert_array_equal(leaf, fa[path], err_msg=transfer.leaf_path(path))
    assert not np.allclose(a['params']['head']['kernel'], b['params']['head']['kernel'])


def test_fine_tune_from_msgpack_with_lower_backbone_lr(data_dir, tmp_path):
    from flax import serialization

    src = tmp_path / 'source'
    train_and_evaluate(_config(data_dir, (0, 1, 2, 3, 4), steps=30), src, show_progress=False)
    pre = _state(src)
    path = tmp_path / 'backbone.msgpack'
    path.write_bytes(serialization.msgpack_serialize({'params': pre['params']}))
    c = _config(data_dir, (5, 6, 7, 8, 9), steps=30)
    c.init.checkpoint = str(path)
    c.init.exclude = '^fc3/'
    c.optimizer.lr_multipliers = ('^fc3/=1', '.*=0.01')
    summary = train_and_evaluate(c, tmp_path / 'ft', show_progress=False)
    ft = _state(tmp_path / 'ft')
    moved = np.abs(ft['params']['conv1']['kernel'] - pre['params']['conv1']['kernel']).max()
    assert 0 < moved < 0.05  # the backbone moves, slowly
    assert summary['final']['test']['top1'] > 0.5  # 5-way digits from a digits backbone


def test_bad_init_checkpoint_is_named(data_dir, tmp_path):
    c = _config(data_dir, (5, 6))
    c.init.checkpoint = str(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='nope'):
        train_and_evaluate(c, tmp_path / 'w', show_progress=False)
