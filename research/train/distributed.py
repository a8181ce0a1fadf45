"""Multi-host start-up: ``jax.distributed.initialize`` from flags, environment or a cluster manager.

Call :func:`initialize` before anything touches a JAX backend. Sources, first found wins:

1. arguments (``launch.py --coordinator_address=host:port --num_processes=N --process_id=i``);
2. environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
3. a cluster JAX detects by itself (SLURM with more than one task, Open MPI ``mpirun``, Cloud TPU
   pods, Kubernetes jobs): ``jax.distributed.initialize()`` without arguments.

Otherwise the run is single-process and nothing is initialised. On CPU, cross-process
collectives use gloo (``jax_cpu_collectives_implementation``, JAX's default since 0.4.3x).
"""

from __future__ import annotations

import os

import jax

_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _int_or_none(value) -> int | None:
    return None if value in (None, "") else int(value)


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Initialises ``jax.distributed`` if the arguments, the environment or a cluster ask for it.

    Returns True if it did (or if it was already initialised), False for a single-process run.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _int_or_none(env.get("JAX_NUM_PROCESSES"))
    process_id = process_id if process_id is not None else _int_or_none(env.get("JAX_PROCESS_ID"))
    if coordinator_address or num_processes is not None or process_id is not None:
        if num_processes is not None and num_processes < 1:
            raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
        if num_processes == 1 and not coordinator_address:
            return False
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
        return True
    if any(_int_or_none(env.get(k)) not in (None, 1) for k in _CLUSTER_SIZE_VARS):
        jax.distributed.initialize()
        return True
    return False
