"""Score a trained TECO under the paper's protocols: `python -m teco.eval --workdir=DIR`.

    python -m teco.eval --workdir=workdirs/memory_maze/teco --protocol=frames_144_156 --num_videos=16
    python -m teco.eval --workdir=workdirs/dmlab/teco --protocol=fvd_36_300 --num_videos=1024

Protocols (TECO paper, "Data and evaluation protocol"):
    frames_144_156       144 context frames (+ actions) -> 156 predicted; PSNR, SSIM, LPIPS
    fvd_36_300           36 context frames -> 300-frame videos; FVD (add --no_actions for the
                         action-free variant)
    kinetics_fvd_20_100  20 context frames -> 100-frame videos; FVD
    custom               --context and --predict as given; PSNR, SSIM, LPIPS and FVD
    teacher_forced       the training losses on held-out clips of seq_len frames (prior loss,
                         decoder and prior accuracy), with the true actions or --no_actions
Scores compare against the real frames (`--reference=real`, the default) or against the VQ-GAN's
reconstructions of them (`--reference=reconstruction`, the tokenizer's ceiling removed).
FVD is reported as the authors do (mean +- std over chunks of 256 videos) and pooled over all.

Writes to `--out` (default `<workdir>/eval/<protocol>`): metrics.json (every number, the protocol,
the number of videos, the checkpoint step), curves.json + curves.png (per-frame PSNR/SSIM/LPIPS,
and the same for the last context frame repeated: the floor a model of the dynamics beats),
fvd.png (FVD per window of frames) and videos/ (real | generated grids of the first videos).

Place memory: on data sets that store the agent's pose (memory_maze), metrics.json["revisits"]
scores the predicted frames that come back to a place a context frame showed (after the view
had left it) against the other predicted frames at the same horizon, and revisits.png shows
them (seen in the context | real | generated); see teco/metrics/revisit.py. `--memory_check=K`
adds the same frames imagined from the last K context frames and the real frames' teacher-forced
NLL with the whole and the last-K context (teco/likelihood.py), compared on revisits and on
frames that revisit nothing (metrics.json["revisits"]["memory_check"], memory.png).

World identity: with clips from two or more episodes, metrics.json["world_identity"] and
identity.png tell per window of 16 predicted frames how often the generated frames' colours
name their own episode among all clips' contexts, against the real frames and chance
(teco/metrics/identity.py): does the rollout stay in its maze to the end? Each window's
"motion" (mean change of a pixel between consecutive frames) tells a kept maze from a rollout
frozen on one of its walls.

Actions: for a model that reads actions, metrics.json["action_use"] is the real predicted
frames' teacher-forced NLL per token with each clip's actions shuffled in time minus with the
true actions (teco/likelihood.py action_gain), with a bootstrap interval over the episodes:
about 0 means the model ignores its actions and its rollouts cannot turn where the agent
turned. The teacher_forced protocol reports the same comparison of its losses as "action_gain".

Recall: for a model with `recall` on data with poses, metrics.json["recall_look"] tells how
often the frame its match scores highest, among those more than 4 back it may recall, shows the
same view as the real frame (the clips' actions and poses), against a random pick and the share
of frames that have such a view in reach (teco/metrics/revisit.py recall_picks).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from flax import nnx

from teco.checkpoint import replace_text
from teco.metrics.identity import WorldIdentity
from teco.metrics.place_memory import PlaceMemory
from teco.metrics.revisit import RecallLook, finite_mean
from teco.tasks.base import TrainState

PROTOCOLS = {
    "frames_144_156": dict(context=144, predict=156, metrics=("psnr", "ssim", "lpips")),
    "fvd_36_300": dict(context=36, predict=264, metrics=("fvd",)),
    "kinetics_fvd_20_100": dict(context=20, predict=80, metrics=("fvd",)),
    "custom": dict(context=None, predict=None, metrics=("psnr", "ssim", "lpips", "fvd")),
    "teacher_forced": dict(context=None, predict=None, metrics=()),
}
POSE_KEYS = ("agent_pos", "agent_dir")  # stored by memory_maze; they locate revisits


def parse(argv):
    from teco.sample import add_sampler_flags, at_least

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="frames_144_156")
    p.add_argument("--context", type=at_least(1), default=None,
                   help="override the protocol's context")
    p.add_argument("--predict", type=at_least(1), default=None,
                   help="override the predicted frames")
    p.add_argument("--num_videos", type=at_least(1), default=16)
    p.add_argument("--clips_per_episode", type=at_least(1), default=1, metavar="K",
                   help="cut K clips of context + predict frames one after another from each "
                   "held-out episode (more videos from few episodes; intervals then resample "
                   "whole episodes)")
    p.add_argument("--batch_size", type=at_least(1), default=4)
    p.add_argument("--reference", choices=["real", "reconstruction"], default="real")
    p.add_argument("--no_actions", action="store_true", help="condition on no actions at all")
    p.add_argument("--split", default=None)
    p.add_argument("--data_dir", default=None, help="pixel data set directory (default: the "
                   "VQ-GAN run's config.data.data_dir)")
    p.add_argument("--step", type=at_least(0), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fvd_chunk", type=at_least(1), default=256)
    p.add_argument("--fvd_window", type=at_least(0), default=16,
                   help="also FVD of consecutive windows of this many frames, plotted over time "
                   "in fvd.png (0: off)")
    p.add_argument("--num_saved_videos", type=at_least(0), default=4,
                   help="batches written as videos/batch_NN.mp4 (real | generated)")
    p.add_argument("--samples_out", default=None, metavar="DIR",
                   help="also write the first --num_samples rollouts as teco.sample writes its "
                   "own (samples.npz, videos/) to DIR, without imagining them again")
    p.add_argument("--num_samples", type=at_least(1), default=4)
    p.add_argument("--memory_check", type=at_least(0), default=0, metavar="K",
                   help="on data with poses, also imagine the same frames from only the last K "
                   "context frames and compare the two on revisits of places that only the full "
                   "context showed (0: off)")
    p.add_argument("--out", default=None)
    add_sampler_flags(p)
    return p.parse_args(argv)


def pixel_iterator(stage, args, total: int):
    """Held-out clips of `total` real frames from the pixel data set (uint8 on the host), with
    the index of the episode each came from: `--clips_per_episode` K cuts each episode's first
    K * total frames into K clips."""
    import jax

    from teco import data, sharding

    base = stage.config if stage.config.data.source != "codes" else stage.vq_config
    config = base.copy_and_resolve_references()
    config.unlock()
    clips = args.clips_per_episode
    config.seq_len, config.batch_size = total * clips, args.batch_size
    config.data.image_size = stage.vq_config.image_size
    if args.data_dir:
        config.data.data_dir = args.data_dir
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
    it = data.make_iterator(config, mesh, split=args.split or config.data.eval_split,
                            train=False, num_epochs=1, extras=POSE_KEYS)
    episodes = 0
    for batch in it:
        real = np.round((np.asarray(batch["video"]) + 1) * 127.5).astype(np.uint8)
        actions = np.asarray(batch["actions"])
        poses = (tuple(np.asarray(batch[k]) for k in POSE_KEYS)
                 if all(k in batch for k in POSE_KEYS) else None)
        ids = episodes + np.arange(len(real))
        episodes += len(real)
        for j in range(clips):
            t = slice(j * total, (j + 1) * total)
            yield (real[:, t], actions[:, t],
                   None if poses is None else tuple(x[:, t] for x in poses), ids)


def _clip_length_error(e, seq_len: int, what: str):
    """The data pipeline names seq_len; evaluation users set the length by protocol/flags."""
    from teco.video_io import DataError

    return DataError(str(e).replace(f"shorter than seq_len={seq_len}", f"shorter than {what}"))


def teacher_forced(args) -> dict:
    """Mean teacher-forced metrics of the run's own data over `num_videos` held-out clips."""
    import jax

    from teco import data, generate, likelihood, sharding
    from teco.sample import no_clips_error
    from teco.tasks.teco import TecoTask
    from teco.video_io import DataError

    stage = generate.load_stage2(args.workdir, step=args.step)
    config = stage.config.copy_and_resolve_references()
    config.unlock()
    config.batch_size = args.batch_size
    if args.data_dir:
        config.data.data_dir = args.data_dir
    if stage.vqgan is None:
        raise ValueError("teacher_forced evaluation needs the run's VQ-GAN; this model has none")
    if config.data.source == "codes":
        generate.check_code_set(stage, config.data.data_dir)
    task = TecoTask(config, vqgan=stage.vqgan, vq_config=stage.vq_config)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
    it = data.make_iterator(config, mesh, split=args.split or config.data.eval_split, train=False,
                            num_epochs=1)
    _, params = nnx.split(stage.model)
    state = TrainState(step=stage.step, params=params, opt_state=None, rng=None)
    step = jax.jit(task.eval_step)
    consts = task.constants()
    outputs, shuffled = [], []   # `shuffled`: the same clips, actions out of order
    try:
        for batch in it:
            if len(outputs) * args.batch_size >= args.num_videos:
                break
            if args.no_actions:
                batch = dict(batch, actions=jax.numpy.full_like(batch["actions"], -1))
            outputs.append(jax.device_get(step(state, batch, consts)))
            if not args.no_actions:
                wrong = likelihood.shuffled_actions(jax.device_get(batch["actions"]))
                shuffled.append(jax.device_get(step(state, dict(batch, actions=wrong), consts)))
    except DataError as e:
        raise _clip_length_error(e, int(config.seq_len),
                                 f"the run's seq_len={config.seq_len} (teacher_forced)") from None
    if not outputs:
        raise no_clips_error(config.data, args, int(config.seq_len))
    summary = task.eval_summary(outputs)
    return {"protocol": "teacher_forced", "num_videos": len(outputs) * args.batch_size,
            "seq_len": int(config.seq_len), "checkpoint_step": stage.step,
            "checkpoint": stage.source,
            "actions": "none (no-action token)" if args.no_actions else "given",
            **summary, **_action_use(summary, task.eval_summary(shuffled))}


def _action_use(given: dict, shuffled: dict) -> dict:
    """How much the true actions lower the held-out losses against the same actions shuffled in
    time: ~0 for a model that ignores them (its rollouts cannot follow where the agent goes)."""
    if not shuffled:
        return {}
    keys = ("loss", "trans_loss", "recon_loss")
    return {"actions_shuffled": {k: shuffled[k] for k in keys},
            "action_gain": {k: shuffled[k] - given[k] for k in keys}}


def run(args) -> dict:
    import jax
    from tqdm import tqdm

    from teco import generate, likelihood, videos
    from teco.metrics import I3D, LPIPS, frame_metrics, fvd_chunked, fvd_from_features
    from teco.sample import check_out_dir, no_clips_error, sampler_spec
    from teco.video_io import DataError

    out = Path(args.out or Path(args.workdir) / "eval" / args.protocol)
    check_out_dir(out)
    if args.samples_out:
        check_out_dir(Path(args.samples_out), "--samples_out")
    if args.protocol == "teacher_forced":
        result = teacher_forced(args)
        out.mkdir(parents=True, exist_ok=True)
        name = "metrics_no_actions.json" if args.no_actions else "metrics.json"
        replace_text(out / name, json_text(result))
        return result
    proto = dict(PROTOCOLS[args.protocol])
    context = proto["context"] if args.context is None else args.context
    predict = proto["predict"] if args.predict is None else args.predict
    if not context or not predict:
        raise ValueError(f"protocol {args.protocol} needs --context and --predict")
    total = context + predict
    from teco.metrics import MIN_FRAMES

    if "fvd" in proto["metrics"] and total < MIN_FRAMES:
        if args.protocol != "custom":
            raise ValueError(f"FVD needs videos of at least {MIN_FRAMES} frames, got {total}")
        proto["metrics"] = tuple(m for m in proto["metrics"] if m != "fvd")
    stage = generate.load_stage2(args.workdir, step=args.step)
    if stage.vqgan is None:
        raise ValueError("evaluation decodes frames with the run's VQ-GAN; this model has none")
    if context < int(stage.config.n_cond):
        raise ValueError(f"--context={context} is fewer than the model's n_cond="
                         f"{stage.config.n_cond} conditioning frames")
    if args.memory_check and not int(stage.config.n_cond) <= args.memory_check < context:
        raise ValueError(f"--memory_check={args.memory_check} must be at least the model's "
                         f"n_cond={stage.config.n_cond} and fewer than --context={context}")
    spec = sampler_spec(stage.config, args)
    want = set(proto["metrics"])
    lpips = LPIPS() if "lpips" in want and stage.vq_config.image_size >= 32 else None
    key = jax.random.key(args.seed)
    per_frame = {k: [] for k in ("psnr", "ssim", "lpips") if k in want}
    # The last context frame held still: a model that learnt the dynamics beats it.
    repeat_last = {k: [] for k in per_frame}
    reals, fakes, saved = [], [], []
    samples = {"codes": [], "actions": [], "real": [], "video": []}  # for --samples_out
    memory = PlaceMemory(context, short_context=args.memory_check,
                         window=int(stage.model.seq_len))
    world = WorldIdentity(context)
    look = RecallLook(stage.model.recall_reach) if stage.model.recall else None
    follows = (likelihood.ActionUse()
               if stage.config.get("use_actions", True) and not args.no_actions else None)
    bar = tqdm(total=args.num_videos, desc=f"{args.protocol}: {predict} frames after {context}",
               unit="video")
    start = time.time()
    batches = pixel_iterator(stage, args, total)
    for i in range(-(-args.num_videos // args.batch_size)):
        try:
            real, actions, poses, episode_ids = next(batches)
        except StopIteration:
            break
        except DataError as e:
            bar.close()
            clips = args.clips_per_episode
            raise _clip_length_error(
                e, total * clips, f"--context + --predict = {context} + {predict} (protocol "
                f"{args.protocol})" + (f" times --clips_per_episode={clips}" if clips > 1
                                       else "")) from None
        codes = generate.encode_frames(stage.vqgan, real)
        if args.no_actions:
            actions = np.full_like(actions, -1)
        new_codes = np.asarray(generate.generate(stage, codes[:, :context], actions,
                                                 jax.random.fold_in(key, i), n_new=predict,
                                                 spec=spec))
        fake = generate.decode_codes(stage.vqgan, new_codes)
        ref = real if args.reference == "real" else generate.decode_codes(stage.vqgan, codes)
        scores = {}
        if per_frame:
            which = tuple(k for k in per_frame if k != "lpips" or lpips is not None)
            scores = frame_metrics(ref[:, context:], fake[:, context:], lpips=lpips, which=which)
            for k, v in scores.items():
                per_frame[k].append(np.asarray(v))
            still = np.repeat(ref[:, context - 1:context], predict, axis=1)
            for k, v in frame_metrics(ref[:, context:], still, lpips=lpips,
                                      which=which).items():
                repeat_last[k].append(np.asarray(v))
        short = None
        if poses is not None:
            nll = None
            if args.memory_check:  # the same frames imagined without the early context
                k = args.memory_check
                short_codes = np.asarray(generate.generate(
                    stage, codes[:, context - k:context], actions[:, context - k:],
                    jax.random.fold_in(key, i), n_new=predict, spec=spec))
                short = generate.decode_codes(stage.vqgan, short_codes[:, k:])
                nll = likelihood.context_nll(stage.model, stage.table, codes, actions,
                                             context, k)
            memory.add(ref, fake, poses, scores, short_fake=short, lpips=lpips,
                       episodes=episode_ids, nll=nll)
            if look is not None:
                look.add(*poses, stage.model.recall_match.clip_logits(actions), episode_ids)
        world.add(ref, fake, episode_ids, short_fake_BPHWC=short)
        if follows is not None:
            follows.add(likelihood.action_gain(stage.model, stage.table, codes, actions, context),
                        episode_ids)
        if "fvd" in want:
            reals.append(ref)
            fakes.append(fake)
        if len(saved) < args.num_saved_videos:
            saved.append((ref, fake))
        if args.samples_out and sum(map(len, samples["codes"])) < args.num_samples:
            for k, v in zip(samples, (new_codes, actions, ref, fake)):
                samples[k].append(v)
        bar.update(len(real))
    bar.close()
    n = sum(len(v) for v in (per_frame.get("psnr") or reals))
    if n == 0:
        pixels = stage.config if stage.config.data.source != "codes" else stage.vq_config
        raise no_clips_error(pixels.data, args, total)
    result = {"protocol": args.protocol, "context_frames": context, "predicted_frames": predict,
              "num_videos": int(n), "clips_per_episode": args.clips_per_episode,
              "checkpoint_step": stage.step, "checkpoint": stage.source,
              "reference": ("real frames" if args.reference == "real"
                            else "VQ-GAN reconstructions of the real frames"),
              "actions": "none (no-action token)" if args.no_actions else "given",
              "sampler": spec.__dict__, "seconds": round(time.time() - start, 1)}
    curves, baseline = {}, {}
    for k, parts in per_frame.items():
        if not parts:
            result[k] = None
            result[f"{k}_note"] = "frames smaller than LPIPS' AlexNet input (32 px)"
            continue
        result[k], curves[k] = _mean_and_curve(parts, n)
        result.setdefault("repeat_last", {"note": "the same scores for the last context frame "
                                                  "repeated in place of the predicted frames"})
        result["repeat_last"][k], baseline[k] = _mean_and_curve(repeat_last[k], n)
    if "fvd" in want:
        i3d = I3D(batch_size=min(4, n))
        fr = i3d.features(np.concatenate(reals)[:n])
        ff = i3d.features(np.concatenate(fakes)[:n])
        chunk = min(args.fvd_chunk, n)
        mean, std, per_chunk = fvd_chunked(fr, ff, chunk=chunk)
        result["fvd"] = {"authors": {"mean": mean, "std": std, "chunk": chunk,
                                     "per_chunk": per_chunk},
                         "pooled": fvd_from_features(fr, ff), "frames": total,
                         "note": "I3D (Kinetics-400) logits of the whole videos, context included"}
        if args.fvd_window:
            result["fvd_windows"] = fvd_over_time(i3d, np.concatenate(reals)[:n],
                                                  np.concatenate(fakes)[:n], args.fvd_window,
                                                  context=context)
    if memory.videos:
        result["revisits"] = memory.summary(n)
    identity = world.summary(n)
    if identity:
        result["world_identity"] = identity
    recall_look = look.summary(n) if look is not None else None
    if recall_look:
        result["recall_look"] = recall_look
    use = follows.summary(n) if follows is not None else None
    if use:
        result["action_use"] = use
    out.mkdir(parents=True, exist_ok=True)
    if memory.videos:
        memory.picture(out / "revisits.png",
                       title=f"{args.protocol}, {n} videos, step {stage.step}")
        check = result["revisits"].get("memory_check")
        if check:
            videos.plot_memory(out / "memory.png", check,
                               title=f"{args.protocol}, {n} videos, step {stage.step}")
    if identity:
        videos.plot_identity(out / "identity.png", identity,
                             title=f"{args.protocol}, {n} videos, step {stage.step}")
    replace_text(out / "metrics.json", json_text(result))
    if curves:
        replace_text(out / "curves.json", json_text({"context_frames": context, **curves,
                                                     "repeat_last": baseline}, indent=None))
        videos.plot_curves(out / "curves.png", curves, context, baseline=baseline,
                           title=f"{args.protocol}, {n} videos, step {stage.step}")
    if result.get("fvd_windows"):
        w = result["fvd_windows"]
        videos.plot_fvd(out / "fvd.png", w["start"], w["fvd"], w["window"], context,
                         title=f"{args.protocol}, {n} videos, step {stage.step}")
    for j, (ref, fake) in enumerate(saved):
        videos.write_video(out / "videos" / f"batch_{j:02d}.mp4",
                           videos.comparison(ref, fake, context))
    if samples["codes"]:
        from teco.sample import write_samples

        k = args.num_samples
        write_samples(Path(args.samples_out), n_context=context, step=stage.step,
                      **{name: np.concatenate(parts)[:k] for name, parts in samples.items()})
    return result


def json_text(obj, indent: int | None = 1) -> str:
    """Standard JSON, which has no NaN or Infinity: a non-finite number is written as null
    (read by jq, JavaScript and pandas alike)."""
    def clean(x):
        if isinstance(x, float):
            return x if np.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def _mean_and_curve(parts: list, n: int) -> tuple[float | None, list]:
    """The mean over the first n videos' finite per-frame scores, and the mean per frame; None
    where no video's score is finite (a frame every video repeats exactly has PSNR inf), so the
    JSON files stay standard JSON (no NaN)."""
    values = np.concatenate(parts)[:n]                     # [N, predict]
    return finite_mean(values), [finite_mean(column) for column in values.T]


def fvd_over_time(i3d, real_NTHWC, fake_NTHWC, window: int,
                  context: int | None = None) -> dict | None:
    """FVD of each run of `window` consecutive frames (pooled over the videos): how far the
    generated frames drift from real ones as the rollout goes on. With `context`, the windows
    start where the context ends (one more just before it, where the generated videos are the
    context's VQ-GAN reconstructions: the floor the rollouts start from); without, at frame 0.
    None if that gives fewer than two windows or the window is shorter than I3D needs."""
    from teco.metrics import MIN_FRAMES, fvd_from_features

    t = real_NTHWC.shape[1]
    first = 0 if context is None else context % window
    starts = list(range(first, t - window + 1, window))
    if context is not None:
        starts = [s for s in starts if s >= context - window]
    if window < MIN_FRAMES or len(starts) < 2:
        return None
    values = [fvd_from_features(i3d.features(real_NTHWC[:, s:s + window]),
                                i3d.features(fake_NTHWC[:, s:s + window])) for s in starts]
    return {"window": window, "start": starts, "fvd": values,
            "note": "pooled FVD of frames [start, start + window) of every video; windows "
                    "before the context's end compare the context's VQ-GAN reconstructions"}


def main(argv=None) -> int:
    args = parse(argv)
    try:
        result = run(args)
    except (ValueError, OSError) as e:  # bad input or an unwritable --out: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in result.items()
             if k in ("psnr", "ssim", "lpips", "fvd", "trans_loss", "prior_acc", "recon_acc",
                      "action_gain")}
    print(json.dumps({"num_videos": result["num_videos"], **shown}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
