"""Device mesh and shardings: the batch is split on the ``data`` axis, the state replicated.

With ``train.model_parallel = M > 1`` the mesh is ``('data', 'model')`` of shape (devices/M, M):
the batch is split over all devices and every large state array (parameters and their
optimizer moments) is sharded FSDP-style along ``model`` on one of its dimensions
(:func:`state_sharding`); XLA all-gathers them where the step needs them whole.

Meshes come from ``jax.make_mesh`` (its topology-aware device order: on TPU the physical torus,
e.g. a ring over the ICI links for a 1-D mesh; elsewhere JAX's device order) with ``AxisType.Auto`` axes (JAX 0.10's default is
``Explicit``, which would turn every sharding into part of the array types); across hosts the
devices are grouped by process, keeping ``make_mesh``'s order within each, so that each process's
devices hold a contiguous slice of the global batch (:func:`check_process_slices`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

#: Arrays with fewer elements than this stay replicated under ``model_parallel`` (biases, BN).
FSDP_MIN_SIZE = 4096


AUTO = jax.sharding.AxisType.Auto


def process_contiguous(devices) -> list[jax.Device]:
    """``devices`` stably grouped by process (order kept within each process): every process's devices
    are consecutive, so a batch split in device order gives each process one contiguous slice."""
    return sorted(devices, key=lambda d: d.process_index)


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over all (global) devices; works for 1 device, N devices, N hosts.

    ``jax.make_mesh``'s topology-aware order, grouped by process, with an ``Auto`` axis."""
    devices = jax.devices() if devices is None else list(devices)
    ordered = jax.make_mesh((len(devices),), ('data',), axis_types=(AUTO,), devices=devices).devices.flat
    return Mesh(np.asarray(process_contiguous(ordered)), ('data',), axis_types=(AUTO,))


def with_model_axis(mesh: Mesh, model_parallel: int) -> Mesh:
    """``mesh``'s devices as a ``('data', 'model')`` mesh of shape (n / model_parallel, model_parallel):
    each ``model`` group is ``model_parallel`` consecutive devices of ``mesh`` (neighbours in
    ``jax.make_mesh``'s order, within one process where it has that many)."""
    devices = np.asarray(mesh.devices).reshape(-1)
    if model_parallel < 1 or devices.size % model_parallel:
        raise ValueError(
            f'train.model_parallel={model_parallel} does not divide the {devices.size} devices of the mesh'
        )
    if model_parallel == 1:
        return mesh
    return Mesh(devices.reshape(-1, model_parallel), ('data', 'model'), axis_types=(AUTO, AUTO))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batch dimension split over every device of the mesh (all its axes, in order)."""
    return NamedSharding(mesh, P('data') if mesh.axis_names == ('data',) else P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], model_parallel: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """FSDP spec of one array: its largest dimension divisible by ``model_parallel`` on ``model``.

    Arrays smaller than ``min_size`` elements (or with no divisible dimension) stay replicated.
    """
    if model_parallel <= 1 or math.prod(shape) < min_size:
        return P()
    dims = [i for i, d in enumerate(shape) if d % model_parallel == 0]
    if not dims:
        return P()
    axis = max(dims, key=lambda i: (shape[i], i))
    return P(*([None] * axis + ['model']))


def state_sharding(abstract_state: Any, mesh: Mesh) -> Any:
    """Per-leaf shardings of a state pytree: FSDP on ``model`` if the mesh has it, else replicated."""
    m = dict(zip(mesh.axis_names, mesh.devices.shape)).get('model', 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), m)), abstract_state)


def check_batch_size(global_batch: int, mesh: Mesh, *, name: str = 'train.batch_size') -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f'{name}={global_batch} is not divisible by the {n} devices of the mesh')


def check_process_slices(global_batch: int, mesh: Mesh) -> None:
    """Checks that this process's devices hold rows ``[p*L, (p+1)*L)`` of a global batch.

    The input pipelines give process ``p`` exactly that slice (L = global_batch / process_count),
    and :func:`to_global` places it on the process's devices in order; a mesh whose device order
    interleaved processes would silently permute the batch, so it is refused.
    """
    p, count = jax.process_index(), jax.process_count()
    local = global_batch // count
    idx = batch_sharding(mesh).devices_indices_map((global_batch,))
    rows = sorted(
        {r for d, (sl,) in idx.items() if d.process_index == p for r in range(*sl.indices(global_batch))}
    )
    if rows != list(range(p * local, (p + 1) * local)):
        raise ValueError(
            f'process {p}/{count}: its devices hold batch rows {rows[:3]}...{rows[-3:]} of {global_batch}, '
            f'not the contiguous slice [{p * local}, {(p + 1) * local}) its input pipeline reads; '
            "order the mesh's devices by process"
        )


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each host's local slice into one global array sharded on ``data`` (every leaf of
    ``batch``, e.g. the nested augmentation parameters of ``data.on_device``)."""
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
