"""teco.encode: a VQ-GAN workdir + a video set -> the code set stage 2 reads."""
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

import teco  # noqa: F401
from teco import checkpoint, data, sharding, train
from teco.config import load_config
from teco.encode import encode_dataset
from teco.tasks.vqgan import VQGANTask
from vqgan_test import one_device_mesh, shared_data_dir, small_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    config = small_config(shared_data_dir(tmp_path_factory))
    task = VQGANTask(config)
    mesh = one_device_mesh()
    state, _, _ = train.create_train_state(task, config, mesh)
    workdir = tmp_path_factory.mktemp("vq")
    checkpoint.save_config(workdir, config)
    manager = checkpoint.make_manager(workdir, best_metric=task.best_metric)
    checkpoint.save(manager, 1, state, {})
    manager.wait_until_finished()
    out = tmp_path_factory.mktemp("codes")
    stats = encode_dataset(str(workdir), str(out), splits=("train", "test"), batch_size=16)
    return config, task, state, out, stats


def test_codes_match_the_model_and_keep_the_actions(encoded):
    config, task, state, out, stats = encoded
    source = data.make_source(config.data, "train")
    codes_source = data.CodesSource(str(out), "train")
    assert len(codes_source) == len(source) == stats["train"]["episodes"]
    episode, encoded_episode = source[0], codes_source[0]
    t = episode["video"].shape[0]
    assert encoded_episode["codes"].dtype == np.int16
    assert encoded_episode["codes"].shape == (t, 8, 8)
    np.testing.assert_array_equal(encoded_episode["actions"], episode["actions"])
    frames = episode["video"].astype(np.float32) / 127.5 - 1.0
    _, vq = jax.jit(task.reconstruct)(state.params, frames)
    np.testing.assert_array_equal(encoded_episode["codes"], np.asarray(vq["codes"]))


def test_reports_psnr_and_meta(encoded):
    config, _, _, out, stats = encoded
    for split in ("train", "test"):
        assert stats[split]["frames"] > 0
    # Only the held-out split is decoded for PSNR by default (train is encoded only).
    assert "psnr" not in stats["train"] and "psnr_train" not in json.loads(
        (out / data.CODES_META).read_text())
    assert math.isfinite(stats["test"]["psnr"]) and stats["test"]["psnr"] > 0
    meta = json.loads((out / data.CODES_META).read_text())
    assert meta["n_codes"] == config.vqgan.n_codes and meta["latent_size"] == 8
    assert meta["splits"] == {"train": stats["train"]["episodes"], "test": stats["test"]["episodes"]}
    assert meta["psnr_test"] == pytest.approx(stats["test"]["psnr"])


def test_stage2_reads_the_codes(encoded):
    _, _, _, out, _ = encoded
    config = load_config(f"{CONFIGS}/memory_maze.py:tiny",
                         {"data.source": "codes", "data.data_dir": str(out)})
    mesh = sharding.make_mesh(config.mesh)
    batch = next(data.make_iterator(config, mesh, split="train", train=True))
    assert batch["codes"].shape == (config.batch_size, config.seq_len, 8, 8)
    assert batch["actions"].shape == (config.batch_size, config.seq_len)
