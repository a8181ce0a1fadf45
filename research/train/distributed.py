"""Multi-host start-up: ``jax.distributed.initialize`` from flags, environment or a cluster manager.

Call :func:`initialize` before anything touches a JAX backend. Sources, first found wins:

1. arguments (``launch.py --coordinator_address=host:port --num_processes=N --process_id=i``);
2. environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
3. a multi-process job found by JAX's own cluster detection (``jax._src.clusters``, the classes
   ``jax.distributed.initialize()`` consults, in its order): Open MPI ``mpirun``
   (``OMPI_MCA_orte_hnp_uri``), SLURM ``srun`` (``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``,
   ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``), Cloud TPU pod slices on GCE (the TPU VM's
   metadata server) and GKE (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES``), and
   Kubernetes indexed Jobs / JobSets (``KUBERNETES_SERVICE_HOST`` plus ``JOB_COMPLETION_INDEX``;
   needs the ``kubernetes`` package, ``pip install 'jax[k8s]'``). JAX then fills in the coordinator,
   process count and id itself; a job it finds with one process is a single-process run;
4. an MPICH / Intel MPI / MVAPICH launch (``mpiexec``: ``PMI_SIZE`` > 1), which JAX bootstraps only
   through ``mpi4py`` (``cluster_detection_method='mpi4py'``; an error says to install it).

Otherwise the run is single-process and nothing is initialised. On CPU, cross-process
collectives use gloo (``jax_cpu_collectives_implementation``, JAX's default since 0.4.3x).
docs/multi-host.md has launch scripts for SLURM, TPU pod slices and Kubernetes.

Also here: :func:`set_cpu_devices` (``--cpu_devices``), :func:`accelerator_hint` (the run header's
warning when a GPU or TPU is visible but JAX runs on the CPU) and :func:`set_deterministic`
(``train.deterministic``).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from typing import Callable

import jax

from research.xla_flags import backend_started


def _int_or_none(value) -> int | None:
    return None if value in (None, '') else int(value)


def usable_cores() -> set[int]:
    """The CPU cores this process may run on (its affinity; all cores where that is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def _jax_cluster_envs() -> list[type]:
    """JAX's cluster environments in the order ``jax.distributed.initialize()`` tries them (private API,
    ``jax._src.clusters``; empty if it moved)."""
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - moved in a newer JAX
        return []
    return list(clusters.ClusterEnv._cluster_types)


def detect_cluster(env: dict[str, str] | None = None) -> tuple[str, int] | None:
    """``(cluster name, process count)`` of the multi-process job this process belongs to, as JAX's own
    cluster detection (or an MPICH ``PMI_SIZE``) finds it; None for a single-process run.

    Cluster classes JAX marks opt-in (mpi4py) are skipped, as ``jax.distributed.initialize()`` does;
    Kubernetes is consulted only in an indexed Job (``JOB_COMPLETION_INDEX`` set), the only kind JAX
    can bootstrap (a notebook or Deployment pod is single-process)."""
    env = os.environ if env is None else env
    for cls in _jax_cluster_envs():
        if getattr(cls, 'opt_in_only_method', False):
            continue
        name = getattr(cls, 'name', '') or cls.__name__
        if cls.__name__ == 'K8sCluster' and 'JOB_COMPLETION_INDEX' not in env:
            continue
        if not cls.is_env_present():
            continue
        count = int(cls.get_process_count())
        return (name, count) if count > 1 else None
    size = _int_or_none(env.get('PMI_SIZE'))
    if size is not None and size > 1:
        return ('mpich', size)
    return None


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Initialises ``jax.distributed`` if the arguments, the environment or a cluster ask for it.

    Returns True if it did (or if it was already initialised), False for a single-process run.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS') or None
    num_processes = num_processes if num_processes is not None else _int_or_none(env.get('JAX_NUM_PROCESSES'))
    process_id = process_id if process_id is not None else _int_or_none(env.get('JAX_PROCESS_ID'))
    if coordinator_address or num_processes is not None or process_id is not None:
        if num_processes is not None and num_processes < 1:
            raise ValueError(f'--num_processes must be >= 1, got {num_processes}')
        if num_processes == 1 and not coordinator_address:
            return False
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
        return True
    found = detect_cluster()
    if found is None:
        return False
    name, count = found
    if name == 'mpich':
        if importlib.util.find_spec('mpi4py') is None:
            raise RuntimeError(
                f'an MPI launch with PMI_SIZE={count} processes: JAX bootstraps MPICH-style launchers '
                'only through mpi4py (pip install mpi4py), or pass --coordinator_address, '
                '--num_processes and --process_id'
            )
        jax.distributed.initialize(cluster_detection_method='mpi4py')
    else:
        jax.distributed.initialize()  # JAX detects the same cluster and fills in every argument
    return True


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
            f'--cpu_devices must be -1 (one per core), 0 (default) or a positive count, got {count}'
        )
    n = len(usable_cores()) if count == -1 else count
    if backend_started():
        if jax.local_device_count('cpu') == n:
            return n
        raise RuntimeError(
            f'--cpu_devices={count}: a JAX backend is already initialised; set it before any JAX call'
        )
    jax.config.update('jax_num_cpu_devices', n)
    return n


# -- the run header's accelerator hint ------------------------------------------------------------
#: The install command for each kind of accelerator, by JAX's own extras (mirrored by this project's
#: extras: ``pip install -e '.[cuda12]'`` etc. in a checkout).
INSTALL = {
    'cuda12': "pip install -U 'jax[cuda12]'",
    'cuda13': "pip install -U 'jax[cuda13]'",
    'tpu': "pip install -U 'jax[tpu]'",
    'rocm': "pip install -U 'jax[rocm7-local]' (with ROCm 7 installed)",
}


def _run_text(cmd: list[str]) -> str:
    import subprocess

    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ''


def _tpu_chips() -> int:
    try:
        from jax._src import hardware_utils  # PCI vendor/device ids, what JAX itself checks on TPU VMs

        return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
    except Exception:  # pragma: no cover - moved in a newer JAX
        return 0


def visible_accelerators(
    *,
    which: Callable[[str], str | None] = shutil.which,
    paths: Callable[[str], list[str]] = glob.glob,
    run: Callable[[list[str]], str] = _run_text,
    tpu_chips: Callable[[], int] = _tpu_chips,
) -> dict[str, str]:
    """Accelerator hardware this machine shows, whatever JAX sees: ``{'cuda': evidence, 'tpu': ...,
    'rocm': ...}`` (evidence: one short phrase). Probes: ``nvidia-smi`` (GPU name and the driver's
    CUDA version) and ``/dev/nvidia[0-9]*``; TPU chips on the PCI bus (Google's vendor id, as on TPU
    VMs with ``/dev/vfio/*``) and ``/dev/accel*``; ``/dev/kfd`` and ``rocm-smi`` for AMD GPUs. The
    keyword arguments replace the probes (tests)."""
    found: dict[str, str] = {}
    if which('nvidia-smi'):
        out = run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader']).strip().splitlines()
        head = run(['nvidia-smi'])
        versions = [
            line.split('CUDA Version:')[1].split()[0] for line in head.splitlines() if 'CUDA Version:' in line
        ]
        if out:
            found['cuda'] = f'nvidia-smi: {len(out)} x {out[0].strip()}'
            if versions:
                found['cuda'] += f', driver CUDA {versions[0]}'
    if 'cuda' not in found and paths('/dev/nvidia[0-9]*'):
        found['cuda'] = f'{len(paths("/dev/nvidia[0-9]*"))} /dev/nvidia* device(s)'
    chips = tpu_chips()
    if chips:
        found['tpu'] = f'{chips} TPU chip(s) on the PCI bus'
    elif paths('/dev/accel*'):
        found['tpu'] = f'{len(paths("/dev/accel*"))} /dev/accel* device(s)'
    if paths('/dev/kfd') or which('rocm-smi'):
        found['rocm'] = '/dev/kfd (AMD GPU driver)' if paths('/dev/kfd') else 'rocm-smi'
    return found


def _cuda_extra(evidence: str) -> str:
    """cuda13 where the driver supports CUDA 13 (nvidia-smi's 'CUDA Version'), else cuda12."""
    try:
        major = int(evidence.rsplit('driver CUDA ', 1)[1].split('.')[0])
    except (IndexError, ValueError):
        return 'cuda12'
    return 'cuda13' if major >= 13 else 'cuda12'


def accelerator_hint(
    jax_platforms: set[str] | None = None,
    *,
    visible: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> str | None:
    """One warning line when accelerator hardware is visible but JAX has only CPU devices, with the exact
    install command; None otherwise (JAX uses an accelerator, none is visible, or ``JAX_PLATFORMS``
    asks for the CPU). ``jax_platforms``: the platforms of ``jax.devices()`` (default: asked here, which
    starts the backend); ``visible``: :func:`visible_accelerators`'s answer (default: probed)."""
    env = os.environ if env is None else env
    if env.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
        return None  # the user asked for the CPU
    platforms = {d.platform for d in jax.devices()} if jax_platforms is None else set(jax_platforms)
    if platforms - {'cpu'}:
        return None
    visible = visible_accelerators() if visible is None else visible
    for kind in ('cuda', 'tpu', 'rocm'):
        if kind in visible:
            extra = _cuda_extra(visible[kind]) if kind == 'cuda' else kind
            plugin = {'cuda': 'jax_cuda12_plugin', 'tpu': 'libtpu', 'rocm': 'jax_rocm7_plugin'}[kind]
            if kind == 'cuda' and importlib.util.find_spec('jax_cuda13_plugin'):
                plugin = 'jax_cuda13_plugin'
            if importlib.util.find_spec(plugin) is not None:
                probe = 'tpu' if kind == 'tpu' else 'gpu'
                return (
                    f"warning: {visible[kind]} and JAX's {plugin} is installed, but JAX found only CPU "
                    f'devices: python -c "import jax; jax.devices(\'{probe}\')" says why (driver or '
                    'library version mismatch?)'
                )
            build = 'TPU' if kind == 'tpu' else 'GPU'
            return (
                f'warning: {visible[kind]} but JAX has only CPU devices (CPU-only jaxlib): install the '
                f"{build} build with {INSTALL[extra]} (or pip install -e '.[{extra}]' in this checkout)"
            )
    return None


# -- train.deterministic -----------------------------------------------------------------------------
DETERMINISTIC_FLAG = '--xla_gpu_deterministic_ops=true'


def _flag_value(flags: str, name: str) -> str | None:
    value = None
    for part in flags.split():
        if part == f'--{name}':
            value = 'true'
        elif part.startswith(f'--{name}='):
            value = part.split('=', 1)[1].lower()
    return value


def set_deterministic(on: bool) -> bool:
    """``train.deterministic``: with ``on``, adds ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS`` (XLA
    then uses deterministic scatter / select-and-scatter / GEMM / convolution implementations and no
    autotuning measurements, so one GPU gives run-to-run identical results; docs/accelerators.md
    says what it costs). Call before anything touches a JAX backend, as flags are read when it
    starts; raises RuntimeError after. Returns whether the flag is in effect. CPU and TPU runs are
    unaffected (XLA:CPU and XLA:TPU have no atomics-based kernels to switch)."""
    flags = os.environ.get('XLA_FLAGS', '')
    current = _flag_value(flags, 'xla_gpu_deterministic_ops')
    if not on:
        return current in ('true', '1')
    if current in ('true', '1'):
        return True
    if backend_started():
        raise RuntimeError(
            'train.deterministic=True: a JAX backend already started, so XLA_FLAGS can no longer change; '
            f"set it before any JAX computation (or export XLA_FLAGS='{DETERMINISTIC_FLAG}')"
        )
    parts = [p for p in flags.split() if not p.startswith('--xla_gpu_deterministic_ops')]
    os.environ['XLA_FLAGS'] = ' '.join(parts + [DETERMINISTIC_FLAG])
    return True
