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

from research.xla_flags import backend_started

_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _int_or_none(value) -> int | None:
    return None if value in (None, "") else int(value)


def usable_cores() -> set[int]:
    """The CPU cores this process may run on (its affinity; all cores where that is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


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


def set_cpu_devices(count: int) -> int:
    """Splits the host CPU into ``count`` XLA devices (``-1``: one per core, ``os.cpu_count()``;
    ``0``: JAX's default, one; "cores" are those this process may run on, so a pinned sweep worker
    counts its own); call before anything touches a JAX backend. Returns the count set.

    XLA:CPU runs most convolutions of small CIFAR-size layers on one thread: 3x3 convs of 16-64
    channels on 32x32..8x8 maps take the same time with 1 or 2 cores (benchmarks/RESULTS.md). Data
    parallelism over one device per core (the same ``jit`` over a ``Mesh``, BatchNorm over the global
    batch, results equal to 1 device within float tolerance) puts every core to work: ResNet-20
    training 1.6x faster on 2 cores. ``train.batch_size`` must be divisible by the count.
    """
    if count == 0:
        return 0
    if count < -1:
        raise ValueError(
            f"--cpu_devices must be -1 (one per core), 0 (default) or a positive count, got {count}"
        )
    n = len(usable_cores()) if count == -1 else count
    if backend_started():
        if jax.local_device_count("cpu") == n:
            return n
        raise RuntimeError(
            f"--cpu_devices={count}: a JAX backend is already initialised; set it before any JAX call"
        )
    jax.config.update("jax_num_cpu_devices", n)
    return n
