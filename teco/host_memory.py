"""glibc malloc settings for XLA's CPU backend, applied when `teco` is imported on a CPU-only host.

XLA's CPU runtime allocates every execution's temporary buffer afresh (~700 MB for the Memory Maze
TECO train step). glibc serves such a block with mmap from a worker thread's arena and unmaps it
when freed, so the kernel zero-fills each of its pages again at the next step: 175k page faults and
0.5-0.9 s of system time in a 1.4 s step on a 2-core machine. One arena, no mmap and no trimming
below 2 GiB keep the freed block in the heap for the next execution (the step went from 1.85 to
1.35 s, the same numbers out; `benchmarks/host_malloc.py` measures it).

The price is memory: freed blocks stay in the heap, so a process's peak can be higher (the DMLab
TECO step without DropLoss, 23.5 GB with glibc's defaults, went past 24.4 GB and was killed on a
24 GiB host); a job that only just fits runs with TECO_MALLOC=default.

Left alone: hosts with an accelerator (their large buffers live on the device), any malloc settings
the user exported (MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES),
non-glibc systems, and TECO_MALLOC=default. The settings must precede the backend's threads,
hence their place at the top of `teco/__init__.py`.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# glibc's arenas for all threads: one keeps every freed block reusable by the next execution.
# Two made the Memory Maze train steps 13% slower and its rollouts 10% faster (2026-12-05,
# `benchmarks/host_malloc.py --arenas 2`); training is most of the work.
ARENAS = 1
# mallopt takes an int: the largest trim threshold it can set
TRIM_THRESHOLD = 2**31 - 1
USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")

# Whether this process runs with the settings (set by `apply()` at `import teco`).
TUNED = False


def cpu_only_host(environ=os.environ, dev_glob=glob.glob) -> bool:
    """JAX_PLATFORMS names only 'cpu', or (unset) no TPU / GPU device file exists."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return {p.strip() for p in platforms.split(",") if p.strip()} <= {"cpu"}
    return not any(dev_glob(pattern) for pattern in ACCELERATOR_DEVICES)


def wanted(environ=os.environ, dev_glob=glob.glob) -> bool:
    if environ.get("TECO_MALLOC", "").strip().lower() in ("default", "off", "0"):
        return False
    if any(k in environ for k in USER_SETTINGS):
        return False
    return sys.platform.startswith("linux") and cpu_only_host(environ, dev_glob)


def apply() -> bool:
    """Sets the three options when `wanted()`; True if glibc took all of them."""
    return set_options(ARENAS) if wanted() else False


def set_options(arenas: int) -> bool:
    """`arenas` arenas, no mmap, no trimming: True if glibc took all three (benchmarks call this
    directly to compare arena counts)."""
    global TUNED
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    results = [mallopt(M_ARENA_MAX, arenas), mallopt(M_MMAP_MAX, 0),
               mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    TUNED = all(r == 1 for r in results)
    return TUNED
