"""Entry point: ``python launch.py --config=experiments/<file>.py[:arg] [--config.key=value] [--workdir=DIR]``.

All logic lives in :mod:`research.cli`.
"""

import sys

if __name__ == "__main__":  # first: restart with huge pages for malloc where that helps (research/hugepages.py)
    from research.hugepages import reexec_with_hugepages

    reexec_with_hugepages()

from absl import app  # noqa: E402

from research import cli  # noqa: E402


def main(argv):
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
