"""Test set-up: 8 simulated CPU devices so sharding is really exercised, compiled without
XLA's optimisation passes (tests/xla_flags.py).

XLA reads the flags when its CPU backend starts, so it must be set before anything imports jax's
backend; conftest.py is imported by pytest before any test module.
"""
import os

from xla_flags import FAST_COMPILE

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
    _flags += " " + FAST_COMPILE
os.environ["XLA_FLAGS"] = _flags.strip()
# TensorFlow (pulled in by clu's writers) must never take an accelerator, and must stay quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Many tests train the same tiny programs again (straight, interrupted, resumed): XLA's
# persistent cache compiles each once per test run. A fresh directory per run (the xdist workers
# and the subprocesses the tests start inherit it), so a run never reuses an older one's programs.
# JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
_own_cache = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _own_cache = tempfile.mkdtemp(prefix="teco-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _own_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_sessionfinish(session, exitstatus):
    if _own_cache:  # only the process that made it (the xdist controller, or a lone run)
        import shutil

        shutil.rmtree(_own_cache, ignore_errors=True)
