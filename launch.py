"""Entry point: ``python launch.py --config=experiments/<file>.py[:arg] [--config.key=value] [--workdir=DIR]``.

All logic lives in :mod:`research.cli`.
"""

import sys

from absl import app

from research import cli


def main(argv):
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
