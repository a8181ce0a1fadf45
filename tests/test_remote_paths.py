"""Remote paths (issue 23, item 3): a run, its resume, a sweep with its ledger and table, --viz pictures
and image-folder data, end to end with the workdirs and the data under ``gs://test-bucket/...``.

The child process (this file run as a script) reaches ``gs://`` through tests/fake_gcs.py: etils.epath's
fsspec backend (as with ``pip install gcsfs``) over a filesystem that keeps the objects under a local
folder, with GCS's semantics where they differ from a disk (no append; folders exist only while
objects are under them; ``walk`` roots without the scheme). TensorStore (orbax's array data) and
ArrayRecord (TFDS's files) have their own native GCS clients: the test maps their ``gs://`` specs and
paths to the same folder, and orbax's hierarchical-namespace query (a GCS API call) answers "no".
Those clients are those libraries' responsibility; this test checks that every byte the project
writes or reads reaches them, and epath, as a ``gs://`` path, and that nothing lands on the local disk.

What the child does:
  1. ``launch.py``'s code path (``research.cli``, in process): LeNet-5 on digits, 12 steps, workdir
     ``gs://test-bucket/runs/full``, TFDS data dir ``gs://test-bucket/tfds`` (prepared there);
  2. the same config stopped at step 8 in ``gs://test-bucket/runs/resumed``, then relaunched through the
     CLI (resumes from the gs:// checkpoint, finishes);
  3. a 2-run sweep (seeds) in ``gs://test-bucket/sweeps/seeds`` and its table (md, csv, png);
  4. weights read back from gs:// (``init.checkpoint`` / ``style.weights``: the workdir and a .msgpack;
     the GAN's scoring classifier) and ``--viz`` pictures (filters, receptive fields) into the workdir;
  5. image folders under ``$RESEARCH_DATA_DIR=gs://test-bucket/data``: a folder of 100x100 PNGs
     (stored as file bytes, decoded and resized when read) and a .tgz of 8x8 grayscale PNGs, built into the gs:// TFDS data dir and read.
The parent checks the files under the mapped folder, bitwise-equal final parameters (resumed vs
uninterrupted), the ledger rows and the table, and that no ``gs:`` folder appeared anywhere locally.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUCKET = 'gs://test-bucket'
CONFIG = 'experiments/classification/lenet5_digits.py'
STEPS = 12


def _child(root: str) -> None:
    """The child process: every path below is gs://; prints ``RESULT <json>`` at the end."""
    sys.path.insert(0, str(REPO))
    from tests import fake_gcs

    fake_gcs.install(root)

    import types

    import jax
    from absl import flags
    from ml_collections import ConfigDict
    from PIL import Image

    from research import cli, storage, tasks
    from research.data import datasets
    from research.experiments import commands, sweep, visualize

    out: dict = {}
    argv = [
        'launch.py',
        f'--config={REPO / CONFIG}',
        f'--workdir={BUCKET}/runs/full',
        f'--config.data.data_dir={BUCKET}/tfds',
        f'--config.train.duration={STEPS} steps',
        '--config.train.eval_every=6 steps',
        '--config.train.checkpoint_every=4 steps',
        '--config.train.log_every_steps=4',
        '--config.logging.profile_steps=2:3',  # a jax.profiler trace, copied into the gs:// workdir
        '--noprogress',
    ]
    sys.argv = argv  # the config flag reads its overrides from sys.argv, as under launch.py
    rest = cli.parse_flags(argv)
    out['rc_full'] = cli.main(rest)
    config = flags.FLAGS.config
    tasks.train_and_evaluate(config, f'{BUCKET}/runs/resumed', stop_after_steps=8, show_progress=False)
    flags.FLAGS.workdir = f'{BUCKET}/runs/resumed'
    out['rc_resumed'] = cli.main(rest)  # the relaunch: resumes from step 8

    base = ConfigDict(config.to_dict())
    base.train.duration, base.train.eval_every, base.train.checkpoint_every = '6 steps', '', ''
    root_s = f'{BUCKET}/sweeps/seeds'
    runs = sweep.expand(base, sweep.product(seed=[0, 1]), root_s)
    out['statuses'] = sweep.run_sweep(runs, sweep_name='seeds', root=root_s, show_progress=False)
    module = types.SimpleNamespace(
        get_table=lambda arg=None: dict(
            name='seeds', rows='model.name', metric='test_error', paper={'lenet5_modern': 1.5}
        )
    )
    out['tables'] = [str(p) for p in commands.render_tables(module, None, runs, root_s, [])]

    # Weights read from gs://: init.checkpoint / style.weights (a workdir, a .msgpack) and the GAN's scorer.
    from flax import serialization

    from research.tasks.gan import ClassifierScorer
    from research.train.transfer import load_pretrained

    from_workdir = load_pretrained(f'{BUCKET}/runs/full')
    storage.write_bytes(f'{BUCKET}/weights/lenet.msgpack', serialization.to_bytes(from_workdir))
    from_msgpack = load_pretrained(f'{BUCKET}/weights/lenet.msgpack')
    leaves = [
        (np.asarray(a), np.asarray(b)) for a, b in zip(*map(jax.tree.leaves, (from_workdir, from_msgpack)))
    ]
    out['weights_equal'] = bool(leaves) and all(np.array_equal(a, b) for a, b in leaves)
    out['scorer_probs_shape'] = list(
        ClassifierScorer(f'{BUCKET}/runs/full').probs(np.zeros((2, 32, 32, 1))).shape
    )

    visualize.run_viz(config, f'{BUCKET}/runs/full', 'filters')
    visualize.run_viz(config, f'{BUCKET}/runs/full', 'receptive_field', dilation='1,2')

    rng = np.random.default_rng(0)
    for split in ('train', 'test'):  # a folder of 100x100 RGB PNGs (stored as encoded bytes)
        for cls in ('cat', 'dog'):
            for i in range(2):
                pixels = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
                storage.save_image(Image.fromarray(pixels), f'{BUCKET}/data/pets/{split}/{cls}/{i}.png')
    buf = io.BytesIO()  # a .tgz of 8x8 grayscale PNGs (decoded to pixels at build time)
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
        for split in ('train', 'test'):
            for label in ('a', 'b', 'c'):
                png = io.BytesIO()
                Image.fromarray(np.full((8, 8), 40 * 'abc'.index(label), np.uint8)).save(png, format='PNG')
                info = tarfile.TarInfo(f'{split}/{label}/x.png')
                info.size = len(png.getvalue())
                tar.addfile(info, io.BytesIO(png.getvalue()))
    storage.write_bytes(f'{BUCKET}/data/letters.tgz', buf.getvalue())
    for path, size, classes in (
        ('$RESEARCH_DATA_DIR/pets', 16, ()),
        ('$RESEARCH_DATA_DIR/letters.tgz', 0, ('c', 'a')),
    ):
        c = ConfigDict(config.data.to_dict())
        c.name, c.path, c.image_size, c.classes = 'image_folder', path, size, classes
        info = datasets.get_dataset_info(c)
        images, labels = datasets.get_split(c, 'test').gather(np.arange(datasets.split_size(c, 'test')))
        out[path.rsplit('/', 1)[-1]] = dict(
            num_classes=info.num_classes,
            shape=list(images.shape),
            labels=labels.tolist(),
            max=int(images.max()),
        )
    print('RESULT ' + json.dumps(out, default=str))


def _local_gs_dirs(*tops: Path) -> list[str]:
    """Folders or files named like a URL scheme (``gs:``) under ``tops``: what pathlib/os.path make of a
    ``gs://`` path."""
    found = []
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith('gs:')]
    return found


def test_train_resume_sweep_table_viz_and_data_through_gs(tmp_path):
    root, cwd = tmp_path / 'gcs', tmp_path / 'cwd'
    (root / 'test-bucket').mkdir(parents=True)  # the bucket
    cwd.mkdir()
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), RESEARCH_JAX_CACHE='', RESEARCH_DATA_DIR=f'{BUCKET}/data')
    env.pop('TFDS_DATA_DIR', None)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(root)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith('RESULT '))
    out = json.loads(line[len('RESULT ') :])

    # Nothing on the local disk: no 'gs:' folder (pathlib's reading of gs://), the child's cwd empty.
    assert _local_gs_dirs(tmp_path, REPO) == []
    assert sorted(os.listdir(cwd)) == []

    bucket = root / 'test-bucket'
    full, resumed = bucket / 'runs' / 'full', bucket / 'runs' / 'resumed'
    assert out['rc_full'] == 0 and out['rc_resumed'] == 0
    assert 'workdir gs://test-bucket/runs/full: no run lock on an object store' in proc.stdout
    assert 'resumed from gs://test-bucket/runs/resumed/checkpoints/8 (step 8' in proc.stdout

    # TensorBoard through epath: the scalars and the config, readable (tests/test_reporting.py's reader).
    from tests.test_reporting import _tb_events

    scalars, _, texts = _tb_events(full)
    assert [s for s, _ in scalars['train/loss']] == [4, 8, STEPS] and [
        s for s, _ in scalars['test/loss']
    ] == [6, STEPS]
    assert 'config' in ''.join(texts)

    assert list((full / 'profile').rglob('*.xplane.pb'))  # the profiler's trace

    # The runs' files, in the bucket.
    for wd in (full, resumed):
        summary = json.loads((wd / 'summary.json').read_text())
        assert (
            summary['complete']
            and summary['step'] == STEPS
            and summary['workdir'] == f'{BUCKET}/runs/{wd.name}'
        )
        assert json.loads((wd / 'config.json').read_text())['data']['data_dir'] == f'{BUCKET}/tfds'
        assert list((wd / 'tb').glob('events.out.tfevents.*'))[0].stat().st_size > 200
    assert (bucket / 'tfds' / 'digits' / '1.0.0' / 'dataset_info.json').exists()

    # Checkpoints with their checksum record; they verify and restore (read back from the bucket's folder).
    from research.train.checkpoint import Checkpointer, verify_dir

    steps = sorted(int(p.name) for p in (resumed / 'checkpoints').iterdir() if p.name.isdigit())
    assert steps[-1] == STEPS and 8 in steps
    for wd in (full, resumed):
        step_dir = wd / 'checkpoints' / str(STEPS)
        assert (step_dir / 'checksums.json').exists() and (step_dir / 'commit_success.txt').exists()
        assert verify_dir(step_dir) is None
    states = []
    for wd in (full, resumed):
        ckpt = Checkpointer(wd, async_save=False)
        states.append(ckpt.restore_raw(STEPS))
        ckpt.close()
    import jax

    a, b = (jax.tree_util.tree_leaves_with_path(s) for s in states)
    assert [k for k, _ in a] == [k for k, _ in b] and len(a) > 4
    for (k, x), (_, y) in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y)), f'{jax.tree_util.keystr(k)} differs after resume'

    def rows(wd, split):
        return [
            r for r in map(json.loads, (wd / 'metrics.jsonl').read_text().splitlines()) if r['split'] == split
        ]

    assert [r['step'] for r in rows(resumed, 'test')] == [6, STEPS]
    assert [r['loss'] for r in rows(resumed, 'test')] == [r['loss'] for r in rows(full, 'test')]
    assert [r['step'] for r in rows(resumed, 'train')] == [4, 8, STEPS]

    # The sweep: its ledger and table, in the bucket.
    sweep_dir = bucket / 'sweeps' / 'seeds'
    assert sorted(out['statuses'].values()) == ['done', 'done']
    ledger_rows = [json.loads(l) for l in (sweep_dir / 'ledger.jsonl').read_text().splitlines()]
    assert len(ledger_rows) == 2 and {r['status'] for r in ledger_rows} == {'done'}
    assert {r['seed'] for r in ledger_rows} == {0, 1}
    assert all(r['workdir'] == f'{BUCKET}/sweeps/seeds/{r["id"]}' for r in ledger_rows)
    errors = [r['metrics']['test_error'] for r in ledger_rows]
    md = (sweep_dir / 'tables' / 'seeds.md').read_text()
    assert f'| lenet5_modern | {np.mean(errors):.2f} ± {np.std(errors, ddof=1):.2f} | 1.50 |' in md
    csv_text = (sweep_dir / 'tables' / 'seeds.csv').read_text()
    assert 'lenet5_modern' in csv_text
    assert sorted(out['tables']) == sorted(
        f'{BUCKET}/sweeps/seeds/tables/seeds{s}' for s in ('.md', '.csv', '.png', '_curves.png')
    )
    for r in ledger_rows:
        assert (sweep_dir / r['id'] / 'run.json').exists() and (sweep_dir / r['id'] / 'summary.json').exists()

    # init.checkpoint / style.weights from a gs:// workdir and .msgpack; the GAN's scorer from a gs:// workdir.
    assert out['weights_equal'] and out['scorer_probs_shape'] == [2, 10]

    # Pictures: the table's plots and --viz's, PNGs in the bucket.
    for png in (
        sweep_dir / 'tables' / 'seeds.png',
        sweep_dir / 'tables' / 'seeds_curves.png',
        full / 'viz' / 'filters.png',
        full / 'viz' / 'receptive_field.png',
        full / 'viz' / 'dilation_rf.png',
    ):
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png

    # Image folders under $RESEARCH_DATA_DIR=gs://..., built into the gs:// TFDS data dir and read back.
    pets = out['pets']
    assert pets['num_classes'] == 2 and pets['shape'] == [4, 16, 16, 3] and pets['max'] > 150  # resized noise
    assert sorted(pets['labels']) == [0, 0, 1, 1]
    letters = out['letters.tgz']  # classes ('c', 'a'): relabelled 0, 1 in that order
    assert letters['num_classes'] == 2 and letters['shape'] == [2, 8, 8, 1]
    assert sorted(letters['labels']) == [0, 1] and letters['max'] == 80
    built = sorted(p.name for p in (bucket / 'tfds' / 'image_folder').iterdir())
    assert (
        len(built) == 2
        and any(n.startswith('pets_') for n in built)
        and any(n.startswith('letters_') for n in built)
    )


if __name__ == '__main__':
    _child(sys.argv[1])


# -- research/storage.py on a local disk: what callers saw before --------------------------------------
def test_storage_keeps_local_files_as_they_were(tmp_path):
    from PIL import Image

    from research import storage

    p = storage.as_path(str(tmp_path / 'a.txt'))
    assert isinstance(p, Path) and not storage.is_remote(p) and storage.is_remote('gs://b/x')
    storage.append_text(p, '1\n')
    storage.append_text(p, '2\n')
    assert p.read_text() == '1\n2\n'
    storage.write_text(tmp_path / 'sub' / 'b.json', '{}', atomic=True)
    assert sorted(os.listdir(tmp_path / 'sub')) == ['b.json']  # no temporary file left
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    img.save(tmp_path / 'direct.png', optimize=True)
    out = storage.save_image(img, tmp_path / 'pics' / 'via.png', optimize=True)
    assert isinstance(out, Path) and out.read_bytes() == (tmp_path / 'direct.png').read_bytes()
    with storage.open_image(out) as im:
        assert np.array_equal(np.asarray(im), np.asarray(img))
    assert storage.absolute('gs://b/x') == 'gs://b/x' and storage.absolute('~/x') == os.path.expanduser('~/x')
    with storage.locked(tmp_path / 'ledger.jsonl'):
        assert (tmp_path / 'ledger.jsonl.lock').exists()


def test_configure_remote_turns_gcsfs_listing_cache_off_unless_set(monkeypatch):
    import fsspec.config

    from research import storage

    monkeypatch.setattr(fsspec.config, 'conf', {})
    storage.configure_remote()
    assert fsspec.config.conf == {'gs': {'use_listings_cache': False}}
    monkeypatch.setattr(fsspec.config, 'conf', {'gcs': {'use_listings_cache': True}})
    storage.configure_remote()
    assert fsspec.config.conf == {'gcs': {'use_listings_cache': True}}
