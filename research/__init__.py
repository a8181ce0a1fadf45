"""JAX/Flax research codebase for convolutional networks (see README.md)."""

from research import xla_flags as _xla_flags

_xla_flags.apply()
