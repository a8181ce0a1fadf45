"""The model catalog: every registered model with its parameters, MACs, input size and paper.

``python -m research.models.catalog [--markdown FILE] [--only REGEX]`` prints the markdown table
row by row as each model is counted (a progress bar on stderr), or writes the documentation page
``docs/models.md`` (``--markdown docs/models.md``). Nothing is computed: ``jax.eval_shape`` + a
jaxpr trace per model via ``research.layers.summary.summarize`` (about 4 minutes for all of them on
2 cores). Counts are for the model's default ``num_classes`` (1000 for ImageNet models, 10 for
CIFAR/MNIST ones) at its paper resolution. ``tests/test_docs.py`` fails when the committed page is
stale.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time

from research import models
from research.layers.summary import summarize

#: (regex on the registry name, input shape (H, W, C)); first match wins, default 224x224x3.
INPUT_SHAPES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    (r'^lenet', (32, 32, 1)),
    # detection: mnist_det canvases for the CPU variants, the papers' / torchvision's sizes otherwise
    (r'_mnist(_conv)?$|_resnet18_fpn$', (128, 128, 1)),
    (r'^ssd300', (300, 300, 3)),
    (r'^yolov1', (448, 448, 3)),
    (r'^(retinanet|fasterrcnn|maskrcnn)_resnet50', (800, 800, 3)),
    (r'^(fast_rcnn|sppnet)_', (600, 600, 3)),
    (r'^inception_v[34]', (299, 299, 3)),
    (r'^context_module', (64, 64, 21)),  # Yu & Koltun: runs on a 21-class score map
    (r'^unet_valid', (572, 572, 3)),  # Ronneberger et al. Fig. 1 (572 -> 388)
    (r'^(fcn_|deeplabv3|lraspp|pspnet)', (520, 520, 3)),  # torchvision's segmentation resolution
    (r'^(fcn\d+s|segnet|deconvnet|unet)', (224, 224, 3)),
    (r'^efficientnet_b0', (224, 224, 3)),
    (r'^efficientnet_b1', (240, 240, 3)),
    (r'^efficientnet_b2', (288, 288, 3)),
    (r'^efficientnet_b3', (300, 300, 3)),
    (r'^efficientnet_b4', (380, 380, 3)),
    (r'^efficientnet_b5', (456, 456, 3)),
    (r'^efficientnet_b6', (528, 528, 3)),
    (r'^efficientnet_b7', (600, 600, 3)),
    (
        r'cifar|^resnet(20|32|44|56|110|1202)$|^plain|^wrn|^preact_resnet(110|164|1001)$|^resnext29|^densenet_bc',
        (32, 32, 3),
    ),
)


def input_shape(name: str) -> tuple[int, int, int]:
    for pattern, shape in INPUT_SHAPES:
        if re.search(pattern, name):
            return shape
    return (224, 224, 3)


def call_kwargs(model, shape: tuple[int, int, int]) -> dict:
    """Keyword inputs besides the image that ``model`` needs for a forward pass at ``shape`` (H, W, C):
    300 host proposals per image for the R-CNN lineage (``needs_proposals``), else none."""
    if not getattr(type(model), 'needs_proposals', False):
        return {}
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    box = jnp.asarray([[[0.0, 0.0, shape[1] / 2, shape[0] / 2]]])
    return {'proposals': {'boxes': jnp.tile(box, (1, 300, 1)), 'valid': jnp.ones((1, 300), bool)}}


def paper(name: str) -> str:
    """First sentence of the model class docstring (which cites the paper)."""
    cls = models.get_constructor(name)
    while isinstance(cls, functools.partial):
        cls = cls.func
    doc = (cls.__doc__ or '').strip().split('\n\n')[0]
    doc = ' '.join(doc.split())
    first = re.split(r'(?<!\bal)(?<!\bet)(?<!\bFig)(?<!\bSec)\.\s+(?=[A-Z(])', doc)[0]
    return first.rstrip('.')


def names(only: str | None = None) -> list[str]:
    """The models the catalog lists: the package's own (each family's ``REGISTRY_ENTRIES``), sorted;
    ``only``: a regex on the name. A model registered at run time (a user's, a test's) is not part of
    the catalog."""
    builtin = sorted(n for family in models._FAMILIES for n in family.REGISTRY_ENTRIES)
    return [n for n in builtin if not only or re.search(only, n)]


def cheap_row(name: str) -> dict:
    """The catalog row of ``name`` without its counts (no tracing): name, input, classes, paper."""
    shape = input_shape(name)
    try:
        model = models.create(name)
    except ValueError as e:
        if 'requires argument' not in str(e):
            raise
        needs = str(e).rpartition(': ')[2]
        return dict(
            name=name, input='', num_classes=None, paper=f'generic entry (requires {needs}); {paper(name)}'
        )
    return dict(
        name=name,
        input='x'.join(map(str, shape)),
        num_classes=getattr(model, 'num_classes', None),
        paper=paper(name),
    )


def rows(only: str | None = None, progress=None):
    """One dict per model (``cheap_row`` + params, MACs and the seconds taken), as each is counted.
    ``progress(i, n, name)`` is called before each model."""
    todo = names(only)
    for i, name in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), name)
        shape = input_shape(name)
        try:
            model = models.create(name)
        except ValueError as e:  # a generic entry whose required fields have no default
            if 'requires argument' not in str(e):
                raise
            needs = str(e).rpartition(': ')[2]
            yield dict(
                name=name,
                params=None,
                macs=None,
                input='',
                num_classes=None,
                seconds=0.0,
                paper=f'generic entry (requires {needs}); {paper(name)}',
            )
            continue
        t = time.perf_counter()
        s = summarize(model, (1, *shape), **call_kwargs(model, shape))
        yield dict(
            name=name,
            params=s.params,
            macs=s.macs,
            input='x'.join(map(str, shape)),
            num_classes=getattr(model, 'num_classes', None),
            paper=paper(name),
            seconds=time.perf_counter() - t,
        )


TABLE_HEADER = ('| model | input | classes | params | MACs | paper / notes |', '|---|---|---|---|---|---|')

PAGE_HEADER = """# Model catalog

Every registered model (`research.models.list_models()`), generated by
`python -m research.models.catalog --markdown docs/models.md`; `tests/test_docs.py` fails when this page
is stale. Parameters and MACs (multiply-adds of conv and linear layers per example, torchvision's
convention) are counted with `jax.eval_shape` at the input size shown (nothing is allocated), for the
model's default number of classes. Build any of them with `research.models.create(name, **kwargs)`;
`research.models.accepted_kwargs(name)` lists the knobs. The [models page](models-guide.md) explains the
families, their features and where torchvision and the papers differ.

"""


def markdown_row(r: dict) -> str:
    """One table line of a catalog row."""
    note = r['paper'] if len(r['paper']) <= 120 else r['paper'][:117].rstrip() + '...'
    if r.get('params') is None:
        return f'| `{r["name"]}` | | | | | {r["paper"][:120]} |'
    macs = f'{r["macs"] / 1e9:.3f} G' if r['macs'] >= 1e8 else f'{r["macs"] / 1e6:.1f} M'
    return f'| `{r["name"]}` | {r["input"]} | {r["num_classes"]} | {r["params"]:,} | {macs} | {note} |'


def markdown(rows_) -> str:
    """The markdown table of ``rows_``."""
    return '\n'.join([*TABLE_HEADER, *(markdown_row(r) for r in rows_)]) + '\n'


def page(rows_) -> str:
    """The documentation page (``docs/models.md``): a header paragraph and the table."""
    rows_ = list(rows_)
    return PAGE_HEADER + f'{len(rows_)} models.\n\n' + markdown(rows_)


def parse_page(text: str) -> list[dict]:
    """The rows of a page or table written by :func:`page` / :func:`markdown` (strings as written)."""
    out = []
    for line in text.splitlines():
        if not line.startswith('| `'):
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        name, inp, classes, params, macs = cells[:5]
        out.append(
            dict(
                name=name.strip('`'),
                input=inp,
                classes=classes,
                params=params,
                macs=macs,
                paper='|'.join(cells[5:]),
            )
        )
    return out


class _Bar:
    """``[#####...............] 44/176 densenet121``, redrawn in place on a terminal, one line per model
    elsewhere (logs, CI)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, 'isatty', lambda: False)()
        self.t0 = time.perf_counter()
        self.width = 0

    def __call__(self, i: int, n: int, name: str) -> None:
        filled = int(20 * i / max(n, 1))
        line = f'[{"#" * filled}{"." * (20 - filled)}] {i}/{n} {name} ({time.perf_counter() - self.t0:.0f} s)'
        if self.tty:
            self.stream.write('\r' + line.ljust(self.width))
            self.width = len(line)
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def close(self, n: int) -> None:
        self(n, n, 'done')
        if self.tty:
            self.stream.write('\n')
            self.stream.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description='Markdown table of every registered model (rows stream to stdout).'
    )
    p.add_argument('--markdown', help='write the documentation page (e.g. docs/models.md) instead of stdout')
    p.add_argument('--only', help='regex on model names')
    p.add_argument('--no_progress', action='store_true', help='no progress bar on stderr')
    args = p.parse_args(argv)
    bar = None if args.no_progress else _Bar()
    if args.markdown:
        text = page(rows(args.only, bar))
        with open(args.markdown, 'w') as f:
            f.write(text)
        if bar is not None:
            bar.close(len(names(args.only)))
        print(f'wrote {args.markdown}')
        return 0
    print('\n'.join(TABLE_HEADER), flush=True)
    n = 0
    for r in rows(args.only, bar):
        print(markdown_row(r), flush=True)  # each row as soon as it is counted
        n += 1
    if bar is not None:
        bar.close(n)
    return 0


if __name__ == '__main__':
    sys.exit(main())
