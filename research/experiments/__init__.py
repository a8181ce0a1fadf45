"""Ablations and paper tables: sweeps of runs, a results ledger, tables and plots.

- :mod:`~research.experiments.sweep`: grids of config overrides (``product``, ``zip_``, ``chain``),
  stable run ids, running a sweep (sequentially or N at a time), run status.
- :mod:`~research.experiments.ledger`: one JSON row per run in ``<sweep workdir>/ledger.jsonl``.
- :mod:`~research.experiments.tables`: paper-style markdown/CSV tables (mean ± std over seeds).
- :mod:`~research.experiments.plots`: training curves and metric-vs-axis plots (PNG).
- :mod:`~research.experiments.paper`: reference numbers from the papers, as data.
- :mod:`~research.experiments.vmap_seeds`: several seeds of a small model as one vmapped program.
- :mod:`~research.experiments.commands`: what ``launch.py --sweep / --dry_run / --table`` run.

This package is imported by ``research.cli`` at start-up: keep its top level free of JAX imports.
"""

from research.experiments.sweep import chain, product, zip_

__all__ = ['chain', 'product', 'zip_']
