"""The documentation holds: every internal link and anchor resolves, every repository path it names exists,
every command naming an experiment config parses as launch.py would parse it (sweeps: their runs expand and
pass the preflight; other runs: the config validates and the model accepts its arguments), and the model
catalog page (docs/models.md) is what ``python -m research.models.catalog --markdown docs/models.md`` writes.

The site itself is built by ``mkdocs build --strict`` in .ci/run (the ``docs`` extra)."""

from __future__ import annotations

import copy
import functools
import glob
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / 'docs'

#: Paths of a layout being built, named by the docs before they exist (e.g. research/kernels/cpu.py). Remove
#: each entry once its file lands; the test fails for a listed path that exists.
PENDING: set[str] = set()


def doc_files() -> list[Path]:
    files = [ROOT / 'README.md', ROOT / 'CONTRIBUTING.md']
    files += sorted(p for p in DOCS.rglob('*.md') if 'hooks' not in p.parts)
    return files


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


_FENCE = re.compile(r'^( {0,4})(```|~~~).*?^\1\2[ \t]*$', re.M | re.S)
_INLINE_CODE = re.compile(r'(`+)(.+?)\1', re.S)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return _INLINE_CODE.sub(' ', _FENCE.sub('\n', text))


def slugify(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs and its anchors use), of the heading's text."""
    text = re.sub(r'`([^`]*)`', r'\1', heading)
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
    text = unicodedata.normalize('NFKD', text).encode('ascii', 'ignore').decode('ascii')
    text = re.sub(r'[^\w\s-]', '', text).strip().lower()
    return re.sub(r'[-\s]+', '-', text)


@functools.cache
def anchors(path: Path) -> set[str]:
    text = path.read_text()
    if path.name == 'contributing.md' and path.parent == DOCS:  # the snippet include of CONTRIBUTING.md
        text = (ROOT / 'CONTRIBUTING.md').read_text()
    out = set()
    for m in re.finditer(r'^#{1,6}\s+(.+?)\s*#*$', _FENCE.sub('\n', text), re.M):
        slug, n = slugify(m.group(1)), 1
        while slug in out:  # duplicates get _1, _2 ...
            slug = f'{slugify(m.group(1))}_{n}'
            n += 1
        out.add(slug)
    return out


_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')


def links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text()))


def test_the_docs_exist_and_the_readme_is_short():
    names = {_rel(p) for p in doc_files()}
    for page in (
        'getting-started',
        'configs',
        'pipeline',
        'models',
        'models-guide',
        'torchvision',
        'layers',
        'training',
        'multi-device',
        'sweeps',
        'segmentation',
        'detection',
        'generative',
        'visual-tools',
        'performance',
        'results',
        'contributing',
        'index',
    ):
        assert f'docs/{page}.md' in names, page
    assert len((ROOT / 'README.md').read_text().splitlines()) <= 250
    assert (ROOT / 'LICENSE').read_text().count('Apache License') >= 1


def test_readme_set_up_commands_are_the_main_job_and_ci_s_test_command():
    readme = (ROOT / 'README.md').read_text()
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    test_line = next(line for line in ci if 'pytest' in line and not line.startswith('#'))
    assert f'```bash\n{test_line}\n```' in readme
    main_job = (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e . && '
        'python launch.py --config=experiments/classification/lenet5_digits.py'
    )
    assert f'```bash\n{main_job}\n```' in readme
    assert 'mkdocs build --strict' in (ROOT / '.ci' / 'run').read_text()


def test_internal_links_and_anchors_resolve():
    bad = []
    for doc in doc_files():
        for target in links(doc):
            if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
                continue
            path, _, frag = target.partition('#')
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f'{_rel(doc)}: {target} (no such file)')
            elif frag and dest.suffix == '.md' and frag not in anchors(dest):
                bad.append(f'{_rel(doc)}: {target} (no heading #{frag})')
    assert not bad, '\n'.join(bad)


_PATH = re.compile(
    r'(?<![\w/.<$-])((?:research|experiments|benchmarks|tests|docs|\.ci)/[\w./*{},<>-]*[\w*}>/])'
)


def _expand(path: str) -> list[str]:
    m = re.search(r'\{([^{}]*)\}', path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(',') for q in _expand(path[: m.start()] + alt + path[m.end() :])]


def named_paths(text: str) -> set[str]:
    out = set()
    for m in _PATH.finditer(text):
        p = m.group(1).rstrip('.').split('::')[0]
        if '<' in p or '>' in p:
            continue  # a placeholder: experiments/<file>.py
        out.update(_expand(p))
    return out


def test_every_repository_path_named_in_the_docs_exists():
    missing = []
    for doc in doc_files():
        for p in sorted(named_paths(doc.read_text())):
            if p.rstrip('/') in PENDING:
                continue
            if not (glob.glob(str(ROOT / p)) if '*' in p else (ROOT / p).exists()):
                missing.append(f'{_rel(doc)}: {p}')
    assert not missing, '\n'.join(missing)
    assert not [p for p in PENDING if (ROOT / p).exists()], 'remove the paths that now exist from PENDING'


def test_path_and_link_extraction():
    text = 'see `research/models/{yolo,ssd}.py`, tests/test_docs.py::test_x and experiments/<file>.py.'
    assert named_paths(text) == {'research/models/yolo.py', 'research/models/ssd.py', 'tests/test_docs.py'}
    assert slugify('Results on `mnist_seg` (short CPU runs)') == 'results-on-mnist_seg-short-cpu-runs'
    assert slugify('Precision: `train.precision`') == 'precision-trainprecision'
    md = '[a](x.md#y) `[b](no.md)`\n```\n[c](no.md)\n```\n![d](images/e.png "t")'
    assert links_of(md) == ['x.md#y', 'images/e.png']


def links_of(text: str) -> list[str]:
    return _LINK.findall(_prose(text))


# ---------------------------------------------------------------------------------------------------------
# Commands that name an experiment config.


def _logical_lines(text: str):
    """Shell lines of the fenced code blocks (continuations joined) and inline code spans, as written."""
    for m in _FENCE.finditer(text):
        block = m.group(0).split('\n', 1)[1].rsplit('\n', 1)[0]
        yield from block.replace('\\\n', ' ').splitlines()
    for m in _INLINE_CODE.finditer(_FENCE.sub('\n', text)):
        yield m.group(2).replace('\n', ' ')


def commands() -> list[tuple[str, str]]:
    """(doc, command) for every shell command in the docs that names ``--config=experiments/...``."""
    out = []
    for doc in doc_files():
        for line in _logical_lines(doc.read_text()):
            for part in _split_shell(line):
                if '--config=experiments/' in part:
                    out.append((_rel(doc), part.strip()))
    return out


def _split_shell(line: str) -> list[str]:
    """``line`` split at ``&&``, ``;`` and `` & `` outside quotes (a quoted remote command stays whole)."""
    parts, cur, quote, i = [], [], None, 0
    while i < len(line):
        ch = line[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif (
            line.startswith('&&', i)
            or (ch == ';' and (i == 0 or line[i - 1] != '\\'))
            or line.startswith(' & ', i)
        ):
            parts.append(''.join(cur))
            cur = []
            i += 2 if line.startswith('&&', i) else (3 if line.startswith(' & ', i) else 1)
            continue
        cur.append(ch)
        i += 1
    parts.append(''.join(cur))
    return parts


def _tokens(cmd: str) -> list[str]:
    toks = shlex.split(cmd, comments=True)
    while toks and re.match(r'^[A-Z_][A-Z0-9_]*=', toks[0]):  # VAR=value prefixes
        toks.pop(0)
    return toks


@functools.cache
def _launch_flag_template():
    from research import cli

    return cli


def parse_launch(args: list[str]):
    """What launch.py's flag parsing makes of ``args``: a fresh FlagValues with the config flag and copies
    of the project's other flags, so each command parses from scratch (config file loaded, overrides set)."""
    from absl import flags
    from ml_collections import config_flags

    from research.config import add_model_overrides, split_model_overrides

    cli = _launch_flag_template()
    fv = flags.FlagValues()
    argv, model_args = split_model_overrides(['launch.py', *args])  # as cli.parse_flags does
    config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, lock_config=True, sys_argv=argv)
    for name in cli.KEY_FLAGS:
        if name != 'config':
            fv[name] = copy.deepcopy(flags.FLAGS[name])
    fv(argv)
    add_model_overrides(fv['config'].value, model_args)
    return fv


def check_launch_command(tokens: list[str], tmp: Path) -> str:
    from research.config import validate_config
    from research.experiments import commands as exp_commands
    from research.experiments import sweep as sweep_lib

    i = next(i for i, t in enumerate(tokens) if t.endswith('launch.py'))
    fv = parse_launch(tokens[i + 1 :])
    config = fv['config'].value
    config_arg = fv['config'].serialize().partition('=')[2]
    path, _, arg = config_arg.partition(':')
    if exp_commands.requested(fv['sweep'].value, fv['dry_run'].value, fv['table'].value):
        module = sweep_lib.load_config_module(path)
        runs = exp_commands.get_runs(module, arg, config, tmp)
        chosen = sweep_lib.select(runs, fv['sweep_only'].value)
        assert chosen, f'--sweep_only={fv["sweep_only"].value!r} selects no run'
        exp_commands.preflight(chosen)
        if exp_commands.table_names(fv['table'].value) is not None:
            assert exp_commands.get_table_specs(module, arg)
        return f'sweep of {len(chosen)} runs'
    validate_config(config)
    exp_commands.preflight([sweep_lib.Run('command', {}, config, tmp)])
    return f'model {config.model.name}'


def check_other_command(tokens: list[str]) -> str:
    """A script other than launch.py (benchmarks): its config file loads with its argument."""
    from research.config import validate_config
    from research.experiments import sweep as sweep_lib

    value = next(t for t in tokens if t.startswith('--config=experiments/')).partition('=')[2]
    path, _, arg = value.partition(':')
    config = sweep_lib.load_config_module(path).get_config(arg or None)
    validate_config(config)
    return f'config of {tokens[1] if len(tokens) > 1 else tokens[0]}'


def test_every_command_naming_an_experiment_config_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository root, as in the docs
    cmds = commands()
    assert len(cmds) > 50
    bad, checked = [], 0
    for doc, cmd in cmds:
        tokens = _tokens(cmd) if not ('<' in cmd or '$' in cmd) else []
        if not any(t.endswith('.py') and not t.startswith('--') for t in tokens):
            # a placeholder (<your images>), a shell variable, or no script: the config file must exist
            for value in re.findall(r'--config=(experiments/[^\s:"<]+\.py)', cmd):
                if not (ROOT / value).is_file():
                    bad.append(f'{doc}: {cmd}: no file {value}')
            continue
        try:
            if any(t.endswith('launch.py') for t in tokens):
                check_launch_command(tokens, tmp_path / str(checked))
            else:
                check_other_command(tokens)
            checked += 1
        except BaseException as e:  # absl flag errors, config errors, SystemExit from a config: all reported
            bad.append(f'{doc}: {cmd}\n    {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')
    assert not bad, '\n'.join(bad)
    assert checked > 40


def test_a_broken_command_is_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    tokens = _tokens(
        'python launch.py --config=experiments/classification/lenet5_digits.py --config.train.lrr=1'
    )
    with pytest.raises(Exception, match='lrr'):
        check_launch_command(tokens, tmp_path)
    tokens = _tokens(
        'python launch.py --config=experiments/ablations/resnet_degradation.py:quick,detph=20 --sweep'
    )
    with pytest.raises(Exception, match='detph'):
        check_launch_command(tokens, tmp_path)
    tokens = _tokens(
        'python launch.py --config=experiments/classification/lenet5_digits.py --config.model.depht=3'
    )
    with pytest.raises(Exception):
        check_launch_command(tokens, tmp_path)
    assert check_launch_command(
        _tokens(
            'python launch.py --config=experiments/ablations/resnet_degradation.py:quick '
            '--dry_run --sweep_only=model.depth=20'
        ),
        tmp_path,
    ).startswith('sweep of ')


# ---------------------------------------------------------------------------------------------------------
# The model catalog page.

#: Models whose counts the test recomputes (small inputs: seconds); the others are compared on their cheap
#: columns (name, input, classes, paper), which change whenever the registry or a docstring does.
COUNTED = ('lenet5', 'lenet5_modern', 'resnet20', 'wrn16_1', 'yolov1_mnist_conv')


def test_model_catalog_page_is_current():
    from research.models import catalog

    page = (DOCS / 'models.md').read_text()
    assert page.startswith(catalog.PAGE_HEADER), (
        'regenerate: python -m research.models.catalog --markdown docs/models.md'
    )
    committed = {r['name']: r for r in catalog.parse_page(page)}
    assert list(committed) == catalog.names(), 'the registry changed: regenerate docs/models.md'
    assert f'{len(committed)} models.' in page
    stale = []
    for name in committed:
        want = catalog.cheap_row(name)
        got = committed[name]
        written = catalog.markdown_row({**want, 'params': None if not want['input'] else 0, 'macs': 1})
        cells = [c.strip() for c in written.strip().strip('|').split('|')]
        if (got['input'], got['classes']) != (cells[1], cells[2]) or got['paper'] != cells[5]:
            stale.append(name)
    assert not stale, f'stale rows (regenerate docs/models.md): {stale}'
    lines = {
        r['name']: r
        for r in catalog.parse_page(catalog.markdown(catalog.rows('^(' + '|'.join(COUNTED) + ')$')))
    }
    for name in COUNTED:
        assert lines[name] == committed[name], name
