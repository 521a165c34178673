"""Loading and checking configs: impossible values fail at start-up with the key named."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import ml_collections


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def load_config(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """`configs/dmlab.py` or `configs/dmlab.py:tiny`, with `{'batch_size': 8, 'data.data_dir': ...}`."""
    file, _, arg = path.partition(":")
    if not Path(file).is_file():
        raise ConfigError(f"config file {file} does not exist")
    spec = importlib.util.spec_from_file_location(Path(file).stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for key, value in (overrides or {}).items():
        target = config
        *head, last = key.split(".")
        for part in head:
            target = target[part]
        if last not in target:
            raise ConfigError(f"unknown config key '{key}'")
        target[last] = value
    return config


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.{key}: {msg}")


def validate(config, n_devices: int | None = None) -> None:
    """Checks what the code downstream would otherwise fail on deep inside XLA."""
    c = config
    _need(c.model in ("vqgan", "teco"), "model", f"must be 'vqgan' or 'teco', got {c.model!r}")
    _need(c.batch_size > 0, "batch_size", f"must be positive, got {c.batch_size}")
    _need(c.total_steps > 0, "total_steps", f"must be positive, got {c.total_steps}")
    _need(0 <= c.warmup_steps <= c.total_steps, "warmup_steps",
          f"must be in [0, total_steps={c.total_steps}], got {c.warmup_steps}")
    _need(c.lr > 0, "lr", f"must be positive, got {c.lr}")
    _need(c.compute_dtype in ("float32", "bfloat16"), "compute_dtype",
          f"must be 'float32' or 'bfloat16', got {c.compute_dtype!r}")
    _need(c.on_nonfinite in ("stop", "skip"), "on_nonfinite",
          f"must be 'stop' or 'skip', got {c.on_nonfinite!r}")
    _need(c.data.source in ("tfds", "authors", "codes"), "data.source",
          f"must be 'tfds', 'authors' or 'codes', got {c.data.source!r}")
    _need(c.data.on_bad_file in ("error", "skip"), "data.on_bad_file",
          f"must be 'error' or 'skip', got {c.data.on_bad_file!r}")
    _need(c.data.get("cache_mb", 0) >= 0, "data.cache_mb",
          f"must be >= 0 (0 = no cache), got {c.data.get('cache_mb')}")
    if c.model == "vqgan":
        down = int(c.vqgan.get("patch_size", 1)) * 2 ** (len(c.vqgan.ch_mult) - 1)
        _need(c.image_size % down == 0, "image_size",
              f"{c.image_size} is not divisible by the VQ-GAN's downsampling {down} "
              f"(vqgan.patch_size * 2 ** (len(vqgan.ch_mult) - 1))")
        _need(c.seq_len >= 1, "seq_len", "must be at least 1")
    else:
        _need(c.n_cond >= 1, "n_cond", f"must be at least 1, got {c.n_cond}")
        _need(c.seq_len > c.n_cond, "seq_len",
              f"{c.seq_len} leaves no frame to predict after n_cond={c.n_cond}")
        _need(c.seq_len >= c.open_loop_ctx, "seq_len",
              f"{c.seq_len} is shorter than the sampling context open_loop_ctx={c.open_loop_ctx}")
        _need(0.0 <= c.drop_loss_rate < 1.0, "drop_loss_rate",
              f"must be in [0, 1), got {c.drop_loss_rate}")
        noise = c.get("prev_frame_noise", 0.0)
        _need(0.0 <= noise <= 1.0, "prev_frame_noise", f"must be in [0, 1], got {noise}")
        # the noise corrupts only the previous frame the decoder or the prior reads
        _need(noise == 0.0 or c.get("decoder_prev_frame", False) or c.get("prior_prev_frame", False),
              "prev_frame_noise", f"{noise} has no effect unless decoder_prev_frame or "
              "prior_prev_frame is True")
        _need(not c.get("recall", False) or c.get("use_actions", True), "recall",
              "True needs use_actions=True (the match integrates the actions)")
        _need(c.get("recall_reach", 0) >= 0, "recall_reach",
              f"{c.get('recall_reach', 0)} must be >= 0 (0: seq_len - 1)")
        _need(c.get("recall_sharpness", 1.0) > 0, "recall_sharpness",
              f"{c.get('recall_sharpness', 1.0)} must be > 0")
        _need(0 <= c.get("recall_skip", 0) < c.seq_len - 1, "recall_skip",
              f"{c.get('recall_skip', 0)} must be in [0, seq_len - 1 = {c.seq_len - 1})")
        for flag in ("decoder_action", "prior_action"):
            _need(not c.get(flag, False) or c.get("use_actions", True), flag,
                  "True has no effect with use_actions=False (every action is the same)")
        _need(c.z_tfm_kwargs.embed_dim % c.z_tfm_kwargs.num_heads == 0, "z_tfm_kwargs.num_heads",
              f"{c.z_tfm_kwargs.num_heads} does not divide embed_dim {c.z_tfm_kwargs.embed_dim}")
        _need(c.z_git.tfm_kwargs.embed_dim % c.z_git.tfm_kwargs.num_heads == 0,
              "z_git.tfm_kwargs.num_heads", f"{c.z_git.tfm_kwargs.num_heads} does not divide "
              f"embed_dim {c.z_git.tfm_kwargs.embed_dim}")
        _need(c.encoder.depths == c.decoder.depths or len(c.encoder.depths) == len(c.decoder.depths),
              "decoder.depths", "must have as many levels as encoder.depths")
        _need(c.sampler in ("draft_revise", "confidence"), "sampler",
              f"must be 'draft_revise' or 'confidence', got {c.sampler!r}")
        _need(c.action_dim >= 1, "action_dim", f"must be at least 1, got {c.action_dim}")
    if n_devices is not None:
        from teco.sharding import BATCH_AXES, mesh_shape_from_config, MESH_AXES

        try:
            shape = dict(zip(MESH_AXES, mesh_shape_from_config(c.mesh, n_devices)))
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None
        dp = math.prod(shape[a] for a in BATCH_AXES)
        _need(c.batch_size % dp == 0, "batch_size",
              f"{c.batch_size} is not divisible by the data-parallel size {dp} "
              f"(mesh data x fsdp = {shape['data']} x {shape['fsdp']} on {n_devices} devices)")


def latent_checks(config, vq_latent_shape: tuple[int, int]) -> None:
    """Stage 2: the VQ latent grid must shrink evenly through the encoder and z_ds."""
    c = config
    down = 2 ** (len(c.encoder.depths) - 1)
    h, w = vq_latent_shape
    _need(h % down == 0 and w % down == 0, "encoder.depths",
          f"{len(c.encoder.depths)} levels downsample by {down}, which does not divide the "
          f"VQ latent grid {h}x{w}")
    _need((h // down) % c.z_ds == 0 and (w // down) % c.z_ds == 0, "z_ds",
          f"{c.z_ds} does not divide the TECO latent grid {h // down}x{w // down}")
