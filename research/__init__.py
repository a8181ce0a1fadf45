"""JAX/Flax research codebase for convolutional networks (see README.md).

Importing it changes no process state: the entry points (``launch.py``, ``benchmarks/*``) apply the
project's XLA flags (``research.xla_flags.apply``) and the huge-page restart
(``research.hugepages``) themselves.
"""
