"""What ``launch.py --sweep / --dry_run / --table`` do (``research.cli`` only dispatches here).

  python launch.py --config=experiments/ablations/<file>.py[:arg] --sweep [--sweep_parallel=N] [--workdir=DIR]
  python launch.py --config=... --dry_run                # list runs: status (done/partial/new), id, overrides
  python launch.py --config=... --table[=<name>,...]     # tables/<name>.{md,csv,png} and <name>_curves.png
  python launch.py --config=... --sweep --table          # run, then tabulate
  python launch.py --config=... --sweep --sweep_only='model.depth=20,seed=0;seed=1'   # some runs only

The sweep's workdir (``--workdir``, default ``runs/<config>[_<arg>]``) holds one directory per
run, ``ledger.jsonl`` and ``tables/``. Give ``--table`` the same ``--config.*`` overrides as the
sweep: run ids (and so which results a table uses) depend on the resolved config.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import flags

from research import models, storage
from research.experiments import ledger as ledger_lib
from research.experiments import sweep as sweep_lib
from research.experiments import tables as tables_lib


def define_table_flag(flag_values: flags.FlagValues = flags.FLAGS):
    """``--table`` (all tables of the config) or ``--table=<name>[,<name>...]``; ``--notable`` = off."""
    flag = flags.Flag(
        flags.ArgumentParser(),
        flags.ArgumentSerializer(),
        'table',
        '',
        "Render the config's get_table() tables from the sweep's ledger into <workdir>/tables/ (or =name,...).",
        boolean=True,
    )
    return flags.DEFINE_flag(flag, flag_values)


def table_names(value: Any) -> list[str] | None:
    """``None`` = no table; ``[]`` = all; else the names asked for."""
    v = '' if value is None else str(value).strip()
    if v.lower() in ('', 'false', '0', 'no'):
        return None
    if v.lower() in ('true', '1', 'yes', 'all'):
        return []
    return [n for n in v.split(',') if n]


def sweep_name(config_arg: str) -> str:
    path, _, arg = config_arg.partition(':')
    return Path(path).stem + (f':{arg}' if arg else '')


def get_runs(module, arg: str | None, config, workdir: os.PathLike) -> list[sweep_lib.Run]:
    if not hasattr(module, 'get_sweep'):
        raise ValueError(f'config file {module.__file__} defines no get_sweep(arg=None)')
    return sweep_lib.expand(config, module.get_sweep(arg or None), workdir)


def get_table_specs(module, arg: str | None) -> list[dict[str, Any]]:
    if not hasattr(module, 'get_table'):
        raise ValueError(f'config file {module.__file__} defines no get_table(arg=None)')
    specs = module.get_table(arg or None)
    return [specs] if isinstance(specs, dict) else list(specs)


def preflight(runs: Sequence[sweep_lib.Run]) -> None:
    """Fails before any training if a run's model is not registered or gets unknown arguments."""
    seen = set()
    for run in runs:
        kwargs = {k: v for k, v in run.flat_config.items() if k.startswith('model.') and k != 'model.name'}
        name = run.config.model.name
        key = (name, tuple(sorted(kwargs)))
        if key in seen:
            continue
        seen.add(key)
        try:
            accepted = set(models.accepted_kwargs(name))
        except ValueError as e:
            raise ValueError(f'run {run.id}: {e}') from None
        unknown = sorted(k.partition('.')[2] for k in kwargs if k.partition('.')[2] not in accepted)
        if unknown:
            raise ValueError(
                f'run {run.id}: model {name!r} does not accept {unknown}; accepted: {sorted(accepted)}'
            )


def format_dry_run(runs: Sequence[sweep_lib.Run], name: str, workdir: os.PathLike) -> str:
    statuses = [sweep_lib.run_status(r.workdir) for r in runs]
    width = max(len(r.id) for r in runs)
    lines = [
        f'sweep {name}: {len(runs)} runs in {workdir} (ledger {workdir / "ledger.jsonl"})',
        f'{"status":8s} {"id":{width}s} overrides',
    ]
    for run, st in zip(runs, statuses):
        lines.append(f'{st:8s} {run.id:{width}s} {json.dumps(run.overrides, default=str)}')
    counts = {s: statuses.count(s) for s in ('done', 'partial', 'new')}
    lines.append(f'{len(runs)} runs: {counts["done"]} done, {counts["partial"]} partial, {counts["new"]} new')
    return '\n'.join(lines)


def render_tables(module, arg, runs, workdir: os.PathLike, names: list[str]) -> list[os.PathLike]:
    workdir = storage.as_path(workdir)
    specs = get_table_specs(module, arg)
    known = [s['name'] for s in specs]
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f'unknown table {unknown[0]!r}; the config defines: {", ".join(known)}')
        specs = [s for s in specs if s['name'] in names]
    path = workdir / 'ledger.jsonl'
    ledger_rows = {r['id']: r for r in ledger_lib.read(path)}
    for run in runs:  # rows re-read from the run directories, so a ledger from older code renders too
        row = ledger_rows.get(run.id)
        if row is not None and storage.as_path(run.workdir).is_dir():
            metrics = ledger_lib.row_metrics(run)
            if metrics != row.get('metrics'):
                ledger_lib.upsert(path, {**row, 'metrics': metrics})
    rows = ledger_lib.read(path)
    written = []
    for spec in specs:
        table = tables_lib.build_table(spec, rows, runs)
        paths = tables_lib.write_table(table, workdir / 'tables')
        print(table.to_markdown())
        written.extend(paths)
    print('wrote ' + ', '.join(str(p) for p in written))
    return written


def main(
    config,
    config_arg: str,
    workdir: os.PathLike,
    *,
    sweep: bool,
    dry_run: bool,
    table: Any,
    parallel: int = 1,
    only: str = '',
    show_progress: bool = True,
    argv: Sequence[str] | None = None,
) -> int:
    """Runs the sweep / lists it / renders its tables; returns the process exit code."""
    try:
        return _main(config, config_arg, workdir, sweep, dry_run, table, parallel, only, show_progress, argv)
    except (KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'launch.py: {type(e).__name__}: {msg}', file=sys.stderr)
        return 1


def requested(sweep: bool, dry_run: bool, table: Any) -> bool:
    """Whether the launch is a sweep / dry run / table one (handled here, not by the single-run path)."""
    return bool(sweep or dry_run or table_names(table) is not None)


def _main(config, config_arg, workdir, sweep, dry_run, table, parallel, only, show_progress, argv) -> int:
    workdir = storage.as_path(workdir)
    path, _, arg = config_arg.partition(':')
    module = sweep_lib.load_config_module(path)
    name = sweep_name(config_arg)
    names = table_names(table)
    runs = (
        get_runs(module, arg, config, workdir) if (sweep or dry_run or hasattr(module, 'get_sweep')) else None
    )
    chosen = sweep_lib.select(runs, only) if runs is not None else None
    if dry_run:
        print(format_dry_run(chosen, name, workdir))
        return 0
    rc = 0
    if sweep:
        preflight(chosen)
        argv = list(sys.argv if argv is None else argv)
        statuses = sweep_lib.run_sweep(
            chosen,
            sweep_name=name,
            root=workdir,
            parallel=parallel,
            child_command=lambda run: sweep_lib.child_argv(argv, run),
            show_progress=show_progress,
        )
        counts = {s: list(statuses.values()).count(s) for s in ('done', 'partial', 'failed')}
        print(
            f'sweep {name}: {counts["done"]} done, {counts["partial"]} partial, {counts["failed"]} failed '
            f'of {len(statuses)}; ledger {workdir / "ledger.jsonl"}'
        )
        rc = 1 if counts['failed'] else 0
    if names is not None:
        render_tables(module, arg, runs, workdir, names)
    return rc
