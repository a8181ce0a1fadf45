"""The model catalog: every registered model with its parameters, MACs, input size and paper.

``python -m research.models.catalog [--markdown FILE] [--only REGEX]`` prints (or writes) the
markdown table the README embeds; nothing is computed (``jax.eval_shape`` + a jaxpr trace per
model via ``research.layers.summary.summarize``). Counts are for the model's default
``num_classes`` (1000 for ImageNet models, 10 for CIFAR/MNIST ones) at its paper resolution.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time

from research import models

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


def rows(only: str | None = None):
    from research.layers.summary import summarize

    for name in models.list_models():
        if only and not re.search(only, name):
            continue
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
        print(
            f'{name}: {s.params:,} params, {s.macs / 1e6:.1f} M MACs ({time.perf_counter() - t:.1f} s)',
            file=sys.stderr,
            flush=True,
        )
        yield dict(
            name=name,
            params=s.params,
            macs=s.macs,
            input='x'.join(map(str, shape)),
            num_classes=getattr(model, 'num_classes', None),
            paper=paper(name),
            seconds=time.perf_counter() - t,
        )


def markdown(rows_) -> str:
    out = ['| model | input | classes | params | MACs | paper / notes |', '|---|---|---|---|---|---|']
    for r in rows_:
        if r['params'] is None:
            out.append(f'| `{r["name"]}` | | | | | {r["paper"][:120]} |')
            continue
        macs = f'{r["macs"] / 1e9:.3f} G' if r['macs'] >= 1e8 else f'{r["macs"] / 1e6:.1f} M'
        note = r['paper'] if len(r['paper']) <= 120 else r['paper'][:117].rstrip() + '...'
        out.append(
            f'| `{r["name"]}` | {r["input"]} | {r["num_classes"]} | {r["params"]:,} | {macs} | {note} |'
        )
    return '\n'.join(out) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='Markdown table of every registered model.')
    p.add_argument('--markdown', help='write the table to this file instead of stdout')
    p.add_argument('--only', help='regex on model names')
    args = p.parse_args(argv)
    table = markdown(rows(args.only))
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table)
        print(f'wrote {args.markdown}')
    else:
        sys.stdout.write(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
