"""Entry point: ``python launch.py --config=experiments/<file>.py[:arg] [--config.key=value] [--workdir=DIR]``.

All logic lives in :mod:`research.cli`. This file applies the process-wide settings first, before
JAX starts: the huge-page restart (``research/hugepages.py``) and the project's XLA flags
(``research/xla_flags.py``).
"""

import sys

if __name__ == "__main__":
    from research.hugepages import reexec_with_hugepages
    from research.xla_flags import apply as apply_xla_flags

    reexec_with_hugepages()  # restarts the interpreter once where huge pages help
    apply_xla_flags()

from absl import app  # noqa: E402

from research import cli  # noqa: E402


def main(argv):
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
