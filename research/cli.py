"""Command-line entry: the flags ``launch.py`` exposes and what each mode runs.

``launch.py --config=experiments/<file>.py[:arg] [--config.<key>=<value> ...] [--workdir=DIR]``
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, e.g. experiments/classification/resnet_cifar.py:depth=56",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, metrics, summary); relaunching with the same one resumes. "
    "Default: runs/<config name>[_<arg>].",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show the progress bar and log lines.")

# Exceptions that carry a message meant for the user: printed without a traceback.
_USER_ERRORS = (KeyError, ValueError, FileNotFoundError, FloatingPointError, RuntimeError)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with config errors (unknown override key, bad config argument) as one clear line."""
    for a in argv[1:]:
        if a.startswith("--config="):
            path = a.partition("=")[2].partition(":")[0]
            if not Path(path).is_file():
                print(f"launch.py: config file '{path}' not found", file=sys.stderr)
                raise SystemExit(2)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # absl wraps config-file load errors in IllegalFlagValueError
        _exit_parse_error(e)
    except (AttributeError, KeyError, ValueError, TypeError, FileNotFoundError) as e:
        _exit_parse_error(e)


def _exit_parse_error(e: BaseException) -> None:
    msg = str(e.args[0] if e.args else e)
    if "Traceback" in msg:  # an exception raised inside get_config(): keep its last line
        msg = [l for l in msg.splitlines() if l.strip()][-1]
    msg = msg.replace("\\n", " ").replace("\n", " ").strip("'\" ")
    print(f"launch.py: bad --config: {type(e).__name__}: {msg}", file=sys.stderr)
    raise SystemExit(2)


def default_workdir(config_arg: str) -> Path:
    """``runs/<stem>`` or ``runs/<stem>_<arg>`` for ``--config=path/<stem>.py[:arg]``."""
    path, _, arg = config_arg.partition(":")
    name = Path(path).stem
    if arg:
        name += "_" + "".join(c if c.isalnum() or c in "=-." else "_" for c in arg)
    return Path("runs") / name


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise SystemExit(f"launch.py: unexpected arguments {argv[1:]} (flags are --name=value)")
    if _CONFIG.value is None:
        raise SystemExit(
            "launch.py: --config is required, e.g. --config=experiments/classification/lenet5_digits.py"
        )
    if not flags.FLAGS[
        "verbosity"
    ].present:  # keep library INFO chatter (TFDS, XLA) out of the progress output
        logging.set_verbosity(logging.WARNING)
    from research.train import CheckpointError, train_and_evaluate

    config = _CONFIG.value
    config_arg = flags.FLAGS["config"].serialize().partition("=")[2] or ""
    workdir = Path(_WORKDIR.value) if _WORKDIR.value else default_workdir(config_arg)
    try:
        train_and_evaluate(config, workdir, show_progress=_PROGRESS.value)
    except CheckpointError as e:
        print(f"launch.py: checkpoint error: {e}", file=sys.stderr)
        return 1
    except _USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"launch.py: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    return 0
