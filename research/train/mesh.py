"""Device mesh and shardings: the batch is split on the ``data`` axis, the state replicated."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D ``('data',)`` mesh over all (global) devices; works for 1 device, N devices, N hosts."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, *, name: str = "train.batch_size") -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{name}={global_batch} is not divisible by the {n} devices of the mesh")


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each host's local slice into one global array sharded on ``data``."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
