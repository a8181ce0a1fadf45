"""experiments/detection/*.py: every config resolves (schema-valid, the model builds and initialises
with the task's sample inputs, shape-only), sweeps expand to distinct runs, tables name ledger metrics."""

import jax
import jax.numpy as jnp
import pytest

from research import models
from research.config import validate_config
from research.experiments.sweep import load_config_module

CASES = [
    ('retinanet_mnist', 'quick'),
    ('retinanet_mnist', ''),
    ('retinanet_mnist', 'quick,sweep=anchors'),
    ('faster_rcnn_mnist', 'quick'),
    ('faster_rcnn_mnist', 'quick,mask'),
    ('faster_rcnn_mnist', 'quick,fpn=false'),
    ('ssd_mnist', 'quick'),
    ('ssd_mnist', ''),
    ('yolo_mnist', 'quick'),
    ('rcnn_mnist', 'quick,model=rcnn'),
    ('rcnn_mnist', 'quick,model=sppnet'),
    ('rcnn_mnist', 'quick'),
    ('compare_mnist', 'quick'),
    ('compare_mnist', 'quick,sweep=stages'),
]


def _init_shapes(c):
    kw = {k: v for k, v in c.model.items() if k != 'name'}
    kw.setdefault('num_classes', 11)
    model = models.create(c.model.name, **kw)
    s, m = c.det.canvas_size, c.det.max_objects
    targets = {
        'boxes': jnp.tile(jnp.asarray([[[4.0, 4.0, 40.0, 40.0]]]), (1, m, 1)),
        'labels': jnp.ones((1, m), jnp.int32),
        'box_mask': jnp.arange(m)[None] < 1,
    }
    extra = {}
    if getattr(type(model), 'needs_masks', False):
        targets['masks'] = jnp.zeros((1, m, s, s), jnp.uint8)
    if getattr(type(model), 'needs_proposals', False):
        p = int(c.det.max_proposals)
        extra['proposals'] = {
            'boxes': jnp.tile(targets['boxes'][:, :1], (1, p, 1)),
            'valid': jnp.ones((1, p), bool),
        }
    rngs = {'params': jax.random.key(0), 'sample': jax.random.key(1), 'dropout': jax.random.key(2)}
    return jax.eval_shape(lambda: model.init(rngs, jnp.zeros((1, s, s, 1)), targets, train=True, **extra))


@pytest.mark.parametrize('name,arg', CASES)
def test_detection_config_resolves(name, arg):
    mod = load_config_module(f'experiments/detection/{name}.py')
    c = mod.get_config(arg)
    validate_config(c)
    assert c.task == 'detection' and c.data.name == 'mnist_det'
    variables = _init_shapes(c)
    assert models.count_params(variables['params'], collection=None) > 0
    if hasattr(mod, 'get_sweep') and 'quick' in arg:
        sweep = mod.get_sweep(arg)
        assert len({repr(sorted(o.items())) for o in sweep}) == len(sweep) >= 2
        for overrides in sweep[:2]:
            run_c = mod.get_config(arg)
            for k, v in overrides.items():
                section, key = k.split('.')
                run_c[section][key] = v
            _init_shapes(run_c)
        specs = mod.get_table(arg)
        for spec in specs if isinstance(specs, list) else [specs]:
            assert spec['metric'] in {'test_map50', 'test_coco_ap', 'total_ms'}


def test_bad_config_arguments_name_the_value():
    with pytest.raises(ValueError, match="'lineage' or 'stages'.*'both'"):
        load_config_module('experiments/detection/compare_mnist.py').get_config('quick,sweep=both')
    with pytest.raises(ValueError, match="'yolo'"):
        load_config_module('experiments/detection/rcnn_mnist.py').get_config('quick,model=yolo')
    with pytest.raises(ValueError, match="'focal' or 'anchors'"):
        load_config_module('experiments/detection/retinanet_mnist.py').get_sweep('quick,sweep=x')
