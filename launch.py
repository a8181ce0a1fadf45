"""Train, sweep, tabulate or inspect an experiment config (logic in research/cli.py).

  python launch.py --config=experiments/<file>.py[:args] [--config.<key>=<value> ...] [--workdir=DIR]
  python launch.py --config=experiments/classification/lenet5_digits.py       # the main job
  python launch.py --config=experiments/classification/resnet_cifar.py:depth=20 --summary
  python launch.py --config=experiments/ablations/resnet_degradation.py:quick --sweep --table

Documentation: README.md and docs/ (mkdocs serve). --helpfull lists every flag (absl, JAX, grain, orbax).
"""

# All logic lives in research/cli.py. This file applies the process-wide settings first, before JAX
# starts: the huge-page restart (research/hugepages.py) and the project's XLA flags (research/xla_flags.py).

import sys

if __name__ == '__main__':
    from research.hugepages import reexec_with_hugepages
    from research.xla_flags import apply as apply_xla_flags

    reexec_with_hugepages()  # restarts the interpreter once where huge pages help
    apply_xla_flags()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from research import cli  # noqa: E402

for _name in cli.KEY_FLAGS:  # `--help` lists the project's flags; `--helpfull` the rest too
    flags.declare_key_flag(_name)


def main(argv):
    sys.exit(cli.main(argv))


if __name__ == '__main__':
    app.run(main, flags_parser=cli.parse_flags)
