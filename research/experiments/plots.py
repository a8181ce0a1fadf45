"""Plots (matplotlib, Agg backend, PNG): training curves per run and a metric against a swept axis."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt

from research import storage
from research.experiments.ledger import split_base
from research.train.reporting import read_metrics


def _curves(workdir: str | os.PathLike, eval_split: str) -> tuple[list, list, list, list, str]:
    """Train loss and the eval metric per epoch; the metric is error (%) for classifiers, mIoU (%)
    for segmentation runs (rows with ``miou``), mAP@0.5 (%) for detection runs."""
    rows = read_metrics(workdir)
    train = [r for r in rows if r['split'] == 'train' and isinstance(r.get('loss'), (int, float))]
    base = split_base(eval_split)  # 'test' also finds a reduced run's 'test[:2000]' rows
    evals = [r for r in rows if r['split'] == eval_split or split_base(r['split']) == base]
    if any(isinstance(r.get('miou'), (int, float)) for r in evals):
        evals = [r for r in evals if isinstance(r.get('miou'), (int, float))]
        metric, values = 'mIoU', [100.0 * r['miou'] for r in evals]
    elif any(isinstance(r.get('map50'), (int, float)) for r in evals):
        evals = [r for r in evals if isinstance(r.get('map50'), (int, float))]
        metric, values = 'mAP@0.5', [100.0 * r['map50'] for r in evals]
    else:
        evals = [r for r in evals if isinstance(r.get('top1'), (int, float))]
        metric, values = 'error', [100.0 * (1.0 - r['top1']) for r in evals]
    return (
        [r['epoch'] for r in train],
        [r['loss'] for r in train],
        [r['epoch'] for r in evals],
        values,
        metric,
    )


def plot_training_curves(
    runs: Sequence[dict[str, Any]], path: str | os.PathLike, *, eval_split: str = 'test', title: str = ''
) -> storage.AnyPath:
    """Train loss and ``eval_split`` error (%) (mIoU (%) for segmentation runs) against epoch, one line per run.

    ``runs``: dicts with ``workdir``, ``label`` and optionally ``group`` (runs of a group share a
    color, e.g. the seeds of one cell; only the first of a group is labelled in the legend).
    """
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    group_color: dict[Any, str] = {}
    drawn, metric = 0, 'error'
    for run in runs:
        group = run.get('group', run['label'])
        first = group not in group_color
        color = group_color.setdefault(group, colors[len(group_color) % len(colors)])
        te, tl, ee, er, metric = _curves(run['workdir'], eval_split)
        label = str(run.get('group_label', run['label'])) if first else None
        if te:  # a run with one log point is a marker (a line through one point draws nothing)
            one = len(te) == 1
            ax_loss.plot(
                te, tl, color=color, alpha=0.85, lw=1.2, label=label, marker='o' if one else None, ms=5
            )
        if ee:
            ax_err.plot(ee, er, color=color, alpha=0.85, lw=1.2, marker='o', ms=3, label=label)
        drawn += bool(te or ee)
    ax_loss.set(xlabel='epoch', ylabel='train loss', title='training loss')
    ax_err.set(xlabel='epoch', ylabel=f'{eval_split} {metric} (%)', title=f'{eval_split} {metric}')
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
    if not drawn:
        ax_loss.text(0.5, 0.5, 'no metrics yet', ha='center', va='center', transform=ax_loss.transAxes)
    if title:
        fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    fig.tight_layout()
    out = storage.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


def plot_metric_vs_axis(table, path: str | os.PathLike) -> storage.AnyPath:
    """A table's metric against its row axis, one series per column, std error bars, paper dashed."""
    spec = table.spec
    rows = table.row_values
    numeric = all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rows)
    xs = [float(r) for r in rows] if numeric else list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, col in enumerate(table.col_values):
        color = colors[i % len(colors)]
        pts = [(x, table.cells[(r, col)]) for x, r in zip(xs, rows)]
        have = [(x, c) for x, c in pts if c.values]
        if have:
            ax.errorbar(
                [x for x, _ in have],
                [c.mean for _, c in have],
                yerr=[c.std or 0.0 for _, c in have],
                color=color,
                marker='o',
                capsize=4,
                label=spec.col_label(col),
            )
        paper = [(x, c.paper) for x, c in pts if c.paper is not None]
        if paper:
            ax.plot(
                [x for x, _ in paper],
                [p for _, p in paper],
                color=color,
                ls='--',
                marker='x',
                label=f'{spec.col_label(col)} ({spec.paper_label})' if spec.cols else spec.paper_label,
            )
    ax.set_xticks(xs)
    ax.set_xticklabels([spec.row_label(r) for r in rows], rotation=0 if len(rows) < 6 else 30)
    ax.set(xlabel=' / '.join(spec.rows), ylabel=spec.metric)
    ax.set_title(textwrap.fill(spec.title or spec.name, 70), fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, 'no finished runs', ha='center', va='center', transform=ax.transAxes)
    fig.tight_layout()
    out = storage.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


def plot_table_curves(table, path: str | os.PathLike, *, eval_split: str = 'test') -> storage.AnyPath:
    """Training curves of the runs behind a table's cells, one color per cell."""
    spec = table.spec
    runs = []
    for rid, (rv, cv, wd) in table.members.items():
        if wd is None:
            continue
        label = spec.row_label(rv) + ('' if cv is None else f' / {spec.col_label(cv)}')
        runs.append(dict(workdir=wd, label=rid, group=(rv, cv), group_label=label))
    return plot_training_curves(runs, path, eval_split=eval_split, title=spec.title or spec.name)
