"""Published torchvision weights by name (research.interop.hub), offline: the hub cache layout,
the hash check, the Flax cache, init.checkpoint='torchvision:...', and --evaluate on a tiny folder."""

import hashlib
import io

import numpy as np
import pytest
from imagenet_jpegs import cifar_photos, large_jpeg
from PIL import Image

torch = pytest.importorskip('torch')
tv = pytest.importorskip('torchvision')

from research.interop import hub
from research.interop import torchvision as tvi
from research.train import transfer

SPEC = 'torchvision:resnet18.IMAGENET1K_V1'


@pytest.fixture(scope='module')
def torch_home(tmp_path_factory):
    """$TORCH_HOME with a random-weights resnet18 saved where torch.hub keeps IMAGENET1K_V1."""
    home = tmp_path_factory.mktemp('torch_home')
    model = tvi.randomize_torch_model(tvi.torchvision_model('resnet18'), seed=3)
    url = tv.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = home / 'hub' / 'checkpoints' / url.rsplit('/', 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return home, model, path


@pytest.fixture
def env(torch_home, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(torch_home[0]))
    return torch_home


def test_spec_and_names():
    assert hub.parse_spec('torchvision:resnet50.IMAGENET1K_V2') == ('resnet50', 'IMAGENET1K_V2')
    assert hub.parse_spec('torchvision:resnet50') == ('resnet50', 'DEFAULT')
    assert hub.hash_prefix('https://download.pytorch.org/models/resnet50-11ad3fa6.pth') == '11ad3fa6'
    with pytest.raises(
        hub.WeightsError, match="no weights 'IMAGENET1K_V7'; published: IMAGENET1K_V1, IMAGENET1K_V2"
    ):
        hub.weights_entry('resnet50', 'IMAGENET1K_V7')
    with pytest.raises(ValueError, match="no torchvision conversion for 'resnet5'"):
        hub.resolve('torchvision:resnet5.IMAGENET1K_V1')


def test_cached_state_dict_is_converted_and_the_flax_variables_cached(env):
    home, model, _ = env
    variables = hub.load_variables(SPEC)
    expect = tvi.from_torchvision('resnet18', model)
    for coll in ('params', 'batch_stats'):
        import jax

        a, b = jax.tree.leaves(variables[coll]), jax.tree.leaves(expect[coll])
        assert len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    flax_file = home / 'hub' / 'checkpoints' / 'flax' / 'resnet18.IMAGENET1K_V1.msgpack'
    assert flax_file.exists()
    meta = hub.resolve(SPEC)['meta']
    assert (meta['resize'], meta['crop'], meta['categories'][0]) == (256, 224, 'tench')
    # DEFAULT resolves to the published default (resnet18's only weights), the same cache.
    assert hub.resolve('torchvision:resnet18')['msgpack'] == flax_file
    # init.checkpoint takes the name.
    loaded = transfer.load_pretrained(SPEC)
    assert set(loaded) == {'params', 'batch_stats'}
    np.testing.assert_array_equal(
        np.asarray(loaded['params']['fc']['kernel']), np.asarray(expect['params']['fc']['kernel'])
    )


def test_fetch_checks_the_hash_prefix(env, tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    blob = b'weights' * 1000
    digest = hashlib.sha256(blob).hexdigest()
    good = src / f'tiny-{digest[:8]}.pth'
    good.write_bytes(blob)
    path = hub.fetch(good.as_uri())  # file:// through torch.hub.download_url_to_file
    assert path.read_bytes() == blob and path.parent == env[0] / 'hub' / 'checkpoints'
    bad = src / 'tiny-deadbeef.pth'
    bad.write_bytes(blob)
    with pytest.raises(hub.WeightsError, match="does not match its hash prefix 'deadbeef'"):
        hub.fetch(bad.as_uri())
    assert not (env[0] / 'hub' / 'checkpoints' / 'tiny-deadbeef.pth').exists()
    with pytest.raises(hub.WeightsError, match='not in the hub cache .* download of .* failed'):
        hub.fetch((src / 'absent-0123abcd.pth').as_uri())


def test_evaluate_on_a_tiny_folder_equals_torch(env, tmp_path, capsys):
    # --evaluate: the converted model through this package's eval pipeline predicts what the torch
    # model predicts with weights.transforms() on the same JPEGs. Four images are filed under the
    # class torch predicts for them and two under another: top-1 must be 4/6 exactly.
    model = env[1]
    weights = tv.models.ResNet18_Weights.IMAGENET1K_V1
    categories = weights.meta['categories']
    preset = weights.transforms()
    blobs = [
        large_jpeg(p, [(400, 300), (300, 420), (256, 256)][i % 3], seed=i)
        for i, p in enumerate(cifar_photos(6))
    ]
    x = torch.stack([preset(Image.open(io.BytesIO(b)).convert('RGB')) for b in blobs])
    with torch.no_grad():
        want = model.eval()(x).argmax(-1).numpy()
    labels = [int(p) if i < 4 else int(p + 1) % 1000 for i, p in enumerate(want)]
    for i, (blob, y) in enumerate(zip(blobs, labels)):
        d = tmp_path / 'folder' / 'val' / categories[y].replace('/', '_')
        d.mkdir(parents=True, exist_ok=True)
        (d / f'{i}.jpg').write_bytes(blob)
    if any('/' in categories[y] for y in labels):
        pytest.skip('a predicted category name has a slash')
    r = hub.evaluate(
        SPEC, str(tmp_path / 'folder'), split='val', batch_size=4, data_dir=str(tmp_path / 'tfds')
    )
    assert r['n'] == 6
    # the pipeline reads the split in the builder's order: compare the (label, prediction) pairs
    assert sorted(zip(r['labels'].tolist(), r['predictions'].tolist())) == sorted(zip(labels, want.tolist()))
    assert r['top1'] == pytest.approx(100 * 4 / 6)
    assert (
        hub.main(
            [
                '--evaluate',
                'resnet18.IMAGENET1K_V1',
                '--data',
                str(tmp_path / 'folder'),
                '--data_dir',
                str(tmp_path / 'tfds'),
                '--batch_size',
                '4',
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f'resnet18.IMAGENET1K_V1 on {tmp_path / "folder"} (val, 6 images): top-1 66.67% top-5 ' in out
    (tmp_path / 'folder' / 'val' / 'not_a_class').mkdir()
    Image.open(io.BytesIO(blobs[0])).save(tmp_path / 'folder' / 'val' / 'not_a_class' / 'x.png')
    assert (
        hub.main(
            [
                '--evaluate',
                'resnet18',
                '--data',
                str(tmp_path / 'folder'),
                '--data_dir',
                str(tmp_path / 'tfds2'),
            ]
        )
        == 2
    )
    assert "class folder 'not_a_class' is neither" in capsys.readouterr().err
