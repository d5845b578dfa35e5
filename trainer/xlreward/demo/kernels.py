"""The CPU kernels the demo computes with, pinned so that every x86-64 machine gets the same numbers.

torch picks its CPU kernels by what the processor offers: on a machine with AVX-512 its own vectorised ops,
MKL's matrix products and oneDNN's primitives take AVX-512 code paths that round differently from the AVX2
paths an AVX2-only machine takes. Training a model amplifies those last-bit differences: with the same
packages, the same seed and the same code, the demo's table on an AVX-512 machine differed from an AVX2
machine's from its first row, and forcing the AVX2 paths on the AVX-512 machine reproduced the AVX2
machine's table to the digit. So the demo asks for the AVX2 paths, which every x86-64 machine of the last
decade has. (Other architectures, such as ARM, compute differently still; the seed sweep's spread says by
how much a table may move.)

Each setting is read once, when torch loads its libraries, so this must run before torch is imported; a
variable the user set already is left as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

PORTABLE_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    # MKL's conditional numerical reproducibility: one code path on every CPU, and (STRICT) the same bits
    # whatever the thread count. Without STRICT a Xeon with AMX trained other weights on two threads than on
    # one (tests/test_demo_threads.py), so the model build's table depended on the load it ran under.
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN's primitives
}


def pin_portable_kernels(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Sets each of ``PORTABLE_KERNELS`` not already set in ``environ`` (child processes inherit them);
    returns the settings in force. RuntimeError if torch is already imported in this process, where they
    would come too late."""
    _before_torch("pin_portable_kernels", environ)
    for name, value in PORTABLE_KERNELS.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in PORTABLE_KERNELS}


# One compute thread per process. The demo runs two streams of processes at once (the transfer part beside
# the iterations), and a machine is often shared (CI beside it): torch's OpenMP threads spin while they wait
# for each other, so a process with a thread per core stalls whenever another process takes one of those
# cores (pretraining, about a minute alone, took 7 minutes beside `make test`; an annotation of 34 s was not
# done after 4 minutes beside an RM's training). The numbers do not depend on the count: seed 0's table was
# the same to the digit with one and with two. The one stage that runs alone, the model build, may take a
# second thread while it pays (``model_build_threads``, ``thread_choice``).
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def one_thread_per_process(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Sets ``SINGLE_THREAD`` in ``environ`` (child processes inherit it) before torch loads, unless the user
    set either variable: a thread count is one choice (torch takes the smaller of the two). Returns the
    settings in force."""
    _before_torch("one_thread_per_process", environ)
    if not any(name in environ for name in SINGLE_THREAD):
        environ.update(SINGLE_THREAD)
    return {name: environ[name] for name in SINGLE_THREAD if name in environ}


def model_build_threads(environ: Mapping[str, str] = os.environ) -> tuple[int, ...]:
    """The thread counts the model build may choose between (``thread_choice``): one and two, where the
    machine has two cores or more and the user set no count (a count the user set is kept). Call it before
    ``one_thread_per_process``, which sets the variables it looks for."""
    if any(name in environ for name in SINGLE_THREAD) or (os.cpu_count() or 1) < 2:
        return ()
    return (1, 2)


def _before_torch(setting: str, environ: MutableMapping[str, str]) -> None:
    """RuntimeError if torch is already imported in this process: it reads these variables when it loads."""
    if "torch" in sys.modules and environ is os.environ:
        raise RuntimeError(f"{setting} must run before torch is imported")


def kernel_tag(environ: MutableMapping[str, str] = os.environ) -> str:
    """ "portable" when the demo's kernels are pinned (``pin_portable_kernels``), else "native": models built
    under one are cached apart from the other's, since they differ."""
    pinned = all(environ.get(name) == value for name, value in PORTABLE_KERNELS.items())
    return "portable" if pinned else "native"
