"""The demo pins torch's CPU kernels to the AVX2 paths before torch loads, so every x86-64 machine computes
the same numbers, and caches models built under pinned and native kernels apart."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from xlreward.demo.kernels import PORTABLE_KERNELS, SINGLE_THREAD, kernel_tag, pin_portable_kernels


def test_pinning_fills_what_the_user_left_unset() -> None:
    environ = {"MKL_CBWR": "COMPATIBLE"}
    assert kernel_tag(environ) == "native"
    in_force = pin_portable_kernels(environ)
    assert in_force == {**PORTABLE_KERNELS, "MKL_CBWR": "COMPATIBLE"}  # the user's choice stands
    assert kernel_tag(environ) == "native"
    assert kernel_tag(dict(PORTABLE_KERNELS)) == "portable"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AVX2 is an x86-64 instruction set")
def test_torch_sees_the_pinned_kernels() -> None:
    """What `xlreward demo` does, in a fresh process: pin, then import torch; torch reports AVX2."""
    script = (
        "from xlreward.demo.kernels import pin_portable_kernels\n"
        "pin_portable_kernels()\n"
        "import torch\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
    )
    env = {name: value for name, value in os.environ.items() if name not in PORTABLE_KERNELS}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "AVX2"


def test_pinning_after_torch_is_refused() -> None:
    script = "import torch\nfrom xlreward.demo.kernels import pin_portable_kernels\npin_portable_kernels()\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "before torch is imported" in done.stderr


def test_one_thread_per_process_unless_the_user_chose() -> None:
    """What `xlreward demo` does before torch loads: torch then computes on one thread; a count the user set
    stands."""
    script = (
        "from xlreward.demo.kernels import one_thread_per_process\n"
        "one_thread_per_process()\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    env = {name: value for name, value in os.environ.items() if name not in SINGLE_THREAD}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "1"
    chosen = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "2"}
    )
    assert chosen.stdout.strip() == "2"
