"""Imagine videos with a trained TECO: `python -m teco.sample --workdir=DIR`.

    python -m teco.sample --workdir=workdirs/memory_maze/teco --num_videos=8 --n_new=100
    python -m teco.sample --workdir=OUT/converted --context_npz=ctx.npz --n_new=8

Reads held-out clips of the run's data split (or `--context_npz` with `codes` [B, C, h, w] and
`actions` [B, C + n_new]), conditions on the first `n_context` frames and their actions, and
writes to `--out` (default `<workdir>/samples`):
    samples.npz   video (uint8 [N, T, H, W, 3]), real, codes (int16), actions, n_context
    videos/       grid.mp4 + grid.gif (real | generated per row, context frames outlined green,
                  imagined frames red) and one mp4 per video
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="teco.train TECO workdir or teco.convert output")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None)
    p.add_argument("--split", default=None, help="data split (default: the config's eval split)")
    p.add_argument("--data_dir", default=None, help="override the run's config.data.data_dir")
    p.add_argument("--context_npz", default=None, help="codes + actions to condition on instead of data")
    p.add_argument("--num_videos", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--n_context", type=int, default=None, help="default: config.open_loop_ctx")
    p.add_argument("--n_new", type=int, default=None, help="default: seq_len - n_context")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=["draft_revise", "confidence"], default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--guidance_scale", type=float, default=None)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--upscale", type=int, default=2, help="enlarge frames in the videos")
    return p.parse_args(argv)


def sampler_spec(config, args):
    from teco.rollout import SamplerSpec

    spec = SamplerSpec.from_config(config)
    changes = {k: getattr(args, k) for k in ("sampler", "temperature", "top_k", "guidance_scale")
               if getattr(args, k) is not None}
    return spec.__class__(**{**spec.__dict__, **changes})


def context_batches(stage, args, n_context: int, n_new: int):
    """Yields (real uint8 frames or None, codes [B, T, h, w], actions [B, T]) per batch."""
    from teco import data, generate, sharding

    if args.context_npz:
        with np.load(args.context_npz, allow_pickle=False) as f:
            codes, actions = f["codes"][:, :n_context], f["actions"]
        if actions.shape[1] != n_context + n_new:
            raise ValueError(f"{args.context_npz}: actions cover {actions.shape[1]} frames, "
                             f"need n_context + n_new = {n_context + n_new}")
        for i in range(0, min(len(codes), args.num_videos), args.batch_size):
            yield None, codes[i:i + args.batch_size], actions[i:i + args.batch_size]
        return
    config = stage.config.copy_and_resolve_references()
    config.unlock()
    config.seq_len, config.batch_size = n_context + n_new, args.batch_size
    if args.data_dir:
        config.data.data_dir = args.data_dir
    import jax

    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
    it = data.make_iterator(config, mesh, split=args.split or config.data.eval_split,
                            train=False, num_epochs=1)
    for _, batch in zip(range(-(-args.num_videos // args.batch_size)), it):
        actions = np.asarray(batch["actions"])
        if "codes" in batch:
            yield None, np.asarray(batch["codes"]), actions
        else:
            real = np.asarray(batch["video"])
            yield ((real + 1) * 127.5).round().astype(np.uint8), \
                generate.encode_frames(stage.vqgan, real), actions


def main(argv=None) -> int:
    args = parse(argv)
    import jax
    from tqdm import tqdm

    from teco import generate, videos

    try:
        stage = generate.load_stage2(args.workdir, step=args.step)
        config = stage.config
        n_context = args.n_context or int(config.open_loop_ctx)
        n_new = args.n_new or int(config.seq_len) - n_context
        if n_context < int(config.n_cond) or n_new < 1:
            raise ValueError(f"need n_context >= n_cond={config.n_cond} and n_new >= 1, got "
                             f"{n_context} and {n_new}")
        spec = sampler_spec(config, args)
        out = Path(args.out or Path(args.workdir) / "samples")
        results = {"real": [], "codes": [], "actions": [], "true": []}
        key = jax.random.key(args.seed)
        bar = tqdm(total=args.num_videos, desc=f"sampling {n_new} frames after {n_context}",
                   unit="video")
        start = time.time()
        for i, (real, codes, actions) in enumerate(context_batches(stage, args, n_context, n_new)):
            codes_out = np.asarray(generate.generate(stage, codes[:, :n_context], actions,
                                                     jax.random.fold_in(key, i), n_new=n_new,
                                                     spec=spec))  # blocks: the bar is honest
            results["codes"].append(codes_out)
            results["actions"].append(actions)
            results["real"].append(real)
            results["true"].append(codes)
            bar.update(len(codes_out))
        bar.close()
        if not results["codes"]:
            raise ValueError("no videos to condition on (empty split or context file)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    codes = np.concatenate(results["codes"])[:args.num_videos]
    actions = np.concatenate(results["actions"])[:args.num_videos]
    if stage.vqgan is not None:
        video = generate.decode_codes(stage.vqgan, codes)
        if results["real"][0] is not None:
            real = np.concatenate(results["real"])[:args.num_videos]
        else:  # data given as codes: the real row is the VQ-GAN's reconstruction of them
            true = np.concatenate(results["true"])[:args.num_videos]
            real = _pad_future(generate.decode_codes(stage.vqgan, true), video.shape[1])
    else:  # an authors' model without its VQ-GAN: false-colour codes
        video = generate.codes_to_rgb(stage.table, codes)
        real = _pad_future(video[:, :n_context], video.shape[1])
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "samples.npz", video=video, real=real, codes=codes.astype(np.int16),
                        actions=actions, n_context=n_context, step=stage.step)
    grid = videos.upscale(videos.side_by_side(real, video, n_context), args.upscale)
    videos.write_video(out / "videos" / "grid.mp4", grid, args.fps)
    videos.write_video(out / "videos" / "grid.gif", grid[::2], max(1, args.fps // 2))
    for i in range(len(video)):
        one = videos.upscale(videos.side_by_side(real[i:i + 1], video[i:i + 1], n_context),
                             args.upscale)
        videos.write_video(out / "videos" / f"video_{i:03d}.mp4", one, args.fps)
    print(f"{len(video)} videos of {video.shape[1]} frames ({n_context} context) from step "
          f"{stage.step} in {time.time() - start:.0f}s -> {out}")
    return 0


def _pad_future(frames_BTHWC, total: int):
    """Frames with no ground truth (beyond a given context) are shown white."""
    missing = total - frames_BTHWC.shape[1]
    if missing <= 0:
        return frames_BTHWC
    pad = np.full(frames_BTHWC.shape[:1] + (missing,) + frames_BTHWC.shape[2:], 255, np.uint8)
    return np.concatenate([frames_BTHWC, pad], axis=1)


if __name__ == "__main__":
    sys.exit(main())
