"""One XLA CPU device per core for jobs on a CPU-only host, so its programs run data-parallel.

XLA's CPU backend gives a process one device by default and spreads a program over the cores only
inside its larger ops; the demo TECO's many small ones leave the second core of a 2-core machine
idle for much of a step. As two devices, each with half the batch, the same step ran 1.2x faster
(`python benchmarks/teco_train.py step --cases memory_maze --drop_loss 0.8 --host_devices 1 2`;
README, "Performance"), and as four on the same two cores slower again.

Left alone: hosts with an accelerator (their devices are the accelerator's), an XLA_FLAGS that
already sets the host device count (the tests' 8; `XLA_FLAGS=--xla_force_host_platform_device_count=1`
keeps one device), and a process whose JAX backend has started (XLA reads the flag once, at start).
"""
from __future__ import annotations

import os
import sys

from teco.host_memory import cpu_only_host

FLAG = "--xla_force_host_platform_device_count"


def cores() -> int:
    """The cores this process may run on (its affinity, which a scheduler may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def one_device_per_core(batch_divisor: int, environ=os.environ) -> int | None:
    """Sets XLA_FLAGS for as many CPU devices as the largest divisor of `batch_divisor` (a number
    every batch of the job divides by) that is no more than the cores, when nothing above stands
    in the way; the count set, or None."""
    if FLAG in environ.get("XLA_FLAGS", "") or not cpu_only_host(environ):
        return None
    n = max(d for d in range(1, min(cores(), batch_divisor) + 1) if batch_divisor % d == 0)
    if n <= 1:
        return None
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    if xla_bridge is not None and xla_bridge.backends_are_initialized():
        return None
    environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {FLAG}={n}".strip()
    return n
