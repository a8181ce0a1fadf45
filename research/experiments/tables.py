"""Paper-style tables from the ledger: markdown + CSV, cells ``mean ± std`` over seeds.

A config file may define ``get_table(arg=None)`` returning one spec dict or a list of them::

    dict(
        name="resnet_degradation",       # file names: tables/<name>.md, .csv, .png, _curves.png
        rows="model.depth",              # key or list of keys (a row is a tuple of their values)
        cols="model.plain",              # key, list of keys or None (a single 'ours' column)
        metric="test_error",             # a key of the ledger rows' `metrics` (or of the row itself)
        collapse=("seed",),              # keys averaged over inside a cell (default: seed)
        filter={"model.shortcut": "A"},  # only runs with these config values
        paper={(20, False): 8.75},       # (row value, col value) -> reference (row value if no cols)
        row_labels={20: "20 layers"}, col_labels={False: "ResNet", True: "plain"},
        row_values=None, col_values=None,  # explicit order / extra rows (missing cells show '—')
        title="...", fmt=".2f", paper_label="paper", plot=True,
    )

Cells use the runs of the sweep (matched by run id, so only results of the current
configuration count) whose ledger status is 'done'; the std is the sample std (ddof=1),
shown when a cell has 2 or more runs; ``(k/n)`` marks a cell with k of its n runs finished.
Runs within a cell must agree on every config key other than ``collapse`` (else the table
would silently average different settings: a ``ValueError`` names the key).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any


from research import storage
from research.experiments.sweep import ID_IGNORED_KEYS

MISSING = '—'


def _tuple(x: Any) -> tuple:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


@dataclasses.dataclass
class TableSpec:
    name: str
    rows: tuple[str, ...]
    cols: tuple[str, ...] = ()
    metric: str = 'test_error'
    collapse: tuple[str, ...] = ('seed',)
    filter: dict[str, Any] = dataclasses.field(default_factory=dict)
    paper: dict[Any, float] = dataclasses.field(default_factory=dict)
    paper_label: str = 'paper'
    row_labels: dict[Any, str] = dataclasses.field(default_factory=dict)
    col_labels: dict[Any, str] = dataclasses.field(default_factory=dict)
    row_values: list[Any] | None = None
    col_values: list[Any] | None = None
    title: str = ''
    fmt: str = '.2f'
    plot: bool = True

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | TableSpec) -> TableSpec:
        if isinstance(spec, TableSpec):
            return spec
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f'unknown table spec key(s) {unknown}; known: {sorted(known)}')
        if 'name' not in spec or 'rows' not in spec:
            raise ValueError(f"a table spec needs 'name' and 'rows'; got {dict(spec)}")
        d = dict(spec)
        d['rows'] = _tuple(d['rows'])
        d['cols'] = _tuple(d.get('cols'))
        d['collapse'] = _tuple(d.get('collapse', ('seed',)))
        return cls(**d)

    def row_key(self, flat: Mapping[str, Any]) -> Any:
        return _key(flat, self.rows)

    def col_key(self, flat: Mapping[str, Any]) -> Any:
        return _key(flat, self.cols) if self.cols else None

    def paper_value(self, row: Any, col: Any) -> float | None:
        return self.paper.get((row, col) if self.cols else row)

    def row_label(self, v: Any) -> str:
        return self.row_labels.get(v, _label(v))

    def col_label(self, v: Any) -> str:
        return 'ours' if not self.cols else self.col_labels.get(v, _label(v))


def _key(flat: Mapping[str, Any], keys: Sequence[str]) -> Any:
    missing = [k for k in keys if k not in flat]
    if missing:
        raise KeyError(f"table key '{missing[0]}' is not in the runs' config")
    vals = tuple(_hashable(flat[k]) for k in keys)
    return vals[0] if len(vals) == 1 else vals


def _label(v: Any) -> str:
    return ', '.join(map(str, v)) if isinstance(v, tuple) else str(v)


@dataclasses.dataclass
class Cell:
    values: list[float]
    run_ids: list[str]
    n_expected: int
    paper: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((x - m) ** 2 for x in self.values) / (self.n - 1))


@dataclasses.dataclass
class Table:
    spec: TableSpec
    row_values: list[Any]
    col_values: list[Any]
    cells: dict[tuple[Any, Any], Cell]
    # run id -> (row value, col value, workdir) of the runs behind the cells (for training curves)
    members: dict[str, tuple[Any, Any, str | None]]

    def cell(self, row: Any, col: Any = None) -> Cell:
        return self.cells[(row, col)]

    def cell_text(self, row: Any, col: Any = None) -> str:
        c = self.cells[(row, col)]
        if not c.values:
            return MISSING
        f = self.spec.fmt
        text = format(c.mean, f)
        if c.std is not None:
            text += f' ± {format(c.std, f)}'
        if c.n < c.n_expected:
            text += f' ({c.n}/{c.n_expected})'
        return text

    def paper_text(self, row: Any, col: Any = None) -> str:
        p = self.cells[(row, col)].paper
        return MISSING if p is None else format(p, self.spec.fmt)

    def _paper_cols(self) -> list[Any]:
        return [
            c for c in self.col_values if any(self.cells[(r, c)].paper is not None for r in self.row_values)
        ]

    def to_markdown(self) -> str:
        s = self.spec
        paper_cols = set(self._paper_cols())
        header = [' / '.join(s.rows)]
        for c in self.col_values:
            header.append(s.col_label(c))
            if c in paper_cols:
                header.append(f'{s.col_label(c)} ({s.paper_label})' if s.cols else s.paper_label)
        lines = [
            f'### {s.title or s.name}',
            '',
            f'`{s.metric}`: mean ± std over {", ".join(s.collapse) or "runs"} (sample std; '
            f'(k/n) = k of n runs finished; {MISSING} = none)'
            + (f'; columns by {" / ".join(s.cols)}' if s.cols else ''),
            '',
            '| ' + ' | '.join(header) + ' |',
            '|' + '|'.join('---' for _ in header) + '|',
        ]
        for r in self.row_values:
            row = [s.row_label(r)]
            for c in self.col_values:
                row.append(self.cell_text(r, c))
                if c in paper_cols:
                    row.append(self.paper_text(r, c))
            lines.append('| ' + ' | '.join(row) + ' |')
        return '\n'.join(lines) + '\n'

    def csv_rows(self) -> list[dict[str, Any]]:
        s = self.spec
        out = []
        for r in self.row_values:
            for c in self.col_values:
                cell = self.cells[(r, c)]
                d: dict[str, Any] = {}
                rv = r if len(s.rows) > 1 else (r,)
                d.update(zip(s.rows, rv))
                if s.cols:
                    cv = c if len(s.cols) > 1 else (c,)
                    d.update(zip(s.cols, cv))
                d.update(
                    metric=s.metric,
                    mean=cell.mean,
                    std=cell.std,
                    n=cell.n,
                    n_expected=cell.n_expected,
                    paper=cell.paper,
                    values=' '.join(repr(v) for v in cell.values),
                    run_ids=' '.join(cell.run_ids),
                )
                out.append(d)
        return out

    def to_csv(self) -> str:
        rows = self.csv_rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ['metric'], lineterminator='\n')
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    v = row.get('metrics', {}).get(metric, row.get(metric))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def build_table(
    spec: Mapping[str, Any] | TableSpec, ledger_rows: Sequence[Mapping[str, Any]], runs=None
) -> Table:
    """The table of ``spec`` from ledger rows; ``runs`` (the sweep's :class:`Run` list) fixes the grid.

    Without ``runs`` the grid and expected counts come from the ledger rows themselves.
    """
    spec = TableSpec.from_dict(spec)
    by_id = {r['id']: r for r in ledger_rows}
    if runs is not None:
        expected = [(r.id, r.flat_config, str(r.workdir)) for r in runs]
    else:
        expected = [(r['id'], r['config'], r.get('workdir')) for r in ledger_rows]
    expected = [
        e for e in expected if all(_hashable(e[1].get(k)) == _hashable(v) for k, v in spec.filter.items())
    ]

    groups: dict[tuple[Any, Any], list[tuple[str, dict, str | None]]] = {}
    for e in expected:
        groups.setdefault((spec.row_key(e[1]), spec.col_key(e[1])), []).append(e)
    skip = set(spec.rows) | set(spec.cols) | set(spec.collapse) | set(ID_IGNORED_KEYS)
    for (rv, cv), members in groups.items():
        first = members[0][1]
        for _, flat, _ in members[1:]:
            for k in sorted(set(first) | set(flat)):
                if k not in skip and _hashable(first.get(k)) != _hashable(flat.get(k)):
                    raise ValueError(
                        f"table '{spec.name}': runs in cell ({_label(rv)}, {_label(cv)}) differ in '{k}' "
                        f'({first.get(k)!r} vs {flat.get(k)!r}); add it to rows/cols/collapse or to filter'
                    )

    def ordered(found: list[Any], explicit: list[Any] | None) -> list[Any]:
        if explicit is not None:
            return [_hashable(v) for v in explicit]
        uniq = list(dict.fromkeys(found))
        if runs is None:
            try:
                return sorted(uniq)
            except TypeError:
                pass
        return uniq

    row_values = ordered([k[0] for k in groups], spec.row_values)
    col_values = ordered([k[1] for k in groups], spec.col_values) if spec.cols else [None]
    cells, members = {}, {}
    for rv in row_values:
        for cv in col_values:
            values, ids = [], []
            group = groups.get((rv, cv), [])
            for rid, _, wd in group:
                row = by_id.get(rid)
                v = metric_value(row, spec.metric) if row and row.get('status') == 'done' else None
                if v is not None:
                    values.append(v)
                    ids.append(rid)
                    members[rid] = (rv, cv, row.get('workdir') or wd)
            cells[(rv, cv)] = Cell(values, ids, len(group), spec.paper_value(rv, cv))
    return Table(spec, row_values, col_values, cells, members)


def write_table(table: Table, out_dir: str | os.PathLike, *, plots: bool = True) -> list[storage.AnyPath]:
    """Writes ``<name>.md`` and ``<name>.csv`` (and, if ``spec.plot``, ``<name>.png`` and
    ``<name>_curves.png``) into ``out_dir`` (local or remote, e.g. ``gs://...``); returns the paths."""
    out_dir = storage.as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = table.spec.name
    paths = [out_dir / f'{name}.md', out_dir / f'{name}.csv']
    paths[0].write_text(table.to_markdown())
    paths[1].write_text(table.to_csv())
    if plots and table.spec.plot:
        from research.experiments import plots as plots_lib

        paths.append(plots_lib.plot_metric_vs_axis(table, out_dir / f'{name}.png'))
        paths.append(plots_lib.plot_table_curves(table, out_dir / f'{name}_curves.png'))
    return paths
