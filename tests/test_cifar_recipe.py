"""The CIFAR recipe shared through experiments/classification/common.py resolves every config
exactly as the hand-written copies did.

``tests/fixtures/cifar_configs.json`` holds, for each (config file, argument) below, every key
whose value differs from ``base_config()`` (flattened, tuples marked), written by this file's
``--write`` from the configs as they were before the recipe was shared (main at 9e9c38b):

  PYTHONPATH=<checkout of 9e9c38b> python tests/test_cifar_recipe.py --write

Folder runs pass an explicit ``path`` so that the fixture does not depend on where the data lives.
"""

import importlib
import json
import pathlib
import sys

import pytest

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'cifar_configs.json'
P = 'path=/fixture/cifar10'

CASES = {
    'classification.resnet_cifar': [
        '',
        'quick',
        'quick,epochs=4',
        'depth=110',
        'depth=56,shortcut=B',
        'plain,depth=20',
        f'folder,{P}',
        f'depth=20,folder,{P},quick',
        'depth=1202,quick,epochs=2',
    ],
    'classification.preact_resnet_cifar': [
        '',
        'depth=110,ordering=a',
        'depth=1001',
        f'depth=164,folder,{P},quick',
        'depth=20,bottleneck,quick,epochs=4',
    ],
    'classification.resnext_cifar': [
        '',
        'cardinality=16',
        f'depth=11,cardinality=4,base_width=4,folder,{P},quick',
        'quick,epochs=4',
    ],
    'classification.wrn_cifar': [
        '',
        'depth=28,k=10,dropout=0.3',
        'cifar100',
        f'depth=16,k=1,folder,{P},quick',
        'quick,epochs=4',
        'quick,epochs=10',
    ],
    'classification.densenet_cifar': [
        '',
        'quick',
        'quick,epochs=4',
        'depth=40,plain',
        'depth=250,k=24',
        'dropout=0.2,noaug',
        'cifar100',
        f'folder,{P},quick',
    ],
    'classification.vgg_cifar': [
        '',
        f'depth=11,folder,{P},quick',
        f'depth=16,folder,{P}',
        'depth=11,bn=false',
        'quick,epochs=4',
        'depth=19',
    ],
    'ablations.preact_orderings': [P, f'quick,{P}', f'quick,depth=20,train_images=1000,test_images=500,{P}'],
    'ablations.resnet_degradation': [P, f'quick,epochs=4,{P}', f'train_images=1000,test_images=500,{P}'],
    'ablations.wrn_depth_width': [
        P,
        f'quick,{P}',
        f'quick,train_images=0,test_images=100,{P}',
        f'train_images=500,test_images=100,{P}',
    ],
}


def _plain(v):
    """JSON-friendly, keeping what JSON would lose: a tuple is {'tuple': [...]}."""
    if isinstance(v, tuple):
        return {'tuple': [_plain(x) for x in v]}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def resolved(module: str, arg: str) -> dict:
    """The keys of ``experiments.<module>.get_config(arg)`` that differ from ``base_config()``,
    in the config's key order (ConfigDicts nested as dotted keys; tuples vs lists kept)."""
    from research.config import base_config
    from research.configlib import flatten

    config = importlib.import_module(f'experiments.{module}').get_config(arg)
    base = flatten(base_config())
    out = {}
    for key, value in flatten(config).items():
        if key not in base or base[key] != value or type(base[key]) is not type(value):
            out[key] = _plain(value)
    return out


def _cases():
    return [(m, a) for m, args in CASES.items() for a in args]


@pytest.fixture(scope='module')
def snapshot():
    return json.loads(FIXTURE.read_text())


def test_fixture_covers_every_case(snapshot):
    assert sorted(snapshot) == sorted(f'{m}:{a}' for m, a in _cases())


@pytest.mark.parametrize('module,arg', _cases())
def test_config_resolves_as_before(snapshot, module, arg):
    got = resolved(module, arg)
    want = snapshot[f'{module}:{arg}']
    assert got == want
    assert list(got) == list(want)  # the same keys in the same order


def test_quick_boundaries_keep_their_historic_formatting(snapshot):
    """The copies formatted epoch boundaries differently ('2.0' vs '2'); a resumed run compares its
    config.json, so the shared recipe must keep each config's spelling."""
    assert resolved('classification.resnet_cifar', 'quick,epochs=4')['schedule.boundaries'] == {
        'tuple': ['2.0 epochs', '3.0 epochs']
    }
    assert resolved('classification.vgg_cifar', 'quick,epochs=4')['schedule.boundaries'] == {
        'tuple': ['2 epochs', '3 epochs']
    }
    assert resolved('classification.densenet_cifar', '')['schedule.boundaries'] == {
        'tuple': ['150.0 epochs', '225.0 epochs']
    }


if __name__ == '__main__':
    if sys.argv[1:] != ['--write']:
        sys.exit(__doc__)
    FIXTURE.parent.mkdir(exist_ok=True)
    data = {f'{m}:{a}': resolved(m, a) for m, a in _cases()}
    FIXTURE.write_text(json.dumps(data, indent=1) + '\n')
    print(f'wrote {len(data)} configs to {FIXTURE}')
