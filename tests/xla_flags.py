"""XLA flags for the test processes and for the processes the tests start.

A test's programs run a few times at most, so compiling them dominates the suite. XLA's CPU
backend without its optimisation passes compiles the tiny TECO train step in half the time
(14 s -> 7 s on this machine, 2026-12-04), and with its loop emitters in place of the MLIR
fusion emitters (`xla_cpu_use_fusion_emitters=false`) in about a third of its time at level 0
(the 1-device step: 14.1-14.4 s -> 4.9-5.7 s on a slower day, 2026-12-06; the suite 11.0 ->
8.3 min). Users' runs keep XLA's defaults: there, on the demo's model, the loop emitters
compile slower (42 s against 32) and step 7% slower (both compiled in one process). Most
tests compare runs made under the same flags; those that compare with stored figures (the
authors' fixture in teco_model_test) hold within their tolerances under them too.
"""
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")


def xla_flags(device_count: int) -> str:
    """`device_count` simulated CPU devices, compiled fast."""
    return f"--xla_force_host_platform_device_count={device_count} {FAST_COMPILE}"
