"""Checkpoint housekeeping from the shell (run it while no run uses the workdir).

``python -m research.train.checkpoint_tool verify WORKDIR``: each step and whether it verifies.
``python -m research.train.checkpoint_tool rewind WORKDIR STEP``: sets the steps after STEP aside
(``checkpoints/rewound/``), so the next launch resumes from STEP (e.g. after a NaN stop, with a lower
lr and ``--allow_config_change``).
``python -m research.train.checkpoint_tool trust WORKDIR``: records checksums for checkpoints written
before checksums existed (you vouch for their bytes).
"""

from __future__ import annotations

import argparse
import sys

from research.train.checkpoint import Checkpointer, CheckpointError
from research.train.workdir import WorkdirLock, WorkdirLockedError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m research.train.checkpoint_tool', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    for name in ('verify', 'trust', 'rewind'):
        p = sub.add_parser(name)
        p.add_argument('workdir')
        if name == 'rewind':
            p.add_argument('step', type=int)
    args = parser.parse_args(argv)
    try:
        if args.command == 'verify':
            ckpt = Checkpointer(args.workdir)
            steps = ckpt.all_steps()
            for step in steps:
                reason = ckpt.verify(step)
                print(f'step {step}: {"ok" if reason is None else reason}')
            return 0 if steps and all(ckpt.verify(s) is None for s in steps) else 1
        with WorkdirLock(args.workdir, warn=lambda m: print(m, file=sys.stderr)):
            ckpt = Checkpointer(args.workdir)
            if args.command == 'trust':
                done = ckpt.trust()
                print(f'recorded checksums for steps {done}' if done else 'every step already has checksums')
            else:
                moved = ckpt.rewind(args.step)
                print(f'the next launch resumes from step {args.step}; set aside: {[str(m) for m in moved]}')
            ckpt.close()
    except (CheckpointError, WorkdirLockedError) as e:
        print(f'checkpoint_tool: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
