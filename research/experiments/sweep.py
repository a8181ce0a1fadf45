"""Sweeps: grids of config overrides, stable run ids, and running them.

A config file may define ``get_sweep(arg=None)`` returning a list of override dicts with
flattened dotted keys, built with the helpers here::

    def get_sweep(arg=None):
        return product({"model.plain": [True, False], "model.depth": [20, 56]}, seed=range(3))

Axes are given as a dict ``{dotted key: values}`` or as keywords (``model__depth=[20, 56]``:
``__`` stands for ``.``); a positional list of override dicts is a finished sub-sweep.
``product`` crosses its arguments (first one outermost), ``zip_`` pairs them element-wise
(equal lengths), ``chain`` concatenates sweeps.

Each override dict is applied to the (locked) config: every key must already exist there
(``model.*`` included: give the base config every model key that is swept), so a misspelled
key fails naming it. A whole ``model`` section may be replaced with a dict value.

Run id: ``<slug>-<hash>``, e.g. ``model.depth=20,seed=1-3fa2c1``: the slug lists the
overrides sorted by key; the hash is the first 6 hex digits of the SHA-256 of the canonical
JSON (sorted keys) of the resolved, flattened config without the keys in
:data:`ID_IGNORED_KEYS` (machine-local or result-neutral settings; ``data.path`` counts by its
file name only) and without keys at their schema default (so new schema keys keep old ids). Same config -> same id in any process; any other value -> another id.
Each run lives in ``<sweep workdir>/<run id>``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


from research import storage, tasks
from research.config import FREE_FORM_SECTIONS, ConfigDict, base_config, flatten, to_dict, validate_config
from research.experiments import ledger
from research.experiments.ledger import run_status
from research.train.distributed import usable_cores

Overrides = dict[str, Any]

#: Flattened keys left out of the run-id hash: where data is cached, threads, logging and
#: checkpoint cadence change neither the trained weights nor the metrics.
ID_IGNORED_KEYS = (
    'data.data_dir',
    'data.num_threads',
    'train.log_every_steps',
    'train.checkpoint_every',
    'train.keep_checkpoints',
    'train.async_checkpoints',
    'train.eval_batch_size',
    # where the metrics go, not what they are (research/train/reporting.py)
    'logging.tensorboard',
    'logging.wandb',
    'logging.wandb_project',
    'logging.wandb_entity',
    'logging.wandb_mode',
    'logging.wandb_name',
    'logging.wandb_group',
    'logging.wandb_tags',
    'logging.profile_steps',
)
SLUG_MAX_CHARS = 96
HASH_CHARS = 6


# -- grids ----------------------------------------------------------------------------------------
def _axes(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[list[Overrides]]:
    """Each argument as a list of override dicts (an axis ``key: values`` gives one dict per value)."""
    out: list[list[Overrides]] = []
    for a in args:
        if isinstance(a, Mapping):
            out.extend([{k: v} for v in _values(k, vs)] for k, vs in a.items())
        elif isinstance(a, (list, tuple)) and all(isinstance(d, Mapping) for d in a):
            out.append([dict(d) for d in a])
        else:
            raise TypeError(f'sweep argument must be a dict of axes or a list of override dicts; got {a!r}')
    for k, vs in kwargs.items():
        key = k.replace('__', '.')
        out.append([{key: v} for v in _values(key, vs)])
    return out


def _values(key: str, values: Any) -> list[Any]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(f"axis '{key}' needs a list of values, got {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"axis '{key}' has no values")
    return values


def _merge(dicts: Iterable[Overrides]) -> Overrides:
    out: Overrides = {}
    for d in dicts:
        for k, v in d.items():
            if k in out and out[k] != v:
                raise ValueError(f"sweep key '{k}' is set twice ({out[k]!r} and {v!r})")
            out[k] = v
    return out


def product(*args: Any, **axes: Any) -> list[Overrides]:
    """The cross product of axes / sub-sweeps, first argument outermost."""
    return [_merge(combo) for combo in itertools.product(*_axes(args, axes))]


def zip_(*args: Any, **axes: Any) -> list[Overrides]:
    """Axes / sub-sweeps paired element-wise; all must have the same length."""
    lists = _axes(args, axes)
    lengths = {len(l) for l in lists}
    if len(lengths) > 1:
        raise ValueError(f'zip_ needs axes of equal length; got lengths {[len(l) for l in lists]}')
    return [_merge(combo) for combo in zip(*lists)]


def chain(*sweeps: Sequence[Overrides]) -> list[Overrides]:
    """Sweeps one after the other."""
    return [dict(d) for s in sweeps for d in s]


# -- applying overrides and run ids ---------------------------------------------------------------
def apply_overrides(config: ConfigDict, overrides: Mapping[str, Any]) -> ConfigDict:
    """A copy of ``config`` with ``overrides`` (dotted keys) set; unknown keys fail naming them."""
    config = copy.deepcopy(config)
    known = list(flatten(to_dict(config)))
    for key, value in overrides.items():
        parts = key.split('.')
        node = config
        for i, part in enumerate(parts):
            is_last = i == len(parts) - 1
            if not isinstance(node, ConfigDict) or part not in node:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ''
                raise KeyError(f"sweep key '{key}' is not in the config{hint}")
            if not is_last:
                node = node[part]
        current = node[parts[-1]]
        if isinstance(current, ConfigDict):
            if key not in FREE_FORM_SECTIONS or not isinstance(value, Mapping):
                raise KeyError(
                    f"sweep key '{key}' is a config section: sweep its leaf keys ('{key}.<name>') instead"
                )
            with config.unlocked():
                node[parts[-1]] = ConfigDict(dict(value))
            continue
        try:
            node[parts[-1]] = value
        except (TypeError, ValueError) as e:
            raise ValueError(f'sweep value {key}={value!r} does not fit the config: {e}') from None
    validate_config(config)
    return config


def id_payload(config: ConfigDict) -> dict[str, Any]:
    """The flattened config the run id hashes (see :data:`ID_IGNORED_KEYS`). Keys at their schema
    default are left out, so that adding a key to the schema does not change existing run ids."""
    defaults = _schema_defaults()
    flat = {
        k: v
        for k, v in flatten(to_dict(config)).items()
        if k not in ID_IGNORED_KEYS and not (k in defaults and _same(v, defaults[k]))
    }
    if flat.get('data.path'):
        flat['data.path'] = Path(str(flat['data.path'])).name
    return flat


@functools.lru_cache(maxsize=1)
def _schema_defaults() -> dict[str, Any]:

    return flatten(to_dict(base_config()))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return type(a) is type(b) and a == b


def config_hash(config: ConfigDict, chars: int = HASH_CHARS) -> str:
    canonical = json.dumps(id_payload(config), sort_keys=True, separators=(',', ':'), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()[:chars]


def _fmt_value(v: Any) -> str:
    if isinstance(v, Mapping):
        return '{' + ','.join(f'{k}={_fmt_value(x)}' for k, x in sorted(v.items())) + '}'
    if isinstance(v, (list, tuple)):
        return '+'.join(_fmt_value(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)


def slug(overrides: Mapping[str, Any], max_chars: int = SLUG_MAX_CHARS) -> str:
    """``'model.depth=20,seed=1'``: the overrides sorted by key, made safe for a directory name."""
    text = ','.join(f'{k}={_fmt_value(overrides[k])}' for k in sorted(overrides)) or 'base'
    text = re.sub(r'[^A-Za-z0-9._=+,{}-]', '_', text)
    return text if len(text) <= max_chars else text[: max_chars - 1] + '~'


def run_id(config: ConfigDict, overrides: Mapping[str, Any]) -> str:
    """``<slug of overrides>-<hash of the resolved config>``; see the module docstring."""
    return f'{slug(overrides)}-{config_hash(config)}'


@dataclasses.dataclass
class Run:
    """One run of a sweep: its id, the overrides that made it, the resolved config and its workdir."""

    id: str
    overrides: Overrides
    config: ConfigDict
    workdir: storage.AnyPath  # a pathlib.Path, or an epath.Path when remote (gs://...)

    @property
    def flat_config(self) -> dict[str, Any]:
        return flatten(to_dict(self.config))


def expand(base: ConfigDict, sweep: Sequence[Mapping[str, Any]], root: str | os.PathLike) -> list[Run]:
    """The runs of ``sweep`` (override dicts) applied to ``base``, each in ``root/<run id>`` (``root``
    local or remote, e.g. ``gs://bucket/sweeps/x``)."""
    if not sweep:
        raise ValueError('the sweep is empty')
    runs, seen = [], {}
    for i, overrides in enumerate(sweep):
        if not isinstance(overrides, Mapping):
            raise TypeError(f'sweep entry {i} must be a dict of overrides, got {overrides!r}')
        config = apply_overrides(base, overrides)
        rid = run_id(config, overrides)
        if rid in seen:
            raise ValueError(f"sweep entries {seen[rid]} and {i} resolve to the same run '{rid}'")
        seen[rid] = i
        runs.append(Run(rid, dict(overrides), config, storage.as_path(root) / rid))
    return runs


def select(runs: Sequence[Run], only: str | None) -> list[Run]:
    """The runs ``only`` picks (all if empty): ``;``-separated alternatives, each a full run id or
    comma-separated ``key=value`` terms that must all be among the id's swept values
    (``'model.depth=20,seed=0'``), or a hash."""
    if not only:
        return list(runs)
    alternatives = [a.strip() for a in only.split(';') if a.strip()]
    chosen = [r for r in runs if any(_matches(r.id, a) for a in alternatives)]
    if not chosen:
        raise ValueError(f'no run of the sweep matches --sweep_only={only!r}')
    return chosen


def _matches(rid: str, pattern: str) -> bool:
    if pattern == rid:
        return True
    slug_text, _, digest = rid.rpartition('-')
    parts = set(slug_text.split(',')) | {digest}
    return all(t in parts for t in pattern.split(','))


# -- status ---------------------------------------------------------------------------------------
# -- loading a config file's sweep/table functions ------------------------------------------------
def load_config_module(path: str | Path):
    """Imports an experiment config file (as ``launch.py --config`` does) to reach ``get_sweep``/``get_table``."""
    path = Path(path)
    name = '_research_config_' + re.sub(r'\W', '_', str(path.resolve()))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load config file '{path}'")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- running --------------------------------------------------------------------------------------
def execute_run(
    run: Run,
    *,
    sweep_name: str,
    ledger_path: str | os.PathLike,
    stop_after_steps: int | None = None,
    show_progress: bool = True,
) -> str:
    """Trains (or resumes) one run in-process, then upserts its ledger row; returns its status.

    An exception inside the run is recorded as status ``'failed'`` (with the error) and not
    raised; Ctrl-C records ``'partial'`` and propagates (the loop checkpoints on the way out).
    """
    run.workdir.mkdir(parents=True, exist_ok=True)
    meta = ledger.start_run_meta(run, sweep_name)
    t0 = time.perf_counter()
    status, error = 'failed', None
    try:
        summary = tasks.train_and_evaluate(
            run.config, run.workdir, stop_after_steps=stop_after_steps, show_progress=show_progress
        )
        status = 'done' if summary.get('complete') else 'partial'
    except KeyboardInterrupt:
        status = 'partial'
        raise
    except Exception as e:  # noqa: BLE001 - a failed run must not stop the sweep
        error = f'{type(e).__name__}: {e}'
        traceback.print_exc()
        print(f'[sweep] {run.id} failed: {error}', file=sys.stderr)
    finally:
        ledger.finish_run_meta(run, meta, time.perf_counter() - t0)
        ledger.upsert(ledger_path, ledger.build_row(run, sweep_name, status=status, error=error))
    return status


def run_sweep(
    runs: Sequence[Run],
    *,
    sweep_name: str,
    root: str | os.PathLike,
    parallel: int = 1,
    child_command: Callable[[Run], list[str]] | None = None,
    stop_after_steps: int | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Runs the sweep: finished runs are skipped (their ledger row is kept or rebuilt), the
    others trained in order (``parallel=1``) or ``parallel`` at a time as subprocesses
    (``child_command(run)``, see :func:`device_slices`). Returns ``{run id: status}``.
    """
    ledger_path = storage.as_path(root) / 'ledger.jsonl'
    statuses: dict[str, str] = {}
    todo = []
    for run in runs:
        status = run_status(run.workdir)
        if status == 'done':
            statuses[run.id] = 'done'
            ledger.ensure_row(ledger_path, run, sweep_name)
            log(f'[sweep] skip {run.id}: done')
        elif status == 'running':  # another process holds its workdir (a parallel sweep, a launch)
            statuses[run.id] = 'running'
            log(f'[sweep] skip {run.id}: running in another process')
        else:
            todo.append(run)
    if parallel <= 1 or len(todo) <= 1 or child_command is None:
        for i, run in enumerate(todo):
            log(f'[sweep] run {i + 1}/{len(todo)}: {run.id} ({run_status(run.workdir)})')
            statuses[run.id] = execute_run(
                run,
                sweep_name=sweep_name,
                ledger_path=ledger_path,
                stop_after_steps=stop_after_steps,
                show_progress=show_progress,
            )
            log(f'[sweep] {run.id}: {statuses[run.id]}')
        return statuses
    statuses.update(_run_parallel(todo, parallel, child_command, ledger_path, sweep_name, log))
    return statuses


def _run_parallel(todo, parallel, child_command, ledger_path, sweep_name, log) -> dict[str, str]:
    slots = device_slices(parallel)
    prepare_data(todo)
    free = list(range(len(slots)))
    pending = list(todo)
    active: dict[int, tuple[Run, subprocess.Popen, Any]] = {}
    statuses: dict[str, str] = {}
    try:
        while pending or active:
            while pending and free:
                slot, run = free.pop(0), pending.pop(0)
                run.workdir.mkdir(parents=True, exist_ok=True)
                logf = _open_launch_log(run)
                env = {**os.environ, **slots[slot].env}
                cmd = child_command(run)
                cores = slots[slot].cpus
                proc = subprocess.Popen(
                    cmd,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=(lambda c=cores: os.sched_setaffinity(0, c)) if cores else None,
                )
                active[slot] = (run, proc, logf)
                log(f'[sweep] start {run.id} on slot {slot} ({slots[slot].describe()}); log {logf.name}')
            time.sleep(0.5)
            for slot, (run, proc, logf) in list(active.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                _close_launch_log(run, logf)
                del active[slot]
                free.append(slot)
                status = run_status(run.workdir)
                row = ledger.find(ledger_path, run.id)
                if rc != 0 and status != 'done' and (row is None or row.get('status') != 'failed'):
                    err = f'exit code {rc}; see {run.workdir / "launch.log"}'
                    ledger.upsert(ledger_path, ledger.build_row(run, sweep_name, status='failed', error=err))
                row = ledger.find(ledger_path, run.id)
                statuses[run.id] = row.get('status', status) if row else status
                log(f'[sweep] {run.id}: {statuses[run.id]} (exit code {rc})')
    finally:
        for run, proc, logf in active.values():  # Ctrl-C: children checkpoint on SIGINT too
            proc.wait()
            _close_launch_log(run, logf)
    return statuses


def _open_launch_log(run: Run):
    """The file a parallel worker's output goes to: ``<run>/launch.log`` (appended to), or for a remote
    workdir a local temporary file, appended to ``<run>/launch.log`` when the worker ends."""
    if not storage.is_remote(run.workdir):
        return (run.workdir / 'launch.log').open('a')
    return tempfile.NamedTemporaryFile('w+', prefix=f'{run.id[:40]}-', suffix='.launch.log', delete=False)


def _close_launch_log(run: Run, logf) -> None:
    logf.close()
    if storage.is_remote(run.workdir):
        with open(logf.name) as f:
            storage.append_text(run.workdir / 'launch.log', f.read())
        os.unlink(logf.name)


def prepare_data(runs: Sequence[Run]) -> None:
    """Resolves each run's data once, here (``Task.setup``: builds offline datasets, prepares TFDS
    ones, trains a GAN's scoring classifier), so parallel workers do not race to build them."""
    for run in runs:
        tasks.create(run.config).setup()


# -- devices for parallel runs --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LocalDevice:
    """One device JAX found on this host: ``kind`` 'cuda' | 'rocm' | 'tpu' | 'cpu' (others are
    shared, not split), ``index``: the CUDA/HIP ordinal or TPU chip index this process sees it at."""

    kind: str
    index: int
    name: str = ''


@dataclasses.dataclass
class DeviceSlot:
    """What one parallel worker may use: environment overrides (the accelerators it sees) and/or a set
    of CPU cores it is pinned to."""

    env: dict[str, str]
    cpus: set[int] | None = None

    def describe(self) -> str:
        shown = [f'{k}={v}' for k, v in self.env.items() if k in _VISIBILITY_KEYS]
        if shown:
            return ' '.join(shown)
        return f'CPU cores {sorted(self.cpus)}' if self.cpus else 'shared devices'


#: The variables that restrict a worker to its accelerators (what CUDA, ROCm and libtpu read).
_VISIBILITY_KEYS = (
    'CUDA_VISIBLE_DEVICES',
    'HIP_VISIBLE_DEVICES',
    'ROCR_VISIBLE_DEVICES',
    'TPU_VISIBLE_CHIPS',
)

_DISCOVER = r"""
import json, jax
out = []
for d in jax.local_devices():
    version = str(getattr(d.client, "platform_version", "")).lower()
    kind = {"gpu": "rocm" if "rocm" in version else "cuda"}.get(d.platform, d.platform)
    if kind == "tpu" and getattr(d, "core_on_chip", 0):
        continue  # TPU v2/v3: two devices (cores) per chip; chips are what a process is given
    index = getattr(d, "local_hardware_id", None)
    out.append([kind, d.id if index is None else int(index), d.device_kind])
print("DEVICES " + json.dumps(out))
"""


def discover_devices(env: Mapping[str, str] | None = None, *, runner=subprocess.run) -> list[LocalDevice]:
    """The devices JAX finds on this host, asked in a short subprocess with this process's environment
    (so ``JAX_PLATFORMS``, ``CUDA_VISIBLE_DEVICES``... apply as they will to the workers, and this
    process never holds a GPU or TPU the workers need). An empty list if the query fails."""
    env = dict(os.environ if env is None else env)
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # the query must not take a GPU's memory
    try:
        out = runner(
            [sys.executable, '-c', _DISCOVER],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith('DEVICES '):
            return [LocalDevice(k, int(i), n) for k, i, n in json.loads(line[len('DEVICES ') :])]
    return []


def _tpu_bounds(chips: int) -> str:
    """``TPU_CHIPS_PER_PROCESS_BOUNDS`` of a group of chips (x,y,z), as Cloud TPU VMs lay 1-8 out."""
    bounds = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1', 8: '2,4,1'}
    if chips not in bounds:
        raise ValueError(
            f'a TPU worker needs 1, 2, 4 or 8 chips, got {chips} (choose --sweep_parallel to fit)'
        )
    return bounds[chips]


def _slot_env(kind: str, ids: list[int], slot: int, env: Mapping[str, str]) -> dict[str, str]:
    if kind == 'cuda':  # ordinals of this process's view: map through its own CUDA_VISIBLE_DEVICES
        var, parent = 'CUDA_VISIBLE_DEVICES', env.get('CUDA_VISIBLE_DEVICES')
    elif kind == 'rocm':
        var = next(
            (k for k in ('HIP_VISIBLE_DEVICES', 'ROCR_VISIBLE_DEVICES') if k in env), 'HIP_VISIBLE_DEVICES'
        )
        parent = env.get(var)
    else:  # tpu: libtpu's per-process chip selection, one independent single-process slice per worker
        port = 8476 + slot
        return {
            'TPU_VISIBLE_CHIPS': ','.join(map(str, ids)),
            'TPU_CHIPS_PER_PROCESS_BOUNDS': _tpu_bounds(len(ids)),
            'TPU_PROCESS_BOUNDS': '1,1,1',
            'TPU_PROCESS_ADDRESSES': f'localhost:{port}',
            'TPU_PROCESS_PORT': str(port),
            'CLOUD_TPU_TASK_ID': '0',
            'ALLOW_MULTIPLE_LIBTPU_LOAD': '1',
        }
    names = [g.strip() for g in parent.split(',') if g.strip()] if parent else None
    return {var: ','.join(names[i] if names and i < len(names) else str(i) for i in ids)}


def device_slices(
    parallel: int,
    *,
    devices: Sequence[LocalDevice] | None = None,
    cpus: Iterable[int] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[DeviceSlot]:
    """Disjoint device slices for ``parallel`` workers, from the devices JAX finds (:func:`discover_devices`).

    GPUs (CUDA, ROCm) and TPU chips: contiguous groups of ``n // parallel``, each worker restricted to its
    own through the platform's visibility variables (``CUDA_VISIBLE_DEVICES``; ``HIP_VISIBLE_DEVICES``;
    ``TPU_VISIBLE_CHIPS`` with the process bounds libtpu needs); fewer devices than workers is an error.
    Only CPU devices: each worker is pinned to its own group of CPU cores (``sched_setaffinity``; XLA
    sizes its CPU thread pool by it), and the platform is left to JAX (no ``JAX_PLATFORMS`` is set: a
    worker runs where a plain run would).
    """
    if parallel < 1:
        raise ValueError(f'--sweep_parallel must be >= 1, got {parallel}')
    env = os.environ if env is None else env
    devices = discover_devices(env) if devices is None else list(devices)
    accel = [d for d in devices if d.kind != 'cpu']
    if accel:
        kinds = sorted({d.kind for d in accel})
        if len(kinds) > 1 or kinds[0] not in ('cuda', 'rocm', 'tpu'):
            raise ValueError(
                f'--sweep_parallel: cannot split devices of kind {", ".join(kinds)} between workers'
            )
        kind = kinds[0]
        ids = sorted(d.index for d in accel)
        what = 'TPU chips' if kind == 'tpu' else 'GPUs'
        if len(ids) < parallel:
            raise ValueError(
                f'--sweep_parallel={parallel} needs at least {parallel} {what}; {len(ids)} visible'
            )
        per = len(ids) // parallel
        return [DeviceSlot(_slot_env(kind, ids[i * per : (i + 1) * per], i, env)) for i in range(parallel)]
    cores = sorted(cpus if cpus is not None else usable_cores())
    if len(cores) < parallel:  # fewer cores than workers: they share all cores
        return [DeviceSlot({}, None) for _ in range(parallel)]
    per = len(cores) // parallel
    return [DeviceSlot({}, set(cores[i * per : (i + 1) * per])) for i in range(parallel)]


def child_argv(argv: Sequence[str], run: Run, launcher: str | None = None) -> list[str]:
    """The command of a parallel worker: this launch's own flags, for one run, sequentially."""
    drop_bare = {'--dry_run', '--table', '--notable', '--progress', '--noprogress', '--sweep'}
    drop_valued = ('--sweep_parallel', '--sweep_only', '--table', '--dry_run', '--progress')
    out, skip = [], False
    args = list(argv[1:])
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a in drop_bare:
            continue
        if a in ('--sweep_parallel', '--sweep_only'):  # '--flag value' form
            skip = True
            continue
        if a.startswith(tuple(f'{f}=' for f in drop_valued)):
            continue
        out.append(a)
    launcher = launcher or os.path.abspath(argv[0])
    return [sys.executable, launcher, *out, '--sweep', f'--sweep_only={run.id}', '--noprogress']
