"""Encodes a video data set with a trained VQ-GAN into the code data set stage 2 reads.

    python -m teco.encode --vqgan_workdir=workdirs/memory_maze/vqgan \
        --out_dir=data/codes/memory_maze [--splits=train,test] [--data_dir=data/tfds]

Every episode of each split is encoded whole: codes int16 [T, h, w] plus its actions int32 [T]
(zeros for sets without actions), written with `teco.data.CodesWriter` (array_record +
codes_meta.json); a stage-2 config reads it with `data.source='codes'`, `data.data_dir=out_dir`.
The frames come from the data set the VQ-GAN was trained on (its saved config) unless
--data_dir / --data_source say otherwise. It reports the PSNR of the reconstructions of what it
encoded (uint8-quantised, as in evaluation) for the --psnr_splits (default: test), also stored
in codes_meta.json.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from teco import checkpoint, sharding
from teco.metrics.image import quantize
from teco.tasks.vqgan import PSNR_CAP


def make_encode_fn(model, mesh, *, with_psnr: bool = True):
    """jitted uint8 frames [N, H, W, 3] -> (codes int32 [N, h, w], PSNR [N] or None).

    Without PSNR only the encoder runs (the decoder costs as much again)."""
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, sharding.replicated(mesh))
    batch = sharding.batch_sharding(mesh)

    @jax.jit
    def encode(params, frames_u8):
        frames_u8 = jax.lax.with_sharding_constraint(frames_u8, batch)
        x = frames_u8.astype(jnp.float32) / 127.5 - 1.0
        net = nnx.merge(graphdef, params)
        if not with_psnr:
            return net.encode(x)["codes"], None
        x_hat, vq = net(x)
        err = jnp.square(quantize(x_hat).astype(jnp.float32) - frames_u8.astype(jnp.float32))
        psnr = 20.0 * jnp.log10(255.0) - 10.0 * jnp.log10(jnp.mean(err, axis=(1, 2, 3)))
        return vq["codes"], jnp.minimum(psnr, PSNR_CAP)  # exact frames would be +inf

    return lambda frames: encode(params, frames)


def encode_dataset(vqgan_workdir: str, out_dir: str, *, splits=("train", "test"),
                   batch_size: int = 64, data_dir: str | None = None,
                   data_source: str | None = None, step: int | None = None,
                   mesh=None, psnr_splits=("test",)) -> dict[str, dict[str, float]]:
    """Encodes `splits` of the VQ-GAN's data set into `out_dir`; returns per-split statistics
    {'episodes', 'frames', 'psnr'} (mean PSNR over frames, dB; only for `psnr_splits`, whose
    frames are also decoded: that doubles their cost)."""
    from teco import data

    if jax.process_count() > 1:
        raise ValueError("teco.encode writes one file per split: run it as a single process")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out_dir {out_dir} is a file, not a directory")
    if not Path(vqgan_workdir).is_dir():
        raise ValueError(f"--vqgan_workdir {vqgan_workdir} does not exist")
    model, vq_config = checkpoint.load_vqgan(vqgan_workdir, step=step)
    mesh = mesh or sharding.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    dp = sharding.data_parallel_size(mesh)
    chunk = max(dp, -(-int(batch_size) // dp) * dp)  # a multiple of the data-parallel size
    data_config = vq_config.data
    if data_dir:
        data_config.data_dir = data_dir
    if data_source:
        data_config.source = data_source
    if data_config.source == "codes":
        raise ValueError("teco.encode reads videos; data.source must be 'tfds' or 'authors'")
    facts = checkpoint.vqgan_facts(vq_config)
    encoders = {with_psnr: make_encode_fn(model, mesh, with_psnr=with_psnr)
                for with_psnr in (False, True)}
    stats = {}
    # Every split is found before any is written: a missing one leaves out_dir as it was.
    sources = {split: data.make_source(data_config, split, seq_len=1) for split in splits}
    for split in splits:
        encode = encoders[split in psnr_splits]
        source = sources[split]
        writer = data.CodesWriter(out_dir, split, meta={
            **facts, "vqgan_workdir": str(Path(vqgan_workdir).absolute()),
            "data": {"name": data_config.name, "source": data_config.source,
                     "data_dir": str(data_config.data_dir)}})
        psnr_sum, frames, start = 0.0, 0, time.time()
        for i in range(len(source)):
            ep = source[i]
            name = ep.get("_name", f"{split} #{i}")
            video = np.asarray(ep["video"])
            if video.ndim != 4 or video.shape[1:] != (facts["image_size"],) * 2 + (3,):
                raise ValueError(f"{name}: frames of shape {video.shape[1:]}, the VQ-GAN expects "
                                 f"{(facts['image_size'],) * 2 + (3,)}")
            if video.dtype != np.uint8:
                raise ValueError(f"{name}: video must be uint8, got {video.dtype}")
            if video.shape[0] == 0:
                raise ValueError(f"{name}: video has no frames")
            t = video.shape[0]
            actions = np.asarray(ep.get("actions", np.zeros((t,), np.int32)), np.int32)
            codes, psnr = [], []
            for s in range(0, t, chunk):
                part = video[s:s + chunk]
                n = part.shape[0]
                if n < chunk:  # pad to the one compiled shape; padded frames are dropped
                    part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], np.uint8)])
                c, p = jax.device_get(encode(part))
                codes.append(c[:n])
                if p is not None:
                    psnr.append(p[:n])
            codes = np.concatenate(codes)
            if codes.max() >= np.iinfo(np.int16).max:
                raise ValueError(f"{facts['n_codes']} codes do not fit int16")
            writer.add(codes.astype(np.int16), actions)
            psnr_sum += float(np.sum(np.concatenate(psnr))) if psnr else 0.0
            frames += t
            if (i + 1) % 10 == 0 or i + 1 == len(source):
                elapsed = time.time() - start
                eta = elapsed / (i + 1) * (len(source) - i - 1)
                logging.info("%s: %d/%d episodes, %d frames, %.1f frames/s%s, ETA %s", split,
                             i + 1, len(source), frames, frames / elapsed,
                             f", PSNR {psnr_sum / max(frames, 1):.2f} dB" if psnr else "",
                             time.strftime("%H:%M:%S", time.gmtime(eta)))
        stats[split] = {"episodes": len(source), "frames": frames}
        if split in psnr_splits:
            stats[split]["psnr"] = writer.meta[f"psnr_{split}"] = psnr_sum / max(frames, 1)
        writer.close()
        logging.info("encoded %s: %d episodes, %d frames%s -> %s", split, len(source), frames,
                     f", reconstruction PSNR {stats[split]['psnr']:.2f} dB"
                     if "psnr" in stats[split] else "", out_dir)
    return stats


# ----------------------------------------------------------------------------- command line


def _define_flags():
    flags.DEFINE_string("vqgan_workdir", None, "teco.train workdir of the VQ-GAN (stage 1).")
    flags.DEFINE_string("out_dir", None, "Where the code data set is written.")
    flags.DEFINE_list("splits", ["train", "test"], "Splits to encode.")
    flags.DEFINE_integer("batch_size", 64, "Frames per encoder call.", lower_bound=1)
    flags.DEFINE_string("data_dir", None, "Override the VQ-GAN config's data.data_dir.")
    flags.DEFINE_enum("data_source", None, ["tfds", "authors"], "Override data.source.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: best by eval, else latest).")
    flags.DEFINE_list("psnr_splits", ["test"], "Splits whose reconstructions are also decoded "
                      "to report PSNR (doubles their cost).")
    flags.mark_flags_as_required(["vqgan_workdir", "out_dir"])


def main(argv):
    del argv
    from teco.train import quiet_library_logs

    quiet_library_logs()
    f = flags.FLAGS
    try:
        stats = encode_dataset(f.vqgan_workdir, f.out_dir, splits=tuple(f.splits),
                               batch_size=f.batch_size, data_dir=f.data_dir,
                               data_source=f.data_source, step=f.step,
                               psnr_splits=tuple(f.psnr_splits))
    except (ValueError, OSError) as e:  # bad workdir, data or out_dir: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for split, s in stats.items():
        psnr = f", reconstruction PSNR {s['psnr']:.2f} dB" if "psnr" in s else ""
        print(f"{split}: {s['episodes']} episodes, {s['frames']} frames{psnr}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
