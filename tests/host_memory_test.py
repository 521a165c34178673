"""teco.host_memory: when the malloc settings apply, and that they stop XLA's per-execution page
faults on the CPU backend (counted by the kernel, not timed)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from teco import host_memory

NO_DEVICES = lambda pattern: []


def test_applies_on_cpu_only_hosts_unless_the_user_chose():
    assert host_memory.wanted({}, NO_DEVICES) == sys.platform.startswith("linux")
    assert not host_memory.wanted({"TECO_MALLOC": "default"}, NO_DEVICES)
    for key in host_memory.USER_SETTINGS:
        assert not host_memory.wanted({key: "1"}, NO_DEVICES)
    tpu = lambda pattern: ["/dev/accel0"] if pattern == "/dev/accel*" else []
    assert not host_memory.cpu_only_host({}, tpu)
    assert host_memory.cpu_only_host({"JAX_PLATFORMS": "cpu"}, tpu)  # told to use the CPU
    assert not host_memory.cpu_only_host({"JAX_PLATFORMS": "tpu,cpu"}, NO_DEVICES)
    assert host_memory.cpu_only_host({}, NO_DEVICES)


CHILD = textwrap.dedent("""
    import json, os, resource
    import teco
    from teco import host_memory
    if os.environ.get("ARENAS"):  # how benchmarks/host_malloc.py --arenas tries other counts
        host_memory.set_options(int(os.environ["ARENAS"]))
    import jax, jax.numpy as jnp
    f = jax.jit(lambda a: (a @ a).sum())
    x = jnp.ones((3072, 3072), jnp.float32)
    for _ in range(2):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        f(x).block_until_ready()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
    print(json.dumps({"tuned": host_memory.TUNED, "faults": faults}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_the_settings_stop_page_faults_of_repeated_executions():
    out = {}
    for mode in ("tuned", "default", "two_arenas"):
        env = {k: v for k, v in os.environ.items() if k not in host_memory.USER_SETTINGS}
        env.update(TECO_MALLOC="default" if mode != "tuned" else mode, JAX_PLATFORMS="cpu",
                   ARENAS="2" if mode == "two_arenas" else "")
        proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tuned"]["tuned"] and out["two_arenas"]["tuned"] and not out["default"]["tuned"]
    # A 3072^2 float32 product: its 36 MiB result, above glibc's 32 MiB mmap ceiling, is 9216
    # pages zero-filled at every execution when mmapped.
    assert out["default"]["faults"] > 1000, out
    assert out["tuned"]["faults"] < 0.05 * out["default"]["faults"], out
    # More arenas let a freed block sit in one thread's arena while another's thread asks for
    # it: fewer faults than glibc's defaults, more than one arena (here 49k against 3k).
    assert out["two_arenas"]["faults"] < 0.5 * out["default"]["faults"], out
