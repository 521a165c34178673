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


def at_least(minimum: int):
    """argparse type: an integer >= `minimum`; a bad value is one usage error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="teco.train TECO workdir or teco.convert output")
    p.add_argument("--step", type=at_least(0), default=None,
                   help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None)
    p.add_argument("--split", default=None, help="data split (default: the config's eval split)")
    p.add_argument("--data_dir", default=None, help="override the run's config.data.data_dir")
    p.add_argument("--context_npz", default=None, help="codes + actions to condition on instead of data")
    p.add_argument("--num_videos", type=at_least(1), default=4)
    p.add_argument("--batch_size", type=at_least(1), default=4)
    p.add_argument("--n_context", type=at_least(1), default=None,
                   help="default: config.open_loop_ctx")
    p.add_argument("--n_new", type=at_least(1), default=None, help="default: eval_seq_len - n_context")
    p.add_argument("--seed", type=int, default=0)
    add_sampler_flags(p)
    p.add_argument("--fps", type=at_least(1), default=8)
    p.add_argument("--upscale", type=at_least(1), default=2, help="enlarge frames in the videos")
    return p.parse_args(argv)


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """MaskGit decoding options; each defaults to the run's config key of the same name."""
    p.add_argument("--sampler", choices=["draft_revise", "confidence"], default=None)
    p.add_argument("--temperature", type=non_negative_float, default=None,
                   help="0: every token its most likely code (argmax)")
    p.add_argument("--top_k", type=at_least(0), default=None, help="0: no top-k filtering")
    p.add_argument("--guidance_scale", type=float, default=None,
                   help="1: action-conditioned logits, 0: unconditioned, >1: stronger actions")


def sampler_spec(config, args):
    from teco.rollout import SamplerSpec

    spec = SamplerSpec.from_config(config)
    changes = {k: getattr(args, k) for k in ("sampler", "temperature", "top_k", "guidance_scale")
               if getattr(args, k) is not None}
    spec = spec.__class__(**{**spec.__dict__, **changes})
    if ((spec.guided or getattr(args, "no_actions", False)) and config.get("use_actions", True)
            and not config.get("dropout_actions", True)):
        print("warning: this model was trained with dropout_actions=False, so it never learnt "
              "the no-action token that --guidance_scale and --no_actions use; expect "
              "meaningless frames", file=sys.stderr)
    return spec


def context_batches(stage, args, n_context: int, n_new: int):
    """Yields (real uint8 frames or None, codes [B, T, h, w], actions [B, T]) per batch."""
    from teco import data, generate, sharding

    if args.context_npz:
        codes, actions = load_context(args.context_npz, stage, n_context, n_new)
        for i in range(0, min(len(codes), args.num_videos), args.batch_size):
            yield None, codes[i:i + args.batch_size], actions[i:i + args.batch_size]
        return
    config = stage.config.copy_and_resolve_references()
    config.unlock()
    config.seq_len, config.batch_size = n_context + n_new, args.batch_size
    if args.data_dir:
        config.data.data_dir = args.data_dir
    if config.data.source == "codes":
        generate.check_code_set(stage, config.data.data_dir)
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


def load_context(path: str, stage, n_context: int, n_new: int):
    """codes int32 [B, n_context, h, w] and actions int32 [B, n_context + n_new] from
    --context_npz, checked against the model; never unpickled."""
    from teco import generate
    from teco.video_io import load_npz

    arrays = load_npz(path)
    missing = [k for k in ("codes", "actions") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(map(repr, missing))} array (it holds "
                         f"{sorted(arrays)}); --context_npz needs codes [B, C, h, w] and actions "
                         "[B, n_context + n_new]")
    codes, actions = arrays["codes"], arrays["actions"]
    generate.check_codes(stage, codes, where=f"{path} 'codes'")
    if codes.shape[1] < n_context:
        raise ValueError(f"{path}: 'codes' hold {codes.shape[1]} frames, fewer than "
                         f"--n_context={n_context}")
    generate.check_actions(stage, actions, frames=n_context + n_new,
                           where=f"{path} 'actions' (n_context + n_new = {n_context} + {n_new})")
    if len(actions) != len(codes):
        raise ValueError(f"{path}: {len(codes)} videos of codes but {len(actions)} of actions")
    return codes[:, :n_context].astype(np.int32), actions.astype(np.int32)


def no_clips_error(data_config, args, frames: int) -> ValueError:
    """The evaluation iterators drop a partial batch: too few videos give no batch at all."""
    where = f"{args.data_dir or data_config.data_dir}/{args.split or data_config.eval_split}"
    return ValueError(f"{where} holds fewer than --batch_size={args.batch_size} videos of at "
                      f"least {frames} frames: nothing to read (a partial batch is not used)")


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """Before any slow work: an output path that cannot be a directory fails at once."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a directory")


def main(argv=None) -> int:
    args = parse(argv)
    import jax
    from tqdm import tqdm

    from teco import generate
    from teco.video_io import DataError

    try:
        out = Path(args.out or Path(args.workdir) / "samples")
        check_out_dir(out)
        stage = generate.load_stage2(args.workdir, step=args.step)
        config = stage.config
        n_context = int(config.open_loop_ctx) if args.n_context is None else args.n_context
        if n_context < int(config.n_cond):
            raise ValueError(f"--n_context={n_context} is fewer than the model's "
                             f"n_cond={config.n_cond} conditioning frames")
        # The authors' sampler makes videos of eval_seq_len frames (context included).
        length = int(config.get("eval_seq_len", config.seq_len))
        n_new = length - n_context if args.n_new is None else args.n_new
        if n_new < 1:
            raise ValueError(f"--n_context={n_context} leaves no frame to predict within the "
                             f"run's eval_seq_len={length}: pass --n_new")
        spec = sampler_spec(config, args)
        results = {"real": [], "codes": [], "actions": [], "true": []}
        key = jax.random.key(args.seed)
        bar = tqdm(total=args.num_videos, desc=f"sampling {n_new} frames after {n_context}",
                   unit="video")
        start = time.time()
        try:
            for i, (real, codes, actions) in enumerate(
                    context_batches(stage, args, n_context, n_new)):
                codes_out = np.asarray(generate.generate(
                    stage, codes[:, :n_context], actions, jax.random.fold_in(key, i),
                    n_new=n_new, spec=spec))  # blocks: the bar is honest
                results["codes"].append(codes_out)
                results["actions"].append(actions)
                results["real"].append(real)
                results["true"].append(codes)
                bar.update(len(codes_out))
        except DataError as e:  # the data say seq_len; here the length is the user's flags
            total = n_context + n_new
            raise DataError(str(e).replace(
                f"shorter than seq_len={total}",
                f"shorter than --n_context + --n_new = {n_context} + {n_new}")) from None
        finally:
            bar.close()  # the error, if any, starts on its own line
        if not results["codes"]:
            if args.context_npz:
                raise ValueError(f"--context_npz {args.context_npz} holds no videos")
            raise no_clips_error(config.data, args, n_context + n_new)
        n = args.num_videos
        codes = np.concatenate(results["codes"])[:n]
        if stage.vqgan is not None:
            video = generate.decode_codes(stage.vqgan, codes)
            if results["real"][0] is not None:
                real = np.concatenate(results["real"])[:n]
            else:  # data given as codes: the real row is the VQ-GAN's reconstruction of them
                true = np.concatenate(results["true"])[:n]
                real = _pad_future(generate.decode_codes(stage.vqgan, true), video.shape[1])
        else:  # an authors' model without its VQ-GAN: false-colour codes
            video = generate.codes_to_rgb(stage.table, codes)
            real = _pad_future(video[:, :n_context], video.shape[1])
        write_samples(out, video=video, real=real, codes=codes,
                      actions=np.concatenate(results["actions"])[:n], n_context=n_context,
                      step=stage.step, start=start, upscale=args.upscale, fps=args.fps)
    except (ValueError, OSError) as e:  # bad input or an unwritable --out: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def write_samples(out: Path, *, video, real, codes, actions, n_context: int, step: int,
                  start: float | None = None, upscale: int = 2, fps: int = 8) -> None:
    """samples.npz and videos/ (module docstring) for imagined frames `video` uint8 [N, T, H, W,
    3] shown beside `real` (same shape), from `codes` [N, T, h, w] and `actions` [N, T].
    `start`: when the sampling began (time.time()), for the closing line."""
    from teco import videos

    out.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed: a failed write never leaves a truncated samples.npz behind.
    tmp = out / "samples.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, video=video, real=real, codes=codes.astype(np.int16),
                            actions=actions, n_context=n_context, step=step)
    tmp.replace(out / "samples.npz")
    grid = videos.comparison(real, video, n_context, upscale)
    videos.write_video(out / "videos" / "grid.mp4", grid, fps)
    videos.write_video(out / "videos" / "grid.gif", grid[::2], max(1, fps // 2))
    for i in range(len(video)):
        videos.write_video(out / "videos" / f"video_{i:03d}.mp4",
                           videos.comparison(real[i:i + 1], video[i:i + 1], n_context, upscale),
                           fps)
    took = "" if start is None else f" in {time.time() - start:.0f}s"
    print(f"{len(video)} videos of {video.shape[1]} frames ({n_context} context) from step "
          f"{step}{took} -> {out}")


def _pad_future(frames_BTHWC, total: int):
    """Frames with no ground truth (beyond a given context) are shown white."""
    missing = total - frames_BTHWC.shape[1]
    if missing <= 0:
        return frames_BTHWC
    pad = np.full(frames_BTHWC.shape[:1] + (missing,) + frames_BTHWC.shape[2:], 255, np.uint8)
    return np.concatenate([frames_BTHWC, pad], axis=1)


if __name__ == "__main__":
    sys.exit(main())
