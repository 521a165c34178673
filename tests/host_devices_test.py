"""teco/host_devices.py: when a CPU-only job is split into one XLA CPU device per core."""
import types

import pytest

from teco import host_devices

FLAG = "--xla_force_host_platform_device_count"


@pytest.fixture
def backend(monkeypatch):
    """A stand-in for jax's backend registry, not started unless a test says so."""
    state = types.SimpleNamespace(started=False)
    fake = types.SimpleNamespace(backends_are_initialized=lambda: state.started)
    monkeypatch.setitem(host_devices.sys.modules, "jax._src.xla_bridge", fake)
    return state


@pytest.mark.parametrize("cores, divisor, devices", [
    (2, 2, 2), (3, 2, 2), (16, 2, 2), (8, 4, 4), (3, 4, 2), (6, 12, 6), (5, 12, 4)])
def test_the_largest_divisor_of_the_batches_within_the_cores(monkeypatch, backend, cores,
                                                             divisor, devices):
    monkeypatch.setattr(host_devices, "cores", lambda: cores)
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_foo=1"}
    assert host_devices.one_device_per_core(divisor, env) == devices
    assert env["XLA_FLAGS"] == f"--xla_cpu_foo=1 {FLAG}={devices}"


@pytest.mark.parametrize("cores, divisor", [(1, 2), (4, 1), (2, 3)])
def test_one_device_leaves_the_flags_alone(monkeypatch, backend, cores, divisor):
    monkeypatch.setattr(host_devices, "cores", lambda: cores)
    env = {"JAX_PLATFORMS": "cpu"}
    assert host_devices.one_device_per_core(divisor, env) is None
    assert "XLA_FLAGS" not in env


@pytest.mark.parametrize("env", [
    {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{FLAG}=1"},   # the user's (or the tests') count
    {"JAX_PLATFORMS": "tpu"},                             # an accelerator's devices
    {"JAX_PLATFORMS": "cuda,cpu"},
])
def test_a_set_count_or_an_accelerator_is_left_alone(monkeypatch, backend, env):
    monkeypatch.setattr(host_devices, "cores", lambda: 8)
    before = dict(env)
    assert host_devices.one_device_per_core(2, env) is None
    assert env == before


def test_too_late_once_the_backend_has_started(monkeypatch, backend):
    monkeypatch.setattr(host_devices, "cores", lambda: 2)
    backend.started = True
    env = {"JAX_PLATFORMS": "cpu"}
    assert host_devices.one_device_per_core(2, env) is None
    assert "XLA_FLAGS" not in env


def test_cores_counts_this_process_s_cores():
    assert 1 <= host_devices.cores()
