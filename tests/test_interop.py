"""The torchvision converter's contract: clear errors for wrong weights, exclusion, file round trip."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torchvision")
import torch  # noqa: E402

from research.interop import torchvision as tvi  # noqa: E402
from research.models import count_params  # noqa: E402


@pytest.fixture(scope="module")
def resnet18_sd():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in tvi.torchvision_model("resnet18").state_dict().items()}


def test_unknown_conversion_is_named():
    with pytest.raises(ValueError, match="no torchvision conversion for 'resnet19'.*did you mean"):
        tvi.get_conversion("resnet19")


def test_every_conversion_targets_a_registered_model():
    from research import models

    names = tvi.list_conversions()
    assert {"resnet50", "vgg16", "densenet121", "mobilenet_v2", "efficientnet_b0"} <= set(names)
    for n in names:
        assert tvi.get_conversion(n).model in models.list_models(), n


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tvi.from_torchvision("resnet18", tmp_path / "nope.pth")


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(tvi.ConversionError, match="bad.pth"):
        tvi.from_torchvision("resnet18", bad)


def test_missing_and_unused_tensors_are_listed(resnet18_sd):
    sd = dict(resnet18_sd)
    del sd["layer2.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(tvi.ConversionError) as e:
        tvi.from_torchvision("resnet18", sd)
    assert "layer2.0.conv1.weight" in str(e.value) and "extra.weight" in str(e.value)


def test_shape_mismatch_is_named(resnet18_sd):
    sd = dict(resnet18_sd)
    sd["fc.weight"] = torch.zeros(10, 512)
    with pytest.raises(tvi.ConversionError, match=r"shape mismatch .*fc.weight"):
        tvi.from_torchvision("resnet18", sd)


def test_exclude_drops_the_head_for_a_new_task(resnet18_sd):
    v = tvi.from_torchvision("resnet18", resnet18_sd, exclude=lambda k: k.startswith("fc."))
    full = tvi.from_torchvision("resnet18", resnet18_sd)
    assert count_params(full) - count_params(v) == 512 * 1000 + 1000


def test_file_round_trip_and_msgpack_cli(resnet18_sd, tmp_path):
    from flax import serialization

    path = tmp_path / "r18.pth"
    torch.save(resnet18_sd, path)
    assert tvi._main(["--convert", "resnet18", str(path)]) == 0
    restored = serialization.msgpack_restore((tmp_path / "r18.msgpack").read_bytes())
    direct = tvi.from_torchvision("resnet18", path)
    back = tvi.to_torchvision("resnet18", restored)
    for k, t in resnet18_sd.items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[k].numpy(), t.numpy(), err_msg=k)
    assert count_params(restored) == count_params(direct) == 11_689_512


def test_pth_as_transfer_init_with_a_new_head(resnet18_sd, tmp_path):
    """init.checkpoint=<torchvision .pth> for a 10-class resnet18: every backbone tensor comes from
    the file, the new 10-way fc stays as initialised; without exclude the fc shape clash is named."""
    import jax

    from research import models
    from research.train import transfer

    path = tmp_path / "r18.pth"
    torch.save(resnet18_sd, path)
    abstract = models.abstract_variables(models.create("resnet18", num_classes=10), (1, 64, 64, 3))
    target = jax.tree.map(lambda a: np.full(a.shape, 7.0, a.dtype), dict(abstract))
    src = transfer.load_pretrained(path, torchvision="resnet18")
    with pytest.raises(transfer.PretrainedMismatchError, match=r"params/fc/kernel \(512, 1000\)"):
        transfer.merge_pretrained(target, src)
    merged, loaded = transfer.merge_pretrained(target, src, exclude="^fc/")
    np.testing.assert_array_equal(merged["params"]["fc"]["kernel"], 7.0)
    np.testing.assert_array_equal(
        merged["params"]["conv1"]["kernel"], resnet18_sd["conv1.weight"].numpy().transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(merged["batch_stats"]["bn1"]["var"], resnet18_sd["bn1.running_var"].numpy())
    assert len(loaded) == len(jax.tree.leaves(target)) - 2


@pytest.mark.parametrize("as_module", [True, False], ids=["module", "state_dict"])
def test_conversion_copies_the_torch_tensors(as_module):
    """Issue 27 (2): changing the torch model in place after conversion changes no converted array
    (``.numpy()`` of a CPU tensor and ``jnp.asarray`` of that share memory)."""
    import jax

    tm = tvi.randomize_torch_model(tvi.torchvision_model("resnet18"), seed=1)
    variables = tvi.from_torchvision("resnet18", tm if as_module else tm.state_dict())
    before = jax.tree.map(np.array, variables)
    with torch.no_grad():
        tm.fc.bias.add_(100)
        for t in tm.state_dict().values():  # every parameter and buffer, in place
            t.add_(1)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
