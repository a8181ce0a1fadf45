"""The one helper every torchvision parity test uses (issue 27, item 7).

``assert_parity(name, ...)`` runs ``research.interop.torchvision.parity``: BatchNorm statistics
calibrated on real images (torch's BatchNorm layers in train mode over a few batches of digit
mosaics, then eval), two further images through both frameworks, and asserts both errors: the plain
one (max|flax - torch| / max|torch|) and the one of the input-dependent part (the difference of the
two images' outputs), plus that the output depends on the input at all (``sensitivity``), and the
same for an auxiliary head's output. ``dtype='float64'`` where float32 noise is in doubt.
"""

from __future__ import annotations

import contextlib

#: float32 limits of the plain and the input-dependent relative errors (measured: 1e-7 to 2e-5).
TOL = {'float32': 1e-4, 'float64': 1e-6}
#: An output that changes by less than this fraction of its size between two images is suspect.
MIN_SENSITIVITY = 1e-2


@contextlib.contextmanager
def one_torch_thread():
    """torch on one thread: the suite runs two pytest-xdist workers on 2 cores next to JAX's own
    threads, where torch's 2 OpenMP threads wait on each other (calibrating resnet18 at 64 px took
    0.3-1.5 s with 2 threads on the loaded machine, 0.1 s with 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_parity(name, *, dtype='float32', tol=None, **kwargs):
    from research.interop import torchvision as tvi

    with one_torch_thread():
        r = tvi.parity(name, dtype=dtype, **kwargs)
    tol = TOL[dtype] if tol is None else tol
    print(
        f'{r.name} [{dtype}]: error {r.error:.2e}, input-dependent {r.input_error:.2e}, '
        f'sensitivity {r.sensitivity:.2f}'
        + (f', aux {r.aux_error:.2e} / {r.aux_input_error:.2e}' if r.aux_error is not None else '')
    )
    assert r.sensitivity > MIN_SENSITIVITY, r
    assert r.error < tol and r.input_error < tol, r
    if r.aux_error is not None:
        assert r.aux_error < tol and r.aux_input_error < tol, r
    return r
