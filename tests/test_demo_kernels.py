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
    env = {name: value for name, value in os.environ.items() if name not in PORTABLE_KERNELS}
    assert torch_after("pin_portable_kernels", "torch.backends.cpu.get_cpu_capability()", env) == "AVX2"


def torch_after(setting: str, expression: str, env: dict[str, str]) -> str:
    """What ``expression`` prints in a fresh process that applies ``setting`` and then imports torch."""
    script = f"from xlreward.demo.kernels import {setting}\n{setting}()\nimport torch\nprint({expression})\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_pinning_after_torch_is_refused() -> None:
    script = "import torch\nfrom xlreward.demo.kernels import pin_portable_kernels\npin_portable_kernels()\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "before torch is imported" in done.stderr


def test_one_thread_per_process_unless_the_user_chose() -> None:
    """What `xlreward demo` does before torch loads: torch then computes on one thread; a count the user set
    stands."""
    env = {name: value for name, value in os.environ.items() if name not in SINGLE_THREAD}
    threads = "torch.get_num_threads()"
    assert torch_after("one_thread_per_process", threads, env) == "1"
    assert torch_after("one_thread_per_process", threads, {**env, "OMP_NUM_THREADS": "2"}) == "2"
