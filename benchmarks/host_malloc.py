"""What teco/host_memory.py's malloc settings do on the CPU backend; prints one JSON object.

    python benchmarks/host_malloc.py                              # every case, 2 rounds
    python benchmarks/host_malloc.py --cases teco_step --rounds 3
    python benchmarks/host_malloc.py --cases teco_step rollout --arenas 2 4   # other arena counts

Each case runs in fresh processes, with teco's settings ("tuned") and with glibc's defaults
(TECO_MALLOC=default), alternately, so a drifting machine slows both alike. Per process: the
median seconds of the timed executions after a warm-up, and per execution the system CPU time
and minor page faults. Cases: a 4096^3 float32 matrix product, the Memory Maze TECO and VQ-GAN
train steps (random inputs, 1 device), a Memory Maze rollout (random parameters, 2 videos, 16
frames after 36, draft-and-revise, as teco.eval runs it) and I3D features of 4 16-frame 64x64
clips. `--arenas N ...` adds, per N, processes with teco's settings but N malloc arenas.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("matmul", "teco_step", "vqgan_step", "rollout", "i3d")


def _case_fn(case: str):
    """-> (run once and block, executions per timing)."""
    import jax
    import numpy as np

    if case == "matmul":
        x = jax.numpy.ones((4096, 4096), jax.numpy.float32)
        f = jax.jit(lambda a: (a @ a).sum())
        return lambda: f(x).block_until_ready(), 3
    if case == "i3d":
        from teco.metrics import I3D

        i3d = I3D(batch_size=4, progress=False)
        videos = np.random.default_rng(0).integers(0, 256, (4, 16, 64, 64, 3), dtype=np.uint8)
        return lambda: i3d.features(videos), 2
    if case == "rollout":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from flax import nnx

        from rollout import build as build_rollout
        from teco import rollout

        config, model, table, codes, actions = build_rollout("memory_maze", 2, 36, 52, seed=0)
        spec = rollout.SamplerSpec.from_config(config)
        graphdef, state = nnx.split(model)
        roll = jax.jit(lambda state, key: rollout.rollout(nnx.merge(graphdef, state), table, codes,
                                                          actions, key, n_new=16, spec=spec))
        return lambda: roll(state, jax.random.key(0)).block_until_ready(), 3
    from teco import sharding, train

    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
    if case == "teco_step":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from teco_train import build, random_batch

        config, task = build("configs/memory_maze.py", "configs/memory_maze_vqgan.py", {})
        batch = random_batch(task, config, mesh)
    elif case == "vqgan_step":
        from teco.config import load_config
        from teco.tasks import get_task

        config = load_config("configs/memory_maze_vqgan.py")
        task = get_task(config)
        shape = (config.batch_size, config.seq_len, config.image_size, config.image_size, 3)
        video = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        batch = jax.device_put({"video": video, "actions": np.zeros(shape[:2], np.int32)},
                               sharding.batch_sharding(mesh))
    else:
        raise ValueError(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    state, _, shardings = train.create_train_state(task, config, mesh)
    step = train.make_train_step(task, mesh, shardings, task.phase(0))
    consts = jax.device_put(task.constants(), sharding.replicated(mesh))
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch, consts)
        jax.block_until_ready(metrics)
    return run, 5


def child(case: str, arenas: int | None) -> dict:
    import teco
    from teco import host_memory

    if arenas is not None:  # started with TECO_MALLOC=default; before JAX starts its threads
        host_memory.set_options(arenas)
    run, n = _case_fn(case)
    run()
    run()  # compiled, and the allocator warmed up
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"tuned": host_memory.TUNED, "seconds": statistics.median(times),
            "sys_s": (after.ru_stime - before.ru_stime) / n,
            "minor_faults": (after.ru_minflt - before.ru_minflt) / n,
            "peak_rss_MB": round(after.ru_maxrss / 1024, 1), "teco": teco.__version__}


def measure(case: str, rounds: int, arenas: list[int]) -> dict:
    """kinds: "tuned" (teco's settings), "default" (glibc's) and "arenas_N" (teco's, N arenas)."""
    runs = {"tuned": [], "default": [], **{f"arenas_{n}": [] for n in arenas}}
    for _ in range(rounds):
        for kind in runs:
            env = dict(os.environ, TECO_MALLOC="tuned" if kind == "tuned" else "default")
            cmd = [sys.executable, __file__, "--child", case]
            if kind.startswith("arenas_"):
                cmd += ["--child_arenas", kind.split("_")[1]]
            out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"{case} ({kind}) failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if result["tuned"] != (kind != "default"):
                raise RuntimeError(f"{case}: the {kind} process ran with tuned={result['tuned']}")
            runs[kind].append(result)
    summary = {kind: {key: round(statistics.median(r[key] for r in rs), 4)
                      for key in ("seconds", "sys_s", "minor_faults", "peak_rss_MB")}
               for kind, rs in runs.items()}
    tuned = summary["tuned"]["seconds"]
    summary["default_over_tuned"] = round(summary["default"]["seconds"] / tuned, 3)
    for n in arenas:
        summary[f"arenas_{n}_over_tuned"] = round(summary[f"arenas_{n}"]["seconds"] / tuned, 3)
    return summary


def main() -> None:
    from teco.host_memory import ARENAS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arenas", type=int, nargs="*", default=[],
                        help="also run teco's settings with each of these malloc arena counts "
                             f"(teco's own: {ARENAS})")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--child_arenas", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.child_arenas)))
        return
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if any(n < 1 for n in args.arenas) or ARENAS in args.arenas:
        parser.error(f"--arenas: counts of at least 1, other than teco's own ({ARENAS}), "
                     f"got {args.arenas}")
    import platform

    results = {case: measure(case, args.rounds, args.arenas) for case in args.cases}
    print(json.dumps({"benchmark": "host_malloc", "cpu_count": os.cpu_count(),
                      "machine": platform.machine(), "rounds": args.rounds,
                      "teco_arenas": ARENAS,
                      "cases": results}, indent=1))


if __name__ == "__main__":
    main()
