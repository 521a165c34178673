"""Test set-up: 8 simulated CPU devices so sharding is really exercised.

XLA reads the flag when its CPU backend starts, so it must be set before anything imports jax's
backend; conftest.py is imported by pytest before any test module.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
# TensorFlow (pulled in by clu's writers) must never take an accelerator, and must stay quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
