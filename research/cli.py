"""Command-line entry: the flags ``launch.py`` exposes and what each mode runs.

``launch.py --config=experiments/<file>.py[:arg] [--config.<key>=<value> ...] [--workdir=DIR]``
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from research import storage, tasks
from research.config import add_model_overrides, explain_override_error, split_model_overrides
from research.configlib import ConfigError
from research.experiments import commands as experiment_commands
from research.experiments import summary as summary_lib
from research.experiments import visualize
from research.train import distributed
from research.train.checkpoint import CheckpointError, quiet_orbax_errors
from research.train.workdir import WorkdirError, WorkdirLockedError

_CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Experiment config file[:args], e.g. experiments/classification/resnet_cifar.py:depth=56.',
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Run directory (default runs/<config name>[_<args>]; gs://bucket/... works with gcsfs installed); '
    'relaunching into it resumes the run.',
)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show the progress bar and log lines.')
_SUMMARY = flags.DEFINE_bool(
    'summary',
    False,
    "Print the model's per-layer shapes, params, MACs and receptive field, then exit (no training).",
)
_SUMMARY_INPUT = flags.DEFINE_string(
    'summary_input',
    None,
    "Input H,W,C for --summary, e.g. 32,32,3 (default: the dataset's image shape, from its metadata).",
)
# Sweeps and tables (logic in research/experiments/commands.py).
_SWEEP = flags.DEFINE_bool(
    'sweep',
    False,
    "Run the config's get_sweep() runs, each in <workdir>/<run id>; finished runs are skipped.",
)
_SWEEP_PARALLEL = flags.DEFINE_integer(
    'sweep_parallel', 1, 'With --sweep: N runs at once, each on its own GPUs / CPU cores.'
)
_SWEEP_ONLY = flags.DEFINE_string(
    'sweep_only',
    '',
    "With --sweep/--dry_run: only runs whose id matches ('model.depth=20,seed=0'; ';' = or).",
)
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, "List the sweep's runs (status, id, overrides) without running them."
)
_TABLE = experiment_commands.define_table_flag()
# Visual tools on a trained classification workdir (logic in research/viz/run.py).
_VIZ = flags.DEFINE_enum(
    'viz',
    None,
    ['filters', 'feature_maps', 'cam', 'receptive_field'],
    'Draw pictures of the trained classifier in --workdir into <workdir>/viz/ instead of training.',
)
_VIZ_LAYER = flags.DEFINE_string(
    'viz_layer', '', "Module path for --viz=feature_maps/cam (e.g. stage3_block3); '' = the default."
)
_VIZ_IMAGE = flags.DEFINE_string(
    'viz_image', '', "Image file for --viz=feature_maps/cam; '' = images of the eval split."
)
_VIZ_DILATION = flags.DEFINE_string(
    'viz_dilation', '1,2,4', 'Dilation rates of the 3x3 conv stack drawn by --viz=receptive_field.'
)

# Multi-host (research/train/distributed.py): also JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
# JAX_PROCESS_ID, or detected under SLURM / mpirun / Cloud TPU.
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, "Multi-host: host:port of process 0's coordinator (jax.distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices',
    0,
    'Split the host CPU into N XLA devices for data parallelism (-1: one per core; 0: one device).',
)
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, "Multi-host: this process's index, 0..num_processes-1."
)

#: The project's flags, in the order ``launch.py --help`` lists them (absl key flags of launch.py;
#: ``--helpfull`` adds absl's, grain's, orbax's and JAX's own).
KEY_FLAGS = (
    'config',
    'workdir',
    'summary',
    'summary_input',
    'sweep',
    'sweep_parallel',
    'sweep_only',
    'dry_run',
    'table',
    'viz',
    'viz_layer',
    'viz_image',
    'viz_dilation',
    'cpu_devices',
    'coordinator_address',
    'num_processes',
    'process_id',
    'progress',
)

_ALLOW_CHANGE = flags.DEFINE_bool(
    'allow_config_change',
    False,
    'Resume a run although its config changed in a key that may not change on resume (seed, batch size, '
    'lr, ...); the change is recorded in <workdir>/config_history.jsonl.',
)
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, "On an error, print the full traceback (and orbax's own error logs) after its one line."
)
KEY_FLAGS = KEY_FLAGS + ('allow_config_change', 'verbose')

# Exceptions that carry a message meant for the user: printed as one line, without a traceback
# (config errors exit with code 2, the others with 1; Ctrl-C with 130).
_USER_ERRORS = (KeyError, ValueError, FileNotFoundError, FloatingPointError, RuntimeError, OSError)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config errors (unknown override key, bad config argument) as one clear line."""
    for a in argv[1:]:
        if a.startswith('--config='):
            path = a.partition('=')[2].partition(':')[0]
            if not Path(path).is_file():
                print(f"launch.py: config file '{path}' not found", file=sys.stderr)
                raise SystemExit(2)
    parsed_argv, model_args = split_model_overrides(argv)  # --config.model.<arg> the file does not set
    saved = sys.argv
    try:
        sys.argv = parsed_argv  # the config flag reads its overrides from sys.argv while parsing
        rest = flags.FLAGS(parsed_argv)
        if model_args and _CONFIG.value is not None:
            add_model_overrides(_CONFIG.value, model_args)
        return rest
    except flags.Error as e:  # absl wraps config-file load errors in IllegalFlagValueError
        _exit_parse_error(e)
    except (AttributeError, KeyError, ValueError, TypeError, FileNotFoundError) as e:
        _exit_parse_error(e)
    finally:
        sys.argv = saved


def _exit_parse_error(e: BaseException) -> None:
    named = explain_override_error(sys.argv)  # e.g. --config.model.depth=20 on LeNet: name the key
    if named is not None:
        print(f'launch.py: {named}', file=sys.stderr)
        raise SystemExit(2)
    msg = str(e.args[0] if e.args else e)
    if 'Traceback' in msg:  # an exception raised inside get_config(): keep its last line
        msg = [l for l in msg.splitlines() if l.strip()][-1]
    msg = msg.replace('\\n', ' ').replace('\n', ' ').strip('\'" ')
    print(f'launch.py: bad --config: {type(e).__name__}: {msg}', file=sys.stderr)
    raise SystemExit(2)


def _enable_compilation_cache() -> None:
    """JAX's persistent compilation cache: a relaunch (resume, sweep run) skips recompiling.

    ``$RESEARCH_JAX_CACHE`` sets the directory (default ``~/.cache/research/jax``; empty = off).
    """
    import jax

    path = os.environ.get('RESEARCH_JAX_CACHE', os.path.expanduser('~/.cache/research/jax'))
    if path:
        jax.config.update('jax_compilation_cache_dir', path)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def default_workdir(config_arg: str) -> Path:
    """``runs/<stem>`` or ``runs/<stem>_<arg>`` for ``--config=path/<stem>.py[:arg]``."""
    path, _, arg = config_arg.partition(':')
    name = Path(path).stem
    if arg:
        name += '_' + ''.join(c if c.isalnum() or c in '=-.' else '_' for c in arg)
    return Path('runs') / name


def _error(e: BaseException) -> int:
    """One line for an error meant for the user (the traceback too with ``--verbose``); exit code 2 for
    config errors, 1 otherwise."""
    if _VERBOSE.value:
        traceback.print_exc()
    if isinstance(e, CheckpointError):
        print(f'launch.py: checkpoint error: {e}', file=sys.stderr)
        return 1
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    if isinstance(e, (ConfigError, WorkdirError, WorkdirLockedError)):  # their messages name the key/path
        print(f'launch.py: {msg}', file=sys.stderr)
    else:
        print(f'launch.py: {type(e).__name__}: {msg}', file=sys.stderr)
    return 2 if isinstance(e, (ConfigError, KeyError)) else 1


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise SystemExit(f'launch.py: unexpected arguments {argv[1:]} (flags are --name=value)')
    if _CONFIG.value is None:
        raise SystemExit(
            'launch.py: --config is required, e.g. --config=experiments/classification/lenet5_digits.py'
        )
    if not flags.FLAGS[
        'verbosity'
    ].present:  # keep library INFO chatter (TFDS, XLA) out of the progress output
        logging.set_verbosity(logging.WARNING)
    _enable_compilation_cache()
    storage.configure_remote()  # gs:// listings not cached for the life of the process
    if not _VERBOSE.value:
        quiet_orbax_errors()  # orbax logs every restore failure at length; our error says it in one line
    config = _CONFIG.value
    try:
        distributed.set_deterministic(bool(config.train.get('deterministic', False)))  # before JAX starts
        distributed.set_cpu_devices(_CPU_DEVICES.value)
    except ValueError as e:
        print(f'launch.py: {e}', file=sys.stderr)
        return 2
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        if _SUMMARY.value:
            summary_lib.print_summary(config, _SUMMARY_INPUT.value)
            return 0
        config_arg = flags.FLAGS['config'].serialize().partition('=')[2] or ''
        workdir = storage.as_path(_WORKDIR.value) if _WORKDIR.value else default_workdir(config_arg)
        if not _VIZ.value and experiment_commands.requested(_SWEEP.value, _DRY_RUN.value, _TABLE.value):
            return experiment_commands.main(
                config,
                config_arg,
                workdir,
                sweep=_SWEEP.value,
                dry_run=_DRY_RUN.value,
                table=_TABLE.value,
                parallel=_SWEEP_PARALLEL.value,
                only=_SWEEP_ONLY.value,
                show_progress=_PROGRESS.value,
            )
        if _VIZ.value:
            visualize.run_viz(
                config,
                workdir,
                _VIZ.value,
                layer=_VIZ_LAYER.value,
                image=_VIZ_IMAGE.value,
                dilation=_VIZ_DILATION.value,
            )
            return 0
        tasks.train_and_evaluate(
            config, workdir, show_progress=_PROGRESS.value, allow_config_change=_ALLOW_CHANGE.value
        )
    except KeyboardInterrupt:  # the loop said what it saved; no traceback
        return 130
    except _USER_ERRORS as e:
        return _error(e)
    return 0
