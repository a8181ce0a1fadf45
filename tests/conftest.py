import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The suite checks CPU semantics (simulated CPU devices, oneDNN, float32 results against NumPy and
# PyTorch), so on a GPU or TPU host it runs on the CPU unless JAX_PLATFORMS says otherwise
# (``JAX_PLATFORMS=cuda pytest ...`` runs the in-process tests on the GPU). Matmuls and convolutions
# use full float32 precision ('highest'; GPUs and TPUs default to TF32 / bf16 passes). Both are
# environment variables, so every subprocess a test starts (launch.py runs, N-device scripts) inherits
# them; tests that need N CPU devices set JAX_PLATFORMS=cpu for their subprocess themselves.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')

from research import xla_flags  # noqa: E402

xla_flags.apply()  # the project's XLA flags, as launch.py applies them (importing research does not)

import jax  # noqa: E402  (importing does not start a backend: tests may still set XLA_FLAGS)

jax.config.update('jax_platforms', os.environ['JAX_PLATFORMS'])
jax.config.update('jax_default_matmul_precision', os.environ['JAX_DEFAULT_MATMUL_PRECISION'])

# The configs read their folders under the data root $RESEARCH_DATA_DIR (research/data/roots.py); the
# tests use the offline copies kept beside the repository in ../shared/data (also in subprocesses).
SHARED_DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, 'shared', 'data'
)
os.environ['RESEARCH_DATA_DIR'] = os.path.abspath(SHARED_DATA)

# Many tests compile the same small programs (a resumed run recompiles its uninterrupted twin's step,
# eval steps repeat across tests): JAX's persistent compilation cache, one directory per xdist worker
# (its writes are not atomic across processes), removed at exit. Subprocesses keep their own settings.
_CACHE = tempfile.mkdtemp(prefix=f'jax_cache_{os.environ.get("PYTEST_XDIST_WORKER", "main")}_')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)
