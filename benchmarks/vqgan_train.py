"""VQ-GAN train-step speed and memory (not a test): prints one JSON object per config.

    python benchmarks/vqgan_train.py                       # tiny and memory_maze, one process each
    python benchmarks/vqgan_train.py --config=configs/memory_maze_vqgan.py --steps=20
    python benchmarks/vqgan_train.py --config=configs/dmlab_vqgan.py:tiny --phase=gan

Batches are random frames already on the devices, so the figures are the step alone (no input
pipeline). Peak memory is the process's maximum resident set (and the device allocator's peak
where the backend reports one). Compare only runs made back to back: shared machines drift.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DEFAULT_CONFIGS = ("configs/memory_maze_vqgan.py:tiny", "configs/memory_maze_vqgan.py")


def _parse(value: str):
    import ast
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def run_one(config_path: str, steps: int, warmup: int, phase: str | None,
            overrides: dict | None = None) -> dict:
    import jax
    import numpy as np

    import teco  # noqa: F401  (sets flax's sharding mode)
    from teco import sharding, train
    from teco.config import load_config
    from teco.tasks import get_task

    config = load_config(config_path, overrides)
    task = get_task(config)
    mesh = sharding.make_mesh(config.mesh)
    t0 = time.time()
    state, abstract, shardings = train.create_train_state(task, config, mesh)
    jax.block_until_ready(state)
    init_s = time.time() - t0
    consts = jax.device_put(task.constants(), sharding.replicated(mesh))
    phase = phase or task.phase(0)
    step = train.make_train_step(task, mesh, shardings, phase)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.seq_len, config.image_size, config.image_size, config.channels)
    video = rng.uniform(-1, 1, shape).astype(np.float32)
    batch = jax.device_put({"video": video, "actions": np.zeros(shape[:2], np.int32)},
                           sharding.batch_sharding(mesh))
    t0 = time.time()
    state, metrics = step(state, batch, consts)
    jax.block_until_ready(metrics)
    compile_s = time.time() - t0
    for _ in range(warmup):
        state, metrics = step(state, batch, consts)
    jax.block_until_ready(metrics)
    t0 = time.time()
    for _ in range(steps):
        state, metrics = step(state, batch, consts)
    jax.block_until_ready(metrics)
    elapsed = time.time() - t0
    device_peak = None
    stats = jax.local_devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        device_peak = stats["peak_bytes_in_use"] / 2**20
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    frames_per_step = config.batch_size * config.seq_len
    return {
        "config": config_path, "overrides": overrides or {}, "phase": phase, "devices": jax.device_count(),
        "backend": jax.default_backend(), "params_M": round(n_params / 1e6, 3),
        "batch_frames": frames_per_step, "image_size": config.image_size,
        "init_s": round(init_s, 2), "compile_s": round(compile_s, 2),
        "steps_per_s": round(steps / elapsed, 3),
        "frames_per_s": round(steps * frames_per_step / elapsed, 1),
        "loss": float(metrics["loss"]),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device_peak_MB": None if device_peak is None else round(device_peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append",
                        help="config path[:tiny]; repeatable (default: tiny and memory_maze)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--phase", default=None, help="'rec' or 'gan' (default: step 0's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set vqgan.ch=32 (repeatable)")
    args = parser.parse_args()
    configs = args.config or list(DEFAULT_CONFIGS)
    overrides = {k: _parse(v) for k, v in (item.split("=", 1) for item in args.set)}
    if len(configs) == 1:
        print(json.dumps(run_one(configs[0], args.steps, args.warmup, args.phase, overrides)),
              flush=True)
        return
    # One process per config, so each peak memory figure is that config's alone.
    for path in configs:
        cmd = [sys.executable, __file__, f"--config={path}", f"--steps={args.steps}",
               f"--warmup={args.warmup}"] + ([f"--phase={args.phase}"] if args.phase else []) \
            + [f"--set={item}" for item in args.set]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
