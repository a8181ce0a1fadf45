"""MkDocs hooks: nav entries whose page does not exist (yet) are left out of the site, and the
docstrings' Sphinx roles lose their prefix.

Some pages are written on other branches (docs/data.md, imagenet.md, parity.md, reliability.md,
multi-host.md, accelerators.md, tasks.md, architecture.md); the nav names them all, and each
appears as soon as its file is in docs/. Every other link is still checked by ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger('mkdocs.hooks.optional_pages')

#: The pages the nav may name before they exist. Any other missing page is an error.
OPTIONAL = {
    'data.md',
    'imagenet.md',
    'parity.md',
    'reliability.md',
    'multi-host.md',
    'accelerators.md',
    'tasks.md',
    'architecture.md',
}


def _prune(items, docs: Path, dropped: list[str]):
    out = []
    for item in items:
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if isinstance(value, list):
                kept = _prune(value, docs, dropped)
                if kept:
                    out.append({title: kept})
                continue
            target = value
        else:
            target = item
        if isinstance(target, str) and target in OPTIONAL and not (docs / target).is_file():
            dropped.append(target)
            continue
        out.append(item)
    return out


def on_config(config):
    dropped: list[str] = []
    config['nav'] = _prune(config['nav'], Path(config['docs_dir']), dropped)
    if dropped:
        log.info('pages not written yet, left out of the nav: %s', ', '.join(dropped))
    return config


_SPHINX_ROLE = re.compile(r':(?:class|func|meth|mod|data|attr|obj|exc):(?=<code>)')


def on_page_content(html, **kwargs):
    """The docstrings' Sphinx roles (``:class:`X```) render as code without the role prefix."""
    return _SPHINX_ROLE.sub('', html)
