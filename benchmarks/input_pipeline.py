"""Input-pipeline throughput (frames/s) for 300-frame clips at 64x64 and 128x128.

    python benchmarks/input_pipeline.py [--batches 20] [--workdir /tmp/teco_bench_data]

Reads a built TFDS set (array_record) and the authors' raw .npz layout, each through the full
pipeline (shuffle, crop, batch, placement on the mesh as float32 in [-1, 1]), twice: with
`data.cache_mb=0` (every clip decoded from its file) and with the configs' episode cache after
every episode has been read once (a data set that fits the cache, as the demo's does). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from configs import common
from datasets.synthetic import generate, synthetic_dataset_builder as synth
from teco import data, sharding


def config(source: str, data_dir: str, size: int, name: str, batch: int, seq_len: int,
           cache_mb: int | None = None):
    c = common.base_config("vqgan")
    c.data = common.data_config(name, image_size=size)
    c.data.source, c.data.data_dir = source, data_dir
    if cache_mb is not None:
        c.data.cache_mb = cache_mb
    c.image_size, c.seq_len, c.batch_size = size, seq_len, batch
    return c


def measure(cfg, mesh, batches: int, warmup: int = 1) -> dict:
    it = data.make_iterator(cfg, mesh, split="train", train=True)
    for _ in range(warmup):  # file opening, compilation of the cast (and filling the cache)
        jax.block_until_ready(next(it))
    t = time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(next(it))
    dt = time.perf_counter() - t
    frames = batches * cfg.batch_size * cfg.seq_len
    return {"frames_per_s": round(frames / dt, 1), "batches": batches, "seconds": round(dt, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--workdir", default="/tmp/teco_bench_data")
    args = p.parse_args()
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    results = {"devices": jax.device_count(), "batch_size": args.batch_size, "seq_len": 300}
    for size in (64, 128):
        tfds_dir = f"{args.workdir}/tfds"
        builder = synth.make_builder(tfds_dir, image_size=size, length=300,
                                     episodes_train=args.episodes, episodes_test=1)
        if not Path(builder.data_dir, "dataset_info.json").exists():
            builder.download_and_prepare()
        name = f"synthetic/{builder.builder_config.name}"
        # enough warm-up batches for every episode to be read (and cached) once
        fill = -(-args.episodes // args.batch_size) * 2

        def both(*where) -> dict:
            return {"no_cache": measure(config(*where, args.batch_size, 300, cache_mb=0), mesh,
                                        args.batches),
                    "cached": measure(config(*where, args.batch_size, 300), mesh, args.batches,
                                      warmup=fill)}
        results[f"tfds_{size}"] = both("tfds", tfds_dir, size, name)
        raw = Path(args.workdir) / f"raw{size}"
        if not (raw / "train").exists():
            for i in range(args.episodes):
                ep = generate.episode(i, length=300, image_size=size)
                (raw / "train" / "0").mkdir(parents=True, exist_ok=True)
                np.savez(raw / "train" / "0" / f"{i}.npz", video=ep["video"], actions=ep["actions"])
        results[f"authors_npz_{size}"] = both("authors", str(raw), size, "dmlab")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
