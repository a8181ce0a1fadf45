"""Data the user owns: the data root $RESEARCH_DATA_DIR, the one-line error of a missing folder, no
path beside the repository in any config, ``python -m research.data.make_folders`` (tested offline on
TFDS's real builders fed small raw files), and the image-folder cache keyed by the folder's contents."""

import io
import logging
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.config import base_config
from research.data import datasets, roots
from research.data.builders import image_folder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests'))
import tfds_fakes


def test_no_config_points_beside_the_repository():
    """A clone without ../shared finds no path to it in any config: experiments/ names no 'shared'
    folder, and every config's folder is under $RESEARCH_DATA_DIR."""
    pattern = re.compile(r"""shared/|['"]shared['"]|\.\./shared|SHARED""")
    hits = [
        f'{p.relative_to(REPO)}:{i}: {line.strip()}'
        for p in sorted((REPO / 'experiments').rglob('*.py'))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits
    from experiments import paths

    assert paths.CIFAR10_FOLDER == '$RESEARCH_DATA_DIR/cifar10-jpg.tgz'
    assert paths.MNIST10K_FOLDER == '$RESEARCH_DATA_DIR/mnist10k-png.tgz'


def test_data_root_expands_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('RESEARCH_DATA_DIR', str(tmp_path))
    assert roots.expand('$RESEARCH_DATA_DIR/x.tgz') == f'{tmp_path}/x.tgz'
    assert roots.expand('${RESEARCH_DATA_DIR}/x.tgz') == f'{tmp_path}/x.tgz'
    monkeypatch.delenv('RESEARCH_DATA_DIR')
    assert roots.expand('$RESEARCH_DATA_DIR/x.tgz') == os.path.expanduser('~/research_data/x.tgz')
    with pytest.raises(
        ValueError,
        match=r"data.path='\$NO_SUCH_VAR_XYZ/a': environment variable \$NO_SUCH_VAR_XYZ is not set",
    ):
        roots.expand('$NO_SUCH_VAR_XYZ/a')


def test_missing_folder_is_one_line_naming_the_key_the_variable_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv('RESEARCH_DATA_DIR', str(tmp_path / 'data'))
    c = base_config().data
    c.name, c.path, c.data_dir = 'image_folder', '$RESEARCH_DATA_DIR/cifar10-jpg.tgz', str(tmp_path / 'tfds')
    with pytest.raises(FileNotFoundError) as e:
        datasets.get_builder(c)
    msg = str(e.value)
    want = tmp_path / 'data' / 'cifar10-jpg.tgz'
    assert '\n' not in msg
    assert msg.startswith(f"data.path='$RESEARCH_DATA_DIR/cifar10-jpg.tgz': '{want}' does not exist")
    assert f"$RESEARCH_DATA_DIR='{tmp_path / 'data'}'" in msg
    assert f'python -m research.data.make_folders --dataset=cifar10 --out={want}' in msg
    # Unset: the default root is named; the MNIST folder names its own command.
    monkeypatch.delenv('RESEARCH_DATA_DIR')
    c.path = '$RESEARCH_DATA_DIR/mnist10k-png.tgz'
    with pytest.raises(
        FileNotFoundError, match=r'\$RESEARCH_DATA_DIR is unset: default ~/research_data.*--dataset=mnist10k'
    ):
        datasets.get_builder(c)
    c.path = ''
    with pytest.raises(FileNotFoundError, match='data.path is empty'):
        datasets.get_builder(c)


def test_launch_with_a_missing_folder_prints_one_line(tmp_path):
    env = {**os.environ, 'RESEARCH_DATA_DIR': str(tmp_path / 'nothing_here'), 'PYTHONPATH': str(REPO)}
    out = subprocess.run(
        [
            sys.executable,
            'launch.py',
            '--config=experiments/classification/resnet_cifar.py:depth=20,folder',
            f'--workdir={tmp_path / "run"}',
            f'--config.data.data_dir={tmp_path / "tfds"}',
            '--progress=false',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1 and 'Traceback' not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("launch.py: FileNotFoundError: data.path='$RESEARCH_DATA_DIR/cifar10-jpg.tgz'")
    assert 'make_folders --dataset=cifar10' in last


# -- make_folders ----------------------------------------------------------------------------------


def _make_folders(raw, data_root, *args):
    cmd = [
        sys.executable,
        str(REPO / 'tests' / 'tfds_fakes.py'),
        str(raw),
        '--',
        '-m',
        'research.data.make_folders',
        *args,
    ]
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'RESEARCH_DATA_DIR': str(data_root)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """make_folders run on TFDS's cifar10 and mnist builders fed small raw files (tests/tfds_fakes.py):
    cifar10 into the default place under $RESEARCH_DATA_DIR, mnist10k into a folder tree."""
    pytest.importorskip('tensorflow', reason="make_folders prepares TFDS datasets: the 'prepare' extra")
    root = tmp_path_factory.mktemp('made')
    raw = root / 'raw'
    tfds_fakes.write_raw(str(raw))
    data_root, tfds_dir = root / 'data', f'--data_dir={root / "tfds"}'
    cifar = _make_folders(raw, data_root, '--dataset=cifar10', tfds_dir)
    mnist = _make_folders(raw, data_root, '--dataset=mnist10k', tfds_dir, f'--out={root / "mnist10k"}')
    again = _make_folders(raw, data_root, '--dataset=cifar10', tfds_dir)
    return root, cifar, mnist, again


def test_make_folders_writes_the_cifar10_layout_from_tfds(made):
    root, cifar, _, again = made
    assert cifar.returncode == 0, cifar.stderr[-3000:]
    out = root / 'data' / 'cifar10-jpg.tgz'
    assert cifar.stdout.strip().splitlines()[-1] == f'wrote {out}: train 50, test 20 images'
    files = _members(out)
    assert len(files) == 70
    # <split>/<class name>/<NNNN>.jpg, classes by name from TFDS's label feature (the raw batches.meta.txt)
    assert sorted({n.split('/')[1] for n in files}) == sorted(
        ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    )
    assert {n.split('/')[0] for n in files} == {'train', 'test'}
    assert sum(n.startswith('train/bird/') for n in files) == 5 and 'test/truck/0001.jpg' in files
    im = Image.open(io.BytesIO(files['train/cat/0000.jpg']))
    assert im.format == 'JPEG' and im.size == (32, 32) and im.mode == 'RGB'
    assert list(im.quantization[0])[:4] == [8, 6, 5, 8]  # quality 75, as the offline copy
    # An existing output is kept.
    assert again.returncode == 2 and 'exists (use --force to replace it)' in again.stderr


def test_make_folders_mnist10k_is_read_by_the_image_folder_builder(made, tmp_path):
    """mnist10k: per class the first digits of TFDS's train then test split (here 6 + 2 of each of the
    generated 80), split 80/20 stratified; pixels equal to the raw idx file's."""
    root, _, mnist, _ = made
    assert mnist.returncode == 0, mnist.stderr[-3000:]
    assert mnist.stdout.strip().splitlines()[-1] == f'wrote {root / "mnist10k"}: train 64, test 16 images'
    c = base_config().data
    c.name, c.path, c.data_dir = 'image_folder', str(root / 'mnist10k'), str(tmp_path / 'tfds')
    info = datasets.get_dataset_info(c)
    assert info.class_names == tuple(str(i) for i in range(10)) and info.image_shape == (28, 28, 1)
    assert info.num_examples['train'] == 64 and info.num_examples['test'] == 16
    images, labels = datasets.get_split(c, 'train').gather(np.arange(64))
    assert sorted(np.bincount(labels)) == [6] * 6 + [7] * 4  # 8 per class, 80/20 stratified
    # Each image is one of the generated digits: the bar at column 2 + 2 * label.
    bars = images[..., 0][:, 4:24, :].min(1) == 255
    assert all(bars[i, 2 + 2 * lab : 5 + 2 * lab].all() for i, lab in enumerate(labels))


# -- the image-folder cache keyed by content -------------------------------------------------------


def _folder(root: Path, n_per_class: int, value=0) -> Path:
    for split in ('train', 'test'):
        for cls in ('a', 'b'):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                Image.fromarray(np.full((8, 8), 40 * i + (100 if cls == 'b' else 0) + value, np.uint8)).save(
                    d / f'{i}.png'
                )
    return root


def test_images_added_to_the_folder_after_the_first_build_are_seen(tmp_path, caplog):
    src = _folder(tmp_path / 'imgs', 2)
    c = base_config().data
    c.name, c.path, c.data_dir, c.normalize = 'image_folder', str(src), str(tmp_path / 'tfds'), False
    assert datasets.get_dataset_info(c).num_examples['train'] == 4
    first = datasets.get_builder(c).data_path
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(src / 'train' / 'a' / 'new.png')
    assert datasets.get_dataset_info(c).num_examples['train'] == 4  # a run keeps what it opened
    datasets.clear_caches()  # the next run
    with caplog.at_level(logging.WARNING):
        info = datasets.get_dataset_info(c)
    assert info.num_examples['train'] == 5
    assert 'changed since it was built' in caplog.text and str(src) in caplog.text
    assert not Path(first).exists()  # the previous build is removed, not left to pile up
    images, _ = datasets.get_split(c, 'train').gather(np.arange(5))
    assert 7 in images[:, 0, 0, 0]


def test_an_image_corrupted_in_the_folder_after_the_first_build_is_seen(tmp_path):
    src = _folder(tmp_path / 'imgs', 2)
    c = base_config().data
    c.name, c.path, c.data_dir = 'image_folder', str(src), str(tmp_path / 'tfds')
    datasets.get_dataset_info(c)
    bad = src / 'train' / 'b' / '1.png'
    bad.write_bytes(b'\xff' * bad.stat().st_size)  # same size, new mtime
    datasets.clear_caches()  # the next run
    with pytest.raises(ValueError, match=r"cannot read image 'train/b/1.png'"):
        datasets.get_dataset_info(c)


def test_a_tarball_replaced_after_the_first_build_is_rebuilt(tmp_path):
    def tgz(value):
        src = _folder(tmp_path / f'imgs{value}', 1, value)
        path = tmp_path / 'imgs.tgz'
        with tarfile.open(path, 'w:gz') as tar:
            tar.add(src, arcname='.')
        os.utime(path, ns=(10**18 + value, 10**18 + value))
        return path

    c = base_config().data
    c.name, c.path, c.data_dir, c.normalize = 'image_folder', str(tgz(0)), str(tmp_path / 'tfds'), False
    before, _ = datasets.get_split(c, 'test').gather(np.arange(2))
    tgz(5)
    datasets.clear_caches()  # the next run
    after, _ = datasets.get_split(c, 'test').gather(np.arange(2))
    np.testing.assert_array_equal(after.astype(int) - before.astype(int), 5)
    assert image_folder.config_name(str(tmp_path / 'imgs.tgz')).startswith('imgs_')
