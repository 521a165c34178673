"""Loading a trained (or converted) TECO with its tokenizer, and generating videos with it.

Shared by `teco.sample` and `teco.eval`; the CLIs stay thin.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from teco import checkpoint, rollout
from teco.metrics.image import quantize


@dataclasses.dataclass
class Stage2:
    """A TECO ready to sample: network, config, frozen VQ table, and the VQ-GAN if there is one."""

    model: Any
    config: ml_collections.ConfigDict
    table: jax.Array                 # [vq_n_codes, vq_embedding_dim]
    vqgan: Any | None                # decodes codes to pixels; None for converted authors' models
    vq_config: ml_collections.ConfigDict | None
    step: int
    source: str                      # what was loaded, for the record


def load_stage2(path: str, *, step: int | None = None) -> Stage2:
    """From a `teco.train` TECO workdir, or a `teco.convert` output directory."""
    root = Path(path)
    if not root.exists():
        raise ValueError(f"--workdir {path} does not exist")
    if not root.is_dir():
        raise ValueError(f"--workdir {path} is a file, not a teco.train workdir or a teco.convert "
                         "output directory")
    if (root / "converted" / "config.json").exists():
        root = root / "converted"
    if (root / "config.json").exists() and (root / "params").exists():
        return _load_converted(root)
    if not (root / checkpoint.CONFIG_FILE).exists():
        raise ValueError(f"{path} is neither a teco.train workdir (no config.json) nor a "
                         "teco.convert output (no converted/config.json)")
    return _load_workdir(root, step)


def _load_workdir(workdir: Path, step: int | None) -> Stage2:
    from teco.tasks.teco import TecoTask

    config = checkpoint.load_config(workdir)
    if config.get("model") != "teco":
        hint = " (it is stage 1: pass the TECO workdir)" if config.get("model") == "vqgan" else ""
        raise ValueError(f"{workdir} holds a '{config.get('model')}' run, not a TECO one{hint}")
    # Checked before the VQ-GAN is loaded: a run that never saved fails at once.
    if not (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
        raise ValueError(f"{workdir} has no checkpoints yet")
    manager = checkpoint.make_manager(workdir, read_only=True)
    steps = list(manager.all_steps())
    if not steps:
        raise ValueError(f"{workdir} has no checkpoints yet")
    step = max(steps) if step is None else step
    if step not in steps:
        raise ValueError(f"{workdir} has no checkpoint of step {step} (have {sorted(steps)})")
    vqgan, vq_config = checkpoint.load_vqgan(config.vqvae_ckpt)
    task = TecoTask(config, vqgan=vqgan, vq_config=vq_config)
    abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))  # raw key, as trained
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    state, _ = checkpoint.restore(manager, target, step)
    return Stage2(task.model(state.params), config, jnp.asarray(task.vq_table), vqgan, vq_config,
                  int(step), str(workdir))


def _load_converted(root: Path) -> Stage2:
    from teco.convert import load_converted_params
    from teco.models.teco import teco_shell

    meta = json.loads((root / "config.json").read_text())
    config = ml_collections.ConfigDict(meta["config"])
    vq = meta["vq"]
    table_path = root / "vq_table.npy"
    if not table_path.exists():
        raise ValueError(f"{root} has no vq_table.npy: convert with --vq_table=<the VQ-GAN's code "
                         "embeddings as .npy> to sample from it")
    model = teco_shell(config, vq["vq_n_codes"], vq["vq_embedding_dim"], vq["latent_shape"])
    load_converted_params(root / "params", model)
    try:
        table = jnp.asarray(np.load(table_path, allow_pickle=False))
    except (ValueError, OSError, EOFError) as e:  # object arrays are refused, never unpickled
        raise ValueError(f"{table_path}: cannot read the VQ table ({e})") from None
    return Stage2(model, config, table, None, None, int(meta.get("authors_step") or 0), str(root))


def code_grid(stage: Stage2) -> tuple[int, tuple[int, int]]:
    """(number of VQ codes, latent grid (h, w)) the model reads."""
    return int(stage.table.shape[0]), tuple(int(s) for s in stage.model.latent_shape)


def check_codes(stage: Stage2, codes, *, where: str) -> None:
    """ValueError naming `where` unless `codes` is integer [B, T, h, w] on the model's grid with
    values in [0, n_codes)."""
    n_codes, grid = code_grid(stage)
    codes = np.asarray(codes)
    if codes.ndim != 4 or tuple(codes.shape[2:]) != grid:
        raise ValueError(f"{where}: codes have shape {codes.shape}, the model reads "
                         f"[videos, frames, {grid[0]}, {grid[1]}]")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{where}: codes must be integers, got {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= n_codes):
        raise ValueError(f"{where}: codes range over [{codes.min()}, {codes.max()}], the VQ-GAN "
                         f"has {n_codes} codes [0, {n_codes - 1}]")


def check_actions(stage: Stage2, actions, *, frames: int, where: str) -> None:
    """ValueError naming `where` unless `actions` is integer [B, frames] in [-1, action_dim)
    (-1: the no-action token)."""
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[1] != frames:
        raise ValueError(f"{where}: actions have shape {actions.shape}, need [videos, {frames}]")
    if not np.issubdtype(actions.dtype, np.integer):
        raise ValueError(f"{where}: actions must be integers, got {actions.dtype}")
    n = stage.config.get("action_dim")
    if n is not None and actions.size and (actions.min() < -1 or actions.max() >= int(n)):
        raise ValueError(f"{where}: actions range over [{actions.min()}, {actions.max()}], the "
                         f"model knows {n} actions [0, {int(n) - 1}] and -1 (none)")


def check_codes_meta(meta: dict, n_codes: int, latent_size: int, *, where: str) -> None:
    """A code data set (`teco.encode`'s codes_meta.json) must come from a tokenizer with the
    model's vocabulary and grid; ValueError naming the key otherwise."""
    for key, want in (("n_codes", n_codes), ("latent_size", latent_size)):
        if key in meta and int(meta[key]) != int(want):
            raise ValueError(
                f"{where}: {key}={meta[key]}, but the VQ-GAN (config.vqvae_ckpt) has "
                f"{key}={want}: the codes were written by another tokenizer; re-encode them "
                "with `python -m teco.encode`")


def check_code_dir(data_dir: str, n_codes: int, latent_size: int) -> None:
    """The code data set under `data_dir` (if it has its codes_meta.json) was written by a
    tokenizer with this vocabulary and grid."""
    from teco.data import CODES_META

    path = Path(data_dir) / CODES_META
    if not path.is_file():
        return  # the data pipeline reports a directory that is not an encoded set
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    check_codes_meta(meta, n_codes, latent_size, where=str(path))


def check_code_set(stage: Stage2, data_dir: str) -> None:
    """The code data set under `data_dir` matches the model."""
    n_codes, grid = code_grid(stage)
    check_code_dir(data_dir, n_codes, grid[0])


def generate(stage: Stage2, context_codes_BCHW, actions_BN, key, *, n_new: int,
             spec: rollout.SamplerSpec):
    """VQ codes of the context and `n_new` imagined frames: int32 [B, C + n_new, h, w]."""
    graphdef, state = nnx.split(stage.model)
    fn = _compiled_rollout(graphdef, n_new, spec)
    return fn(state, stage.table, jnp.asarray(context_codes_BCHW, jnp.int32),
              jnp.asarray(actions_BN, jnp.int32), key)


_ROLLOUTS: dict = {}


def _compiled_rollout(graphdef, n_new: int, spec):
    key = (graphdef, n_new, spec)
    if key not in _ROLLOUTS:
        @jax.jit
        def run(state, table, codes, actions, rng):
            return rollout.rollout(nnx.merge(graphdef, state), table, codes, actions, rng,
                                   n_new=n_new, spec=spec)
        _ROLLOUTS[key] = run
    return _ROLLOUTS[key]


def encode_frames(vqgan, video_BTHWC, chunk: int = 64):
    """Pixels in [-1, 1] (or uint8) -> VQ codes int32 [B, T, h, w], in chunks of frames."""
    video = np.asarray(video_BTHWC)
    if video.dtype == np.uint8:
        video = video.astype(np.float32) / 127.5 - 1.0
    b, t = video.shape[:2]
    flat = video.reshape((b * t,) + video.shape[2:])
    graphdef, state = nnx.split(vqgan)
    enc = _jitted("encode", graphdef, lambda s, x: nnx.merge(graphdef, s).encode(x)["codes"])
    codes = [np.asarray(enc(state, _pad(flat[i:i + chunk], chunk)))[:len(flat[i:i + chunk])]
             for i in range(0, len(flat), chunk)]
    out = np.concatenate(codes)
    return out.reshape((b, t) + out.shape[1:]).astype(np.int32)


def decode_codes(vqgan, codes_BTHW, chunk: int = 64) -> np.ndarray:
    """VQ codes -> uint8 frames [B, T, H, W, 3], decoded in chunks (memory stays flat)."""
    codes = np.asarray(codes_BTHW)
    b, t = codes.shape[:2]
    flat = codes.reshape((b * t,) + codes.shape[2:])
    graphdef, state = nnx.split(vqgan)
    dec = _jitted("decode", graphdef, lambda s, c: quantize(nnx.merge(graphdef, s).decode_codes(c)))
    frames = [np.asarray(dec(state, _pad(flat[i:i + chunk], chunk)))[:len(flat[i:i + chunk])]
              for i in range(0, len(flat), chunk)]
    out = np.concatenate(frames)
    return out.reshape((b, t) + out.shape[1:])


def codes_to_rgb(table, codes_BTHW) -> np.ndarray:
    """False-colour frames of VQ codes (the table's 3 principal components), for models that
    come without their VQ-GAN: uint8 [B, T, h, w, 3]."""
    table = np.asarray(table, np.float64)
    centred = table - table.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    rgb = centred @ vt[:3].T
    rgb = (rgb - rgb.min(0)) / np.maximum(np.ptp(rgb, 0), 1e-8)
    return (rgb[np.asarray(codes_BTHW)] * 255).round().astype(np.uint8)


_JITTED: dict = {}


def _jitted(kind: str, graphdef, fn):
    """One compiled function per network structure, reused across batches (no recompiles)."""
    if (kind, graphdef) not in _JITTED:
        _JITTED[(kind, graphdef)] = jax.jit(fn)
    return _JITTED[(kind, graphdef)]


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """Pads the first axis to n so every chunk has one shape (one compilation)."""
    if len(x) == n:
        return x
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])
