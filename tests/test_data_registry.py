"""The dataset builder registry (research.data.builders): builders register by name, and the generic
data modules import no task package."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from research.data import builders, datasets

REPO = Path(__file__).resolve().parents[1]


def test_every_builder_name_is_registered_with_its_kind():
    assert builders.names() == ('digits', 'image_folder', 'mnist_seg', 'shapes_seg', 'mnist_det', 'voc_seg')
    assert builders.names('segmentation') == ('mnist_seg', 'shapes_seg', 'voc_seg')
    assert builders.names('detection') == ('mnist_det',)
    assert datasets.OFFLINE_BUILDERS == builders.names()
    assert builders.lookup('voc_seg/2007').name == 'voc_seg' and builders.lookup('cifar10') is None
    with pytest.raises(ValueError, match='registered twice'):
        builders.register('digits', lambda *a: None, kind='classification')
    with pytest.raises(ValueError, match=r"data.name='voc_seg/1999': unknown config '1999'.*2012, 2007"):
        builders.lookup('voc_seg').build('voc_seg/1999', '', '/nonexistent')


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at function level?) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                out.extend((f'{child.module}.{a.name}', inner) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def test_generic_data_modules_import_no_task_package():
    """research/data/** imports neither research.segmentation / research.detection nor any higher layer,
    at module or function level (the datasets <-> segmentation/detection cycle of issue 22 is gone)."""
    upward = (
        'research.segmentation',
        'research.detection',
        'research.train',
        'research.tasks',
        'research.generative',
        'research.cli',
        'research.experiments',
        'research.models',
    )
    found = []
    for path in sorted((REPO / 'research' / 'data').rglob('*.py')):
        for module, _ in _imports(path):
            if module.startswith(upward):
                found.append(f'{path.relative_to(REPO)}: {module}')
    assert not found, found


def test_importing_the_data_package_registers_every_builder_in_a_fresh_process():
    code = (
        'import research.data.datasets as d; print(",".join(d.OFFLINE_BUILDERS)); import sys; '
        'print(sorted(m for m in sys.modules if m.startswith(("research.segmentation", "research.detection"))))'
    )
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, 'PYTHONPATH': str(REPO)},
    ).stdout.split('\n')
    assert out[0] == 'digits,image_folder,mnist_seg,shapes_seg,mnist_det,voc_seg'
    assert out[1] == '[]'  # no task package loaded by the generic data module


def test_task_data_modules_refuse_datasets_of_another_kind_by_name(tmp_path):
    from research.config import base_config
    from research.segmentation import data as seg_data

    c = base_config()
    c.data.data_dir = str(tmp_path)
    c.data.name = 'voc/2012'  # TFDS's voc has boxes only: the message points at voc_seg
    with pytest.raises(
        ValueError, match=r"data.name='voc/2012'.*use data.name='voc_seg'.*mnist_seg, shapes_seg, voc_seg"
    ):
        seg_data.get_seg_builder(c.data, c.seg)
    c.data.name = 'digits'
    with pytest.raises(
        ValueError, match=r"data.name='digits' holds classification data, not segmentation masks"
    ):
        seg_data.get_seg_builder(c.data, c.seg)
