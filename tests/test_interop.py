"""The torchvision converter's contract: clear errors for wrong weights, exclusion, file round trip."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('torchvision')
import torch  # noqa: E402

from research.interop import torchvision as tvi  # noqa: E402
from research.models import count_params  # noqa: E402


@pytest.fixture(scope='module')
def resnet18_sd():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in tvi.torchvision_model('resnet18').state_dict().items()}


def test_unknown_conversion_is_named():
    with pytest.raises(ValueError, match="no torchvision conversion for 'resnet19'.*did you mean"):
        tvi.get_conversion('resnet19')


def test_every_conversion_targets_a_registered_model():
    from research import models

    names = tvi.list_conversions()
    assert {'resnet50', 'vgg16', 'densenet121', 'mobilenet_v2', 'efficientnet_b0'} <= set(names)
    for n in names:
        assert tvi.get_conversion(n).model in models.list_models(), n


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        tvi.from_torchvision('resnet18', tmp_path / 'nope.pth')


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a torch file')
    with pytest.raises(tvi.ConversionError, match='bad.pth'):
        tvi.from_torchvision('resnet18', bad)


def test_missing_and_unused_tensors_are_listed(resnet18_sd):
    sd = dict(resnet18_sd)
    del sd['layer2.0.conv1.weight']
    sd['extra.weight'] = torch.zeros(3)
    with pytest.raises(tvi.ConversionError) as e:
        tvi.from_torchvision('resnet18', sd)
    assert 'layer2.0.conv1.weight' in str(e.value) and 'extra.weight' in str(e.value)


def test_shape_mismatch_is_named(resnet18_sd):
    sd = dict(resnet18_sd)
    sd['fc.weight'] = torch.zeros(10, 512)
    with pytest.raises(tvi.ConversionError, match=r'shape mismatch .*fc.weight'):
        tvi.from_torchvision('resnet18', sd)


def test_exclude_drops_the_head_for_a_new_task(resnet18_sd):
    v = tvi.from_torchvision('resnet18', resnet18_sd, exclude=lambda k: k.startswith('fc.'))
    full = tvi.from_torchvision('resnet18', resnet18_sd)
    assert count_params(full) - count_params(v) == 512 * 1000 + 1000


def test_file_round_trip_and_msgpack_cli(resnet18_sd, tmp_path):
    from flax import serialization

    path = tmp_path / 'r18.pth'
    torch.save(resnet18_sd, path)
    assert tvi._main(['--convert', 'resnet18', str(path)]) == 0
    restored = serialization.msgpack_restore((tmp_path / 'r18.msgpack').read_bytes())
    direct = tvi.from_torchvision('resnet18', path)
    back = tvi.to_torchvision('resnet18', restored)
    for k, t in resnet18_sd.items():
        if not k.endswith('num_batches_tracked'):
            np.testing.assert_array_equal(back[k].numpy(), t.numpy(), err_msg=k)
    assert count_params(restored) == count_params(direct) == 11_689_512


def test_pth_as_transfer_init_with_a_new_head(resnet18_sd, tmp_path):
    """init.checkpoint=<torchvision .pth> for a 10-class resnet18: every backbone tensor comes from
    the file, the new 10-way fc stays as initialised; without exclude the fc shape clash is named."""
    import jax

    from research import models
    from research.train import transfer

    path = tmp_path / 'r18.pth'
    torch.save(resnet18_sd, path)
    abstract = models.abstract_variables(models.create('resnet18', num_classes=10), (1, 64, 64, 3))
    target = jax.tree.map(lambda a: np.full(a.shape, 7.0, a.dtype), dict(abstract))
    src = transfer.load_pretrained(path, torchvision='resnet18')
    with pytest.raises(transfer.PretrainedMismatchError, match=r'params/fc/kernel \(512, 1000\)'):
        transfer.merge_pretrained(target, src)
    merged, loaded = transfer.merge_pretrained(target, src, exclude='^fc/')
    np.testing.assert_array_equal(merged['params']['fc']['kernel'], 7.0)
    np.testing.assert_array_equal(
        merged['params']['conv1']['kernel'], resnet18_sd['conv1.weight'].numpy().transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(merged['batch_stats']['bn1']['var'], resnet18_sd['bn1.running_var'].numpy())
    assert len(loaded) == len(jax.tree.leaves(target)) - 2


@pytest.mark.parametrize('as_module', [True, False], ids=['module', 'state_dict'])
def test_conversion_copies_the_torch_tensors(as_module):
    """Issue 27 (2): changing the torch model in place after conversion changes no converted array
    (``.numpy()`` of a CPU tensor and ``jnp.asarray`` of that share memory)."""
    import jax

    tm = tvi.randomize_torch_model(tvi.torchvision_model('resnet18'), seed=1)
    variables = tvi.from_torchvision('resnet18', tm if as_module else tm.state_dict())
    before = jax.tree.map(np.array, variables)
    with torch.no_grad():
        tm.fc.bias.add_(100)
        for t in tm.state_dict().values():  # every parameter and buffer, in place
            t.add_(1)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)


# --------------------------------------------------------------------------- constructor flags (issue 27, 3)


@pytest.mark.parametrize(
    'name,size', [('googlenet', (64, 64)), pytest.param('inception_v3', (96, 96), marks=pytest.mark.slow)]
)
def test_module_flags_build_the_matching_flax_model(name, size):
    """A torchvision googlenet / inception_v3 built with transform_input=False converts into a Flax
    model without it (the default Flax model transforms: outputs differed by 4.45 / 228 relative);
    calibrated parity of both the outputs and their input-dependent part."""
    import torchvision
    from parity_helper import assert_parity

    tm = torchvision.models.get_model(
        name, weights=None, init_weights=False, transform_input=False, aux_logits=False
    ).eval()
    model, _ = tvi.convert(name, tm)
    assert (model.transform_input, model.aux_logits) == (False, False)
    assert tvi.flax_model(name).transform_input  # the conversion's default (torchvision's weights)
    assert_parity(name, input_size=size, torch_model=tm)


def test_module_flags_classes_dropout_and_aux_heads():
    import torchvision

    model, v = tvi.convert('resnet18', torchvision.models.resnet18(num_classes=10))
    assert model.num_classes == 10 and v['params']['fc']['kernel'].shape == (512, 10)
    assert tvi.flax_model('mobilenet_v2', torchvision.models.mobilenet_v2(dropout=0.5)).dropout_rate == 0.5
    tm = torchvision.models.googlenet(weights=None, init_weights=False, aux_logits=True, dropout_aux=0.3)
    model, v = tvi.convert('googlenet', tm)
    assert model.aux_logits and model.aux_dropout_rate == 0.3 and 'aux2' in v['params']
    seg = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False)
    assert tvi.flax_model('fcn_resnet50', seg).aux is False


def test_state_dict_states_its_assumption_in_one_line():
    """A bare state_dict does not record transform_input: the converter keeps the Flax default (as
    torchvision's pretrained weights) and says so in one line, unless it is given; what the tensors
    do tell (the aux heads) is read from them."""
    import warnings

    import torchvision

    sd = torchvision.models.googlenet(weights=None, init_weights=False, aux_logits=True).state_dict()
    with pytest.warns(
        UserWarning, match=r'does not record transform_input; assuming transform_input=True'
    ) as w:
        model, _ = tvi.convert('googlenet', sd)
    assert len(w) == 1 and '\n' not in str(w[0].message)
    assert model.aux_logits and model.transform_input
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model, _ = tvi.convert('googlenet', sd, transform_input=False)
    assert model.transform_input is False


@pytest.mark.parametrize(
    'name,size', [('resnet18', (64, 64)), ('mobilenet_v3_small', (64, 64)), ('vgg11_bn', (32, 32))]
)
def test_parity_in_float64(name, size):
    """Both frameworks in float64 (torch .double(), JAX x64): the float32 errors (1e-6 to 1e-5) are
    float32 noise; in float64 the plain and input-dependent errors fall to ~1e-7 (the models' final
    float32 cast of the logits)."""
    from parity_helper import assert_parity

    assert_parity(name, input_size=size, dtype='float64')


def test_calibration_sets_the_statistics_of_the_batches():
    """calibrate_batchnorm: every BatchNorm's running statistics become the mean over the batches of
    the batch mean and unbiased variance (torch's cumulative average from reset statistics), momentum
    and eval mode are restored; the digit-mosaic images are distinct and ImageNet-normalised."""
    import torchvision

    x = tvi.calibration_images(8, (32, 32), seed=0)
    assert x.shape == (8, 3, 32, 32) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1.5 and 0.3 < float(x.std()) < 3 and not np.allclose(x[0], x[1])
    tm = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        c1 = [tm.conv1(torch.from_numpy(x[i : i + 4])) for i in (0, 4)]  # bn1's input (no BN before it)
    tvi.calibrate_batchnorm(tm, x, batch_size=4)
    assert not tm.training and not tm.bn1.training and tm.bn1.momentum == 0.1
    want_mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in c1]).mean(0)
    want_var = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in c1]).mean(0)
    np.testing.assert_allclose(tm.bn1.running_mean.numpy(), want_mean.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tm.bn1.running_var.numpy(), want_var.numpy(), rtol=1e-4)


def test_parity_table_fills_the_page_between_its_markers(tmp_path):
    """--parity NAME --write PAGE: the hand-written page keeps its text, the table block is replaced."""
    page = tmp_path / 'parity.md'
    page.write_text(f'# Parity\n\nhand-written\n\n{tvi.TABLE_BEGIN}\nold table\n{tvi.TABLE_END}\n\nafter\n')
    argv = ['--parity', 'squeezenet1_1', '--no_float64', '--write', str(page)]
    assert tvi._main(argv) == 0
    text = page.read_text()
    assert text.startswith('# Parity\n\nhand-written\n\n') and text.endswith('\n\nafter\n')
    assert 'old table' not in text and 'python -m research.interop.torchvision --parity squeezenet1_1' in text
    row = next(line for line in text.splitlines() if line.startswith('| squeezenet1_1 |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[2] == '1,235,496' and float(cells[4]) < 1e-4 and float(cells[5]) < 1e-4 and cells[6] == '-'
