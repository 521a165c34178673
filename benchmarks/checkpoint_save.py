"""Checkpoint save time (not a test): prints one JSON object per config and a summary.

    python benchmarks/checkpoint_save.py                          # tiny and memory_maze, 8 devices
    python benchmarks/checkpoint_save.py --cases dmlab --mesh '{"data": 8, "fsdp": 1, "model": 1}'

A TECO train state (parameters and AdamW moments) is created on a mesh of `--devices` simulated
CPU devices and saved twice through `teco.checkpoint`, once with orbax's default (every replicated
array written as one slice per replica; each distinct slice is an XLA program compiled at the
first save) and once with teco's `MIN_REPLICA_SLICE_BYTES` (arrays whose slices would be smaller
are written whole by their first replica). Each variant runs in its own process, so the first
save meets no program compiled before it. Compare only figures of one run: shared machines drift.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

CASES = {
    "tiny": ("configs/dmlab.py:tiny", "configs/dmlab_vqgan.py:tiny"),
    "memory_maze": ("configs/memory_maze.py", "configs/memory_maze_vqgan.py"),
    "dmlab": ("configs/dmlab.py", "configs/dmlab_vqgan.py"),
}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _child(case: str, mesh_json: str, min_slice_bytes: int) -> dict:
    import jax

    from teco import checkpoint, sharding, train
    from teco_train import build  # benchmarks/ is this script's directory

    config, task = build(*CASES[case], {}, json.loads(mesh_json))
    mesh = sharding.make_mesh(config.mesh)
    state, _, _ = train.create_train_state(task, config, mesh)
    jax.block_until_ready(state)
    checkpoint.MIN_REPLICA_SLICE_BYTES = min_slice_bytes
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(secs) if event == COMPILE_EVENT else None)
    times = []
    with tempfile.TemporaryDirectory() as workdir:
        manager = checkpoint.make_manager(workdir)
        for step in (1, 2):
            t0 = time.perf_counter()
            checkpoint.save(manager, step, state, {})
            manager.wait_until_finished()
            times.append(time.perf_counter() - t0)
            if step == 1:
                first_compiles, first_compile_s = len(compiles), sum(compiles)
    n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    return {"case": case, "devices": jax.device_count(), "mesh": dict(mesh.shape),
            "min_replica_slice_bytes": min_slice_bytes, "state_mb": round(n_bytes / 2**20, 1),
            "arrays": len(jax.tree.leaves(state)), "first_save_s": round(times[0], 3),
            "second_save_s": round(times[1], 3), "first_save_compiles": first_compiles,
            "first_save_compile_s": round(first_compile_s, 2)}


def _spawn(args: list[str], devices: int) -> dict:
    from teco_train import spawn_json

    env = {"JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": "",  # nothing compiled before
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return spawn_json(args, env, script=__file__)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(_child(argv[1], argv[2], int(argv[3]))), flush=True)
        return {}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", default=["tiny", "memory_maze"], choices=list(CASES))
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--mesh", default='{"data": 2, "fsdp": 2, "model": 2}',
                   help="mesh sizes (JSON); their product must be --devices")
    args = p.parse_args(argv)
    from teco.checkpoint import MIN_REPLICA_SLICE_BYTES

    summary = {}
    for case in args.cases:
        runs = {}
        for name, min_bytes in (("orbax_default", 0), ("teco", MIN_REPLICA_SLICE_BYTES)):
            runs[name] = _spawn([case, args.mesh, str(min_bytes)], args.devices)
            print(json.dumps(runs[name]), flush=True)
        if all("error" not in r for r in runs.values()):
            summary[case] = {"first_save_orbax_default_over_teco": round(
                runs["orbax_default"]["first_save_s"] / runs["teco"]["first_save_s"], 2)}
    print(json.dumps({"summary": summary}), flush=True)
    return summary


if __name__ == "__main__":
    main()
