"""Throughput of I3D feature extraction for FVD, measured after compilation; prints JSON.

    .venv/bin/python benchmarks/fvd_features.py --batch-sizes 1,2,4 --frames 16 --size 64 --batches 2

Each batch size gets its own extractor: one warm-up batch (compiles), then `--batches` timed batches
of random uint8 videos. Not a test: timings on shared CPUs drift, compare runs made back to back.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

from teco.metrics import I3D


def measure(batch_size: int, frames: int, size: int, batches: int, seed: int = 0) -> dict:
    videos = np.random.default_rng(seed).integers(
        0, 256, (batch_size * batches, frames, size, size, 3), dtype=np.uint8)
    extractor = I3D(batch_size=batch_size, progress=False)
    start = time.perf_counter()
    extractor.features(videos[:batch_size])  # compile + first batch
    first = time.perf_counter() - start
    start = time.perf_counter()
    feats = extractor.features(videos)  # features() blocks on every batch's result
    seconds = time.perf_counter() - start
    assert feats.shape == (len(videos), 400)
    return {
        "batch_size": batch_size,
        "videos": len(videos),
        "first_batch_with_compile_s": round(first, 3),
        "seconds": round(seconds, 3),
        "videos_per_s": round(len(videos) / seconds, 3),
        "frames_per_s": round(len(videos) * frames / seconds, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,2,4", help="comma-separated batch sizes")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (at least 9)")
    parser.add_argument("--size", type=int, default=64, help="frame height and width before resizing")
    parser.add_argument("--batches", type=int, default=2, help="timed batches per batch size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.batches < 1:
        raise ValueError("--batch-sizes must list positive ints and --batches must be positive")
    results = [measure(bs, args.frames, args.size, args.batches) for bs in sizes]
    print(json.dumps({
        "benchmark": "i3d_fvd_features",
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "cpu": platform.processor() or platform.machine(),
        "frames": args.frames,
        "input_size": args.size,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
