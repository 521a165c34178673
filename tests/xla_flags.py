"""XLA flags for the test processes and for the processes the tests start.

A test's programs run a few times at most, so compiling them dominates the suite: XLA's CPU
backend without its optimisation passes compiles the tiny TECO train step in half the time
(14 s -> 7 s on this machine, 2026-12-04). Most tests compare runs made under the same flags;
those that compare with stored figures (the authors' fixture in teco_model_test) hold within
their tolerances under them too. Users' runs keep XLA's defaults.
"""
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(device_count: int) -> str:
    """`device_count` simulated CPU devices, compiled fast."""
    return f"--xla_force_host_platform_device_count={device_count} {FAST_COMPILE}"
