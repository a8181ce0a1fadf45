"""Rematerialisation (activation checkpointing) of one block: the models' ``remat`` knob.

``remat_call(enabled, parent, fn, *args)`` returns ``fn(*args)``; with ``enabled`` it runs ``fn`` under
Flax's lifted ``nn.remat`` (``jax.checkpoint`` over the block's variables and rngs). The forward
keeps only the block's inputs; the backward pass recomputes the block's activations from them:
activation memory of about one block instead of all of them, for about one extra forward pass.

It is the function form of the lifted transform (``nn.remat(lambda module, *args: ...)(parent,
*args)``), not ``nn.remat(BlockClass)``, for three reasons:

- **Same parameter tree.** The modules ``fn`` creates are the parent's submodules under their usual
  names (explicit or automatic: ``Dense_0``), so a model's variables are identical with and without
  remat and checkpoints load either way. ``nn.remat(BasicBlock)`` is a new class,
  ``CheckpointBasicBlock``, whose automatic names (``CheckpointBasicBlock_0``) differ.
- **Python arguments stay Python.** ``fn`` closes over ``train``, norms bound to a mode, strides,
  etc.; only ``args`` (arrays or pytrees of arrays) are traced. With the class form every
  non-array argument of ``__call__`` (``train``) must be listed in ``static_argnums`` (counting
  ``self`` as 0) and passed positionally; a keyword ``train=True`` is traced and ``if train``
  fails with a ConcretizationTypeError.
- **Any unit.** A stage that is a few layers of the parent (a VGG conv stage) can be one
  checkpointed unit without becoming its own module.

``fn`` must build its modules inside (``lambda x: Block(..., name=...)(x)``): a module constructed
outside is bound to the parent's scope, not to the lifted one. ``prevent_cse=True`` (the default):
without it XLA may merge the recomputation with the forward under ``jit`` and keep the activations
after all.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

__all__ = ['remat_call']


def remat_call(enabled: bool, parent: nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; under ``nn.remat`` (lifted ``jax.checkpoint``) when ``enabled``. Call it from a
    compact method of ``parent``; ``fn`` creates the block's modules (see the module docstring)."""
    if not enabled:
        return fn(*args)
    return nn.remat(lambda _module, *a: fn(*a))(parent, *args)
