"""The whole pipeline in one command: data -> VQ-GAN -> codes -> TECO -> rollouts -> scores.

    python -m teco.pipeline --workdir=outputs/demo                 # Memory Maze, CPU-sized
    python -m teco.pipeline --workdir=/tmp/p --preset=tiny          # seconds-scale smoke run
    python -m teco.pipeline --workdir=outputs/demo --teco_steps=5000 # train TECO on, re-score
    python -m teco.pipeline --workdir=outputs/demo --clips_per_episode=3 # 3x the eval videos

Every stage writes into `--workdir` and is skipped when a previous run finished it (the data
set is built once, a finished training is not repeated, a stage whose input changed is redone):
    data/            the TFDS data set (or --data_dir)
    vqgan/           stage-1 workdir (checkpoints, TensorBoard logs, config.json)
    codes/           the VQ codes of every episode (stage-2 input)
    teco/            stage-2 workdir
    samples/         samples.npz and videos/ (real | generated, context outlined green)
    filmstrip.png    real above generated frames, from the last context frame to the end
    eval/            metrics.json, curves.json, curves.png, fvd.png, revisits.png, memory.png,
                     identity.png, videos/
    metrics.json     the evaluation's numbers, copied to the top
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from absl import logging

PRESETS = {
    # name: data set build, stage configs and their step counts (None = the config's), rollout
    # and eval sizes, and the minutes each stage took on a 2-core CPU machine (for the ETA).
    # `spins`, not `revisits` (the demo's set until 2026-12-06): the agent turns on the spot and
    # looks again at the walls its context showed, and there the model's last frames keep
    # their maze, on `revisits` they do not (configs/memory_maze.py, recall)
    "demo": dict(data=("memory_maze", "spins"), vqgan="configs/memory_maze_vqgan.py",
                 # 700 VQ-GAN steps: at 500 (8.5 min against 10.3 on a slow machine, held-out
                 # PSNR 31.03 dB against 31.51) TECO's rollouts lost their sampled memory
                 # effect (docs/demo_experiments.md, 2026-12-06)
                 teco="configs/memory_maze.py", vqgan_steps=700, teco_steps=1350,
                 # a held-out evaluation every ~3 minutes is enough to watch a short run
                 vqgan_over=dict(log_eval_interval=350), teco_over=dict(log_eval_interval=450),
                 context=36, predict=64, eval_videos=8, sample_videos=4,
                 # the same frames imagined again from only the last 8 context frames: on
                 # revisits of places seen before them, the difference is the model's memory
                 memory_check=8,
                 # The paper's draft-and-revise (the config's sampler): on the 900-step model of
                 # this data set trained at lr 3e-4, MaskGIT's confidence order (PSNR 12.1, LPIPS
                 # 0.59 on 8 videos, 36 -> 64) and draft-and-revise at temperature 0.5 (PSNR
                 # 10.8) collapse into frames of one wall; draft-and-revise at temperature 1
                 # gives PSNR 16.6, LPIPS 0.43.
                 sampler=(),
                 # the slowest of each stage in the two runs of 2026-12-04 afternoon and evening
                 # (41.5 and 40.1 min; the second with the previous-frame TECO), so the banner
                 # does not promise more than a slow machine keeps; TECO's from the half-width
                 # encoder's 900 steps on 2026-12-05 (12.6 min), times 1,350 / 900; the
                 # evaluation's with the samples it now writes
                 minutes=dict(data=2.6, vqgan=8.1, encode=2.6, teco=18.9, eval=5.4)),
    "tiny": dict(data=("synthetic", None), vqgan="configs/memory_maze_vqgan.py:tiny",
                 teco="configs/memory_maze.py:tiny", vqgan_steps=6, teco_steps=6,
                 vqgan_over={}, teco_over={},
                 context=2, predict=8, eval_videos=2, sample_videos=2, memory_check=0,
                 sampler=(),
                 minutes=dict(data=0.1, vqgan=0.3, encode=0.1, teco=0.4, eval=0.5)),
}
STAGES = ("data", "vqgan", "encode", "teco", "eval")
# videos per rollout batch in the evaluation: a larger one was not faster (README, Performance)
EVAL_BATCH = 2


class StageClock:
    """Prints one banner per stage: what runs, time so far, and the expected time left: the
    preset's reference minutes for the stages still to run (`reused` stages take none), scaled
    by this machine's pace once a stage has run here (its minutes over its reference minutes:
    the first command's unchanged VQ-GAN stage took 7.0 min one afternoon and 10.3 that night
    on 2-core machines). `clock`: seconds now (time.time; tests pass their own)."""

    def __init__(self, minutes: dict[str, float], reused: set[str] = frozenset(),
                 clock=time.time):
        self.minutes = {k: 0.0 if k in reused else v for k, v in minutes.items()}
        self.clock = clock
        self.t0 = clock()
        self._running: tuple[str, float] | None = None  # the stage timed now, and its start
        self._took = {"reference": 0.0, "here": 0.0}    # minutes of the stages timed so far

    def pace(self) -> float | None:
        """This machine's minutes per reference minute over the stages timed so far."""
        if self._took["reference"] <= 0:
            return None
        return self._took["here"] / self._took["reference"]

    def start(self, name: str, title: str, what: str, timed: bool = True) -> None:
        """`timed=False`: the stage resumes work done before (a training continued from its
        checkpoint), so its minutes say nothing about the machine's pace."""
        now = self.clock()
        if self._running:
            done, since = self._running
            self._took["reference"] += self.minutes[done]
            self._took["here"] += (now - since) / 60
        self._running = (name, now) if timed and self.minutes[name] > 0 else None
        i = STAGES.index(name)
        left = sum(self.minutes[s] for s in STAGES[i:])
        pace = self.pace()
        where = "on a 2-core CPU" if pace is None else (
            f"at this machine's pace ({pace:.2f}x the reference 2-core CPU's minutes so far)")
        print(f"\n=== [{i + 1}/{len(STAGES)}] {title}: {what}\n    "
              f"{(now - self.t0) / 60:.1f} min so far, about {max(left * (pace or 1), 1):.0f} "
              f"min left {where}", flush=True)


def _stamp(path: Path, **facts) -> None:
    from teco.checkpoint import replace_text

    replace_text(path, json.dumps(facts, indent=1))


def _stamped(path: Path, **facts) -> bool:
    return path.exists() and json.loads(path.read_text()) == json.loads(json.dumps(facts))


def data_name(preset: dict) -> str:
    """The data-set name the configs read (`name/config`; tiny configs build `synthetic` on
    demand at their frame size)."""
    name, config = preset["data"]
    return "synthetic" if name == "synthetic" else f"{name}/{config}"


def data_ready(preset: dict, data_dir: Path) -> bool:
    from teco.data import find_tfds_dir
    from teco.video_io import DataError

    if preset["data"][0] == "synthetic":
        return True
    try:
        find_tfds_dir(str(data_dir), data_name(preset))
    except DataError:
        return False
    return True


def build_data(preset: dict, data_dir: Path) -> None:
    from datasets import build

    name, config = preset["data"]
    if build.main([name, f"--data_dir={data_dir}", f"--config={config}"]) != 0:
        raise RuntimeError(f"building {data_name(preset)} failed")


def stage_config(path: str, data_name: str, data_dir: Path, steps: int | None, **over):
    from teco.config import load_config

    c = load_config(path)
    c.unlock()
    c.data.name, c.data.data_dir = data_name, str(data_dir)
    if steps is not None:
        c.total_steps = steps
        c.warmup_steps = min(c.warmup_steps, max(1, steps // 10))
        c.save_interval = min(c.save_interval, steps)
        c.log_eval_interval = min(c.log_eval_interval, steps)
        c.viz_interval = min(c.viz_interval, steps)
    for k, v in over.items():
        c[k] = v
    return c


def follow_move(workdir: Path, data_dir: Path) -> Path | None:
    """A workdir moved or copied as a whole (or named by another path) still has its stages
    name the old place: the TECO's config.json names the old codes/ and vqgan/, the codes stamp
    the old vqgan/. When all of them name one old workdir, and the VQ-GAN there was trained on
    its data/ (or on this --data_dir), they are pointed here and the old workdir is returned;
    otherwise nothing changes (a TECO that came alone is then refused as before)."""
    from teco import checkpoint
    from teco.data import CODES_META

    teco_dir, vq_dir = workdir / "teco", workdir / "vqgan"
    stamp_file = workdir / "codes" / "stamp.json"
    if not (stamp_file.is_file() and (teco_dir / checkpoint.CONFIG_FILE).is_file()
            and (vq_dir / checkpoint.CONFIG_FILE).is_file()):
        return None
    try:
        teco_c, vq_c = checkpoint.load_config(teco_dir), checkpoint.load_config(vq_dir)
        stamp = json.loads(stamp_file.read_text())
        old = Path(teco_c.vqvae_ckpt).parent
        if (old == workdir or Path(teco_c.vqvae_ckpt) != old / "vqgan"
                or Path(teco_c.data.data_dir) != old / "codes"
                or Path(stamp["vqgan"]) != old / "vqgan"
                or Path(vq_c.data.data_dir) not in (old / "data", data_dir)):
            return None
    except (ValueError, KeyError, TypeError, AttributeError):  # not this pipeline's files
        return None
    teco_c.vqvae_ckpt = stamp["vqgan"] = str(vq_dir)
    teco_c.data.data_dir = str(workdir / "codes")
    vq_c.data.data_dir = str(data_dir)
    checkpoint.save_config(teco_dir, teco_c)
    checkpoint.save_config(vq_dir, vq_c)
    _stamp(stamp_file, **stamp)
    meta_file = workdir / "codes" / CODES_META  # its paths only inform, but should be true
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("vqgan_workdir") == str(old / "vqgan"):
            meta["vqgan_workdir"] = str(vq_dir)
        if isinstance(meta.get("data"), dict) and meta["data"].get("data_dir") == str(old / "data"):
            meta["data"]["data_dir"] = str(data_dir)
        checkpoint.replace_text(meta_file, json.dumps(meta, indent=1))
    return old


def _checkpoint_steps(workdir: Path) -> list[int]:
    ckpts = workdir / "checkpoints"
    return [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []


def finished(workdir: Path, total: int) -> bool:
    return any(step >= total for step in _checkpoint_steps(workdir))


def batch_divisor(preset: dict) -> int:
    """The largest number every batch of the preset's stages divides by: the CPU devices it may
    be split into (teco/host_devices.py)."""
    from teco.config import load_config

    return math.gcd(load_config(preset["vqgan"]).batch_size,
                    load_config(preset["teco"]).batch_size, EVAL_BATCH)


def refuse_other_data(stage_dirs: list[Path], name: str) -> None:
    """A training stage whose saved config names another data set (a workdir of an earlier
    preset: the demo trained on `memory_maze/revisits` until 2026-12-06) is refused, untouched,
    instead of being reused or resumed on data it was not trained on."""
    from teco import checkpoint

    for stage_dir in stage_dirs:
        if not (stage_dir / checkpoint.CONFIG_FILE).is_file():
            continue
        try:
            trained_on = checkpoint.load_config(stage_dir).data.name
        except (ValueError, KeyError, AttributeError):
            continue  # not this pipeline's file: the stage's own checks speak
        if trained_on != name:
            raise RuntimeError(f"{stage_dir} holds a run on {trained_on}, and this preset trains "
                               f"on {name}: give another --workdir, or move {stage_dir.parent} "
                               "away")


def run(workdir: Path, preset_name: str, data_dir: Path | None,
        teco_steps: int | None = None, clips_per_episode: int = 1) -> dict:
    """teco_steps: TECO's length instead of the preset's; more than a finished run's continues
    it from its last checkpoint under a cosine schedule to the new end. clips_per_episode: the
    evaluation cuts that many clips from each held-out episode (K times the videos and time)."""
    from teco import checkpoint, encode, eval as teco_eval, train

    preset = dict(PRESETS[preset_name])
    if teco_steps is not None:
        minutes = dict(preset["minutes"])
        minutes["teco"] *= teco_steps / preset["teco_steps"]
        preset.update(teco_steps=teco_steps, minutes=minutes)
    if clips_per_episode != 1:
        minutes = dict(preset["minutes"])
        minutes["eval"] *= clips_per_episode
        preset.update(eval_videos=preset["eval_videos"] * clips_per_episode, minutes=minutes)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or workdir / "data"
    t0 = time.time()
    moved_from = follow_move(workdir, data_dir)
    if moved_from:
        print(f"{workdir} was made as {moved_from}: its stages now name the files here")
    name = data_name(preset)
    vq_dir, codes_dir, teco_dir = workdir / "vqgan", workdir / "codes", workdir / "teco"
    refuse_other_data([vq_dir, teco_dir], name)
    vq_config = stage_config(preset["vqgan"], name, data_dir, preset["vqgan_steps"],
                             **preset["vqgan_over"])
    stamp = dict(vqgan=str(vq_dir), step=int(vq_config.total_steps), data=name)
    teco_config = stage_config(preset["teco"], name, codes_dir, preset["teco_steps"],
                               vqvae_ckpt=str(vq_dir), **preset["teco_over"])
    teco_config.data.source = "codes"
    # What a finished earlier run left: those stages are reused. Codes of a VQ-GAN trained
    # again are encoded again (same path and step, other weights).
    reused = {"data": data_ready(preset, data_dir),
              "vqgan": finished(vq_dir, vq_config.total_steps)}
    reused["encode"] = reused["vqgan"] and _stamped(codes_dir / "stamp.json", **stamp)
    reused["teco"] = finished(teco_dir, teco_config.total_steps)
    if not reused["vqgan"] and _checkpoint_steps(teco_dir):
        raise RuntimeError(f"{teco_dir} holds a TECO trained on the codes of a VQ-GAN that "
                           f"{vq_dir} no longer has finished; move {teco_dir} away to train a "
                           "new one on the new VQ-GAN's codes")
    clock = StageClock(preset["minutes"], reused={k for k, v in reused.items() if v})

    clock.start("data", "data", f"{name} under {data_dir}")
    if reused["data"]:
        print(f"reusing {name} under {data_dir}")
    else:
        build_data(preset, data_dir)

    clock.start("vqgan", "VQ-GAN", f"{vq_config.total_steps} steps -> {vq_dir}",
                timed=not _checkpoint_steps(vq_dir))
    if reused["vqgan"]:
        print("reusing the finished VQ-GAN")
    else:
        train.train_and_evaluate(vq_config, str(vq_dir))

    clock.start("encode", "encode", f"every episode -> {codes_dir}")
    if reused["encode"]:
        print("reusing the encoded codes")
    else:
        shutil.rmtree(codes_dir, ignore_errors=True)
        stats = encode.encode_dataset(str(vq_dir), str(codes_dir), data_dir=str(data_dir))
        print(json.dumps(stats))
        _stamp(codes_dir / "stamp.json", **stamp)

    clock.start("teco", "TECO", f"{teco_config.total_steps} steps -> {teco_dir}",
                timed=not _checkpoint_steps(teco_dir))
    if reused["teco"]:
        print("reusing the finished TECO")
    else:
        train.train_and_evaluate(teco_config, str(teco_dir))

    context, predict = preset["context"], preset["predict"]
    # The first held-out rollouts are the samples too: imagining them again took a minute.
    clock.start("eval", "sample and evaluate",
                f"{preset['eval_videos']} held-out videos, {predict} frames after {context} -> "
                f"{workdir / 'eval'}, the first {preset['sample_videos']} -> "
                f"{workdir / 'samples'}")
    args = teco_eval.parse([f"--workdir={teco_dir}", "--protocol=custom", f"--context={context}",
                            f"--predict={predict}", f"--num_videos={preset['eval_videos']}",
                            f"--clips_per_episode={clips_per_episode}",
                            f"--batch_size={EVAL_BATCH}", f"--data_dir={data_dir}",
                            f"--out={workdir / 'eval'}", f"--memory_check={preset['memory_check']}",
                            f"--samples_out={workdir / 'samples'}",
                            f"--num_samples={preset['sample_videos']}", *preset["sampler"]])
    result = teco_eval.run(args)
    checkpoint.replace_text(workdir / "metrics.json", teco_eval.json_text(result))
    import numpy as np

    from teco import videos

    with np.load(workdir / "samples" / "samples.npz", allow_pickle=False) as f:
        strip = videos.filmstrip(workdir / "filmstrip.png", f["real"], f["video"], context)
    print(f"filmstrip (real above generated, last context frame to the last one) -> {strip}")
    print(f"\npipeline finished in {(time.time() - t0) / 60:.1f} min: {workdir}")
    print(headline(result))
    return result


def headline(result: dict) -> str:
    """The evaluation's main numbers in a few lines."""
    from teco.metrics import identity

    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines = [f"{result['num_videos']} held-out videos, {result['predicted_frames']} frames after "
             f"{result['context_frames']}: " + ", ".join(
                 f"{k.upper()} {fmt(result.get(k))}" for k in ("psnr", "ssim", "lpips"))]
    still = result.get("repeat_last")
    if still:
        lines.append("the last context frame repeated instead: " + ", ".join(
            f"{k.upper()} {fmt(still.get(k))}" for k in ("psnr", "ssim", "lpips")))
    if isinstance(result.get("fvd"), dict):
        lines.append(f"FVD {result['fvd']['pooled']:.1f} (pooled over the videos, context "
                     "included)")
    world = result.get("world_identity")
    if world:
        last = {k: world[k][-1] for k in ("real", "generated", "short_context") if k in world}
        pct = lambda w: f"{w['accuracy']:.0%} [{w['interval'][0]:.0%}, {w['interval'][1]:.0%}]"
        if identity.kept(world):
            verdict = "the late frames keep their maze's colours"
        elif last["generated"]["accuracy"] > world["chance"]:
            # above chance but the interval reaches it: too few videos to tell, not a failure
            more = (" (--clips_per_episode=3 scores three times as many)"
                    if result["num_videos"] <= world["episodes"] else "")
            verdict = (f"above chance, but its interval reaches chance: {result['num_videos']} "
                       f"videos cannot tell{more}")
        else:
            verdict = "at chance: the late frames do not keep their maze's colours"
        lines.append(
            f"world identity, frames {world['start'][-1]}-"
            f"{result['context_frames'] + result['predicted_frames'] - 1}: the generated "
            f"frames' colours name their own episode of {world['episodes']} in "
            f"{pct(last['generated'])} of the videos (real frames {pct(last['real'])}"
            + (f", generated from the last context frames {pct(last['short_context'])}"
               if "short_context" in last else "")
            + f"; chance {world['chance']:.0%}): {verdict}")
        if "motion" in last["generated"]:  # a rollout frozen on one wall keeps its colours too
            lines.append(f"motion in those frames: the generated ones change by "
                         f"{last['generated']['motion']:.1f} per pixel from frame to frame, the "
                         f"real ones by {last['real']['motion']:.1f}")
        if "most_named" in last["generated"]:  # wrong names on a few episodes: a common palette
            lines.append(f"the episode named most often in those frames: by "
                         f"{last['generated']['most_named']:.0%} of the generated windows, "
                         f"{last['real']['most_named']:.0%} of the real ones (evenly spread: "
                         f"{world['chance']:.0%})")
    use = result.get("action_use")
    if use:
        lo, hi = use["interval"]
        verdict = ("the model follows the actions" if lo > 0 else
                   "the model does not follow its actions (its rollouts cannot turn where the "
                   "agent turned)")
        lines.append(f"actions: the real frames' NLL per token is {use['mean']:+.4f} nats higher "
                     f"with their actions shuffled in time than with the true ones, "
                     f"{use['level']:.0%} interval over "
                     f"{_units(use)} [{lo:+.4f}, {hi:+.4f}]: {verdict}")
    rev = result.get("revisits")
    if rev:
        lines.append(f"place memory: {rev['revisit_frames']} of {rev['predicted_frames']} "
                     f"predicted frames revisit a place the context showed; PSNR there "
                     f"{fmt(rev.get('psnr_revisit'))} vs {fmt(rev.get('psnr_other'))} elsewhere, "
                     f"{fmt(rev.get('psnr_gain'))} dB above the other frames at the same horizon")
        check = rev.get("memory_check")
        if check:
            lines.append(
                f"memory check: on {check['revisit_frames']} revisits of places seen before the "
                f"last {check['short_context']} context frames, PSNR {fmt(check.get('psnr_full'))} "
                f"with the whole context vs {fmt(check.get('psnr_short'))} from the last "
                f"{check['short_context']} (gain {fmt(check.get('psnr_gain'))} dB; on frames "
                f"that revisit nothing {fmt(check.get('psnr_gain_control'))} dB)")
            effect = check.get("psnr_memory_effect")
            if effect:
                lines.append(
                    f"memory effect (gain on the {check['revisit_frames_in_window']} revisits "
                    f"inside the model's window minus gain on the control frames): "
                    f"{_judged(effect, 'dB', 3)}")
            effect = check.get("nll_memory_effect")
            if effect:
                lines.append(
                    "likelihood memory effect (the real frames' NLL per token from the last "
                    f"{check['short_context']} context frames minus with the whole context, "
                    f"revisits minus control; no sampling): {_judged(effect, 'nats', 4)}")
    return "\n".join(lines)


def _judged(effect: dict, unit: str, digits: int) -> str:
    """The effect, its interval and what it says: memory only if the interval is above 0."""
    lo, hi = effect["interval"]
    verdict = ("the model keeps the places it saw" if lo > 0 else
               "no memory of places shown" if hi >= 0 else "the early context hurts revisits")
    return (f"{effect['effect']:+.{digits}f} {unit}, {effect['level']:.0%} interval over "
            f"{_units(effect)} [{lo:+.{digits}f}, {hi:+.{digits}f}]: {verdict}")


def _units(effect: dict) -> str:
    """What the interval resampled: videos, or the episodes several clips were cut from."""
    videos, episodes = effect["videos"], effect.get("episodes", effect["videos"])
    if episodes == videos:
        return f"{videos} videos"
    return f"{videos} videos from {episodes} episodes"


def main(argv=None) -> int:
    from teco.sample import at_least

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="outputs/demo")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--data_dir", default=None, help="where data sets live (default: <workdir>/data)")
    p.add_argument("--teco_steps", type=at_least(1), default=None, metavar="N",
                   help="TECO training steps instead of the preset's (demo: "
                        f"{PRESETS['demo']['teco_steps']}); more than a finished run's continues it")
    p.add_argument("--clips_per_episode", type=at_least(1), default=1, metavar="K",
                   help="evaluate K clips cut one after another from each held-out episode "
                        "(demo: 3 fit its 300-frame episodes; K times the evaluation's time)")
    args = p.parse_args(argv)
    from teco import host_devices, train

    devices = host_devices.one_device_per_core(batch_divisor(PRESETS[args.preset]))
    if devices:
        print(f"this CPU-only host runs the stages as {devices} XLA CPU devices, one per core, "
              "each with its share of every batch")
    from teco.train import quiet_library_logs

    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    try:
        run(Path(args.workdir), args.preset, Path(args.data_dir) if args.data_dir else None,
            teco_steps=args.teco_steps, clips_per_episode=args.clips_per_episode)
    except train.Interrupted as e:  # preempted inside a training stage: saved, resumable
        print(str(e), file=sys.stderr)
        return 0
    except FloatingPointError as e:  # non-finite loss with on_nonfinite='stop'
        print(f"error: {e}", file=sys.stderr)
        return train.EXIT_NONFINITE
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
