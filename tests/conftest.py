import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research import xla_flags  # noqa: E402

xla_flags.apply()  # the project's XLA flags, as launch.py applies them (importing research does not)

import jax  # noqa: E402  (importing does not start a backend: tests may still set XLA_FLAGS)

# Many tests compile the same small programs (a resumed run recompiles its uninterrupted twin's step,
# eval steps repeat across tests): JAX's persistent compilation cache, one directory per xdist worker
# (its writes are not atomic across processes), removed at exit. Subprocesses keep their own settings.
_CACHE = tempfile.mkdtemp(prefix=f"jax_cache_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)
