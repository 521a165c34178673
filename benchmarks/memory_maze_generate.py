"""Memory Maze generation speed: frames/s per worker, stock env vs. goal-sphere checks disabled.

    .venv/bin/python benchmarks/memory_maze_generate.py [--length 300] [--seed 0] \
        [--workers 2] [--pool_episodes 4]

1. One spawned worker: builds an env (timed), then renders the same episode twice with the
   stock env and with the per-substep target checks disabled (resets timed apart from the
   steps) and checks the two are identical array for array.
2. `workers` spawned workers (generate.EpisodePool, checks disabled): episodes/s and frames/s
   of the whole pool, resets and env builds included, as the TFDS builder sees them.

Prints one JSON object. Nothing here imports TensorFlow; rendering happens in spawned processes.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import numpy as np

from datasets.memory_maze import generate


def _timed_episode(env, seed: int, length: int) -> tuple[dict, float, float]:
    """Like generate.run_episode, timing the reset and the steps apart."""
    generate.reseed(env, seed)
    policy = generate.ShortestPathPolicy(np.random.default_rng([seed, 1]))
    start = time.perf_counter()
    obs = env.reset().observation
    reset_s = time.perf_counter() - start
    frames, actions = [obs["image"]], [0]
    start = time.perf_counter()
    for _ in range(length - 1):
        actions.append(policy(obs))
        obs = env.step(actions[-1]).observation
        frames.append(obs["image"])
    steps_s = time.perf_counter() - start
    return dict(video=np.stack(frames), actions=np.array(actions)), reset_s, steps_s


def single_worker(seed: int, length: int) -> dict:
    """Runs in a spawned process (it renders)."""
    start = time.perf_counter()
    env = generate.make_env(seed, fast=False)
    build_s = time.perf_counter() - start
    stock, stock_reset_s, stock_steps_s = _timed_episode(env, seed, length)
    generate.set_target_checks(env, enabled=False)
    fast, fast_reset_s, fast_steps_s = _timed_episode(env, seed, length)
    steps = length - 1
    return {
        "env_build_s": round(build_s, 2),
        "reset_s": {"stock": round(stock_reset_s, 2), "checks_disabled": round(fast_reset_s, 2)},
        "step_frames_per_s": {"stock": round(steps / stock_steps_s, 1),
                              "checks_disabled": round(steps / fast_steps_s, 1)},
        # Whole episode including its reset (an env is reused, so the build is paid once).
        "episode_frames_per_s": {
            "stock": round(length / (stock_reset_s + stock_steps_s), 1),
            "checks_disabled": round(length / (fast_reset_s + fast_steps_s), 1)},
        "speedup_steps": round(stock_steps_s / fast_steps_s, 2),
        "identical_frames": bool(np.array_equal(stock["video"], fast["video"])),
        "identical_actions": bool(np.array_equal(stock["actions"], fast["actions"])),
    }


def pool_throughput(workers: int, episodes: int, length: int, seed: int) -> dict:
    seeds = [generate.episode_seed(seed, "bench", i) for i in range(episodes)]
    start = time.perf_counter()
    with generate.EpisodePool(workers) as pool:
        frames = sum(len(ep["video"]) for ep in pool.episodes(seeds, length, desc="bench"))
    seconds = time.perf_counter() - start
    return {"workers": workers, "episodes": episodes, "length": length,
            "seconds": round(seconds, 1), "episodes_per_s": round(episodes / seconds, 3),
            "frames_per_s": round(frames / seconds, 1),
            "frames_per_s_per_worker": round(frames / seconds / workers, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=generate.default_workers())
    p.add_argument("--pool_episodes", type=int, default=4, help="0 skips the pool measurement")
    args = p.parse_args()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        single = pool.apply(single_worker, (args.seed, args.length))
    result = {"frame_size": generate.FRAME_SIZE, "length": args.length,
              "single_worker": single}
    if args.pool_episodes:
        result["pool"] = pool_throughput(args.workers, args.pool_episodes, args.length, args.seed)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
