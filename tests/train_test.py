"""The trainer: a real tiny run with an interruption and a resume, a sharded step against a
single-device one, non-finite handling, the optimizer schedule, multi-host detection."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import teco  # noqa: F401
from teco import checkpoint, optim, sharding, train
from teco.tasks.base import ConfigKeyed, TrainState
from teco.tasks.vqgan import VQGANTask
from iterators import Preempted, StopAfter, wrapping_training
from vqgan_test import one_device_mesh, shared_data_dir, small_config, smooth_frames


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return shared_data_dir(tmp_path_factory)


def interrupt_after(monkeypatch, n_batches):
    """Makes the training iterator fail after `n_batches`, like a preempted machine."""
    from teco import data

    monkeypatch.setattr(data, "make_iterator", wrapping_training(
        data.make_iterator, lambda it: StopAfter(it, n_batches)))


def test_interrupted_run_resumes_exactly(tmp_path, data_dir, monkeypatch):
    config = small_config(data_dir)   # 8 devices: data 4 x fsdp 2, GAN and LPIPS on
    # Uninterrupted reference run.
    reference = train.train_and_evaluate(config, str(tmp_path / "ref"))
    assert reference["start_step"] == 0 and reference["step"] == 4
    for key in ("psnr", "ssim", "lpips", "codes_used", "perplexity"):
        assert math.isfinite(reference["eval"][key]), key
    assert math.isfinite(reference["train"]["train/loss"])
    assert reference["train"]["perf/frames_per_sec"] > 0
    workdir = tmp_path / "run"
    assert (tmp_path / "ref" / checkpoint.CONFIG_FILE).is_file()
    assert list((tmp_path / "ref").glob("events.out.tfevents.*"))

    # Killed during step 4 (after the checkpoint of step 2), then the same command again.
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(Preempted):
            train.train_and_evaluate(config, str(workdir))
    manager = checkpoint.make_manager(workdir, best_metric="lpips")
    assert manager.latest_step() == 2
    resumed = train.train_and_evaluate(config, str(workdir))
    assert resumed["start_step"] == 2 and resumed["step"] == 4

    # Same parameters as the uninterrupted run: state, RNG and data position were restored.
    ref_model, _ = checkpoint.load_vqgan(tmp_path / "ref", step=4)
    run_model, _ = checkpoint.load_vqgan(workdir, step=4)
    from flax import nnx
    for a, b in zip(jax.tree.leaves(nnx.state(ref_model)), jax.tree.leaves(nnx.state(run_model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed["eval"]["lpips"] == pytest.approx(reference["eval"]["lpips"], rel=1e-6)


def test_sharded_step_matches_single_device(data_dir):
    config = small_config(data_dir)
    task = VQGANTask(config)
    batch_np = {"video": smooth_frames(8)[:, None], "actions": np.zeros((8, 1), np.int32)}
    runs = {}
    # The 8-device program is the one the interrupted run above compiled (same config and mesh).
    for name, mesh in [("single", one_device_mesh()), ("data4_fsdp2", sharding.make_mesh(config.mesh))]:
        state, _, shardings = train.create_train_state(task, config, mesh)
        consts = jax.device_put(task.constants(), sharding.replicated(mesh))
        step = train.make_train_step(task, mesh, shardings, "gan")
        batch = jax.device_put(batch_np, sharding.batch_sharding(mesh))
        history = []
        for _ in range(3):
            state, metrics = step(state, batch, consts)
            history.append(jax.device_get(metrics))
        runs[name] = (history, state)
    # The fsdp axis really splits parameters (conv output channels), the data axes the batch.
    kernel = runs["data4_fsdp2"][1].params["decoder"]["conv_in"]["kernel"][...]
    assert "fsdp" in str(kernel.sharding.spec)
    # Every metric of three steps (losses, gradient norm, GAN weight, discriminator) agrees. The
    # parameters are not compared one by one: biases in front of a GroupNorm have an exactly
    # zero gradient, and Adam turns its rounding noise into lr-sized steps of either sign.
    for single, sharded in zip(runs["single"][0], runs["data4_fsdp2"][0]):
        assert set(single) == set(sharded)
        for key in single:
            np.testing.assert_allclose(float(sharded[key]), float(single[key]), rtol=1e-4,
                                       atol=1e-6, err_msg=key)


class _LinearTask(ConfigKeyed):
    """A one-parameter task: the trainer's step logic without a network to compile."""

    batch_keys = ("video",)

    def __init__(self):
        self.config = ml_collections.ConfigDict({"name": "linear"})

    def init_state(self, rng):
        return TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones((4,))},
                          opt_state={}, rng=rng, extra={})

    def train_step(self, state, batch, consts, *, phase):
        loss = jnp.mean(batch["video"]) * jnp.sum(state.params["w"])
        params = {"w": state.params["w"] - 0.5}
        return state.replace(step=state.step + 1, params=params), {"loss": loss}


def test_nonfinite_skip_keeps_state_and_stop_names_step():
    task = _LinearTask()
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    config = ml_collections.ConfigDict({"seed": 0, "logical_axis_rules": sharding.DEFAULT_RULES})
    state, _, shardings = train.create_train_state(task, config, mesh)
    step = train.make_train_step(task, mesh, shardings, "only", on_nonfinite="skip")
    good = jax.device_put({"video": np.ones((8, 1), np.float32)}, sharding.batch_sharding(mesh))
    bad = jax.device_put({"video": np.full((8, 1), np.nan, np.float32)},
                         sharding.batch_sharding(mesh))
    state, m = step(state, good, None)
    assert float(m["skipped"]) == 0.0
    np.testing.assert_allclose(state.params["w"], 0.5)
    state, m = step(state, bad, None)
    assert float(m["skipped"]) == 1.0 and int(state.step) == 2
    np.testing.assert_allclose(state.params["w"], 0.5)   # the update was dropped
    with pytest.raises(FloatingPointError, match="at step 7"):
        train.check_loss(7, float("nan"), "stop")
    # The message names the step, the non-finite loss terms (loss first) and the last good
    # checkpoint; the trainer passes the step's metrics and its checkpoint directory.
    with pytest.raises(FloatingPointError, match=(
            r"^non-finite loss \(nan\) at step 7 \(config.on_nonfinite='stop'\); non-finite "
            r"terms: loss=nan, pixel_loss=inf; the last good checkpoint is step 6 in /w$")):
        train.check_loss(7, float("nan"), "stop", "the last good checkpoint is step 6 in /w",
                         terms={"pixel_loss": float("inf"), "loss": float("nan"), "lr": 1e-4})
    train.check_loss(7, float("inf"), "skip")
    with pytest.raises(ValueError, match="on_nonfinite"):
        train.make_train_step(task, mesh, shardings, "only", on_nonfinite="ignore")


def test_schedule_warmup_then_cosine():
    schedule = optim.learning_rate_schedule(lr=1e-3, warmup_steps=10, total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), 5e-4, rtol=1e-5)   # half-way down the cosine
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="lr_schedule"):
        optim.learning_rate_schedule(lr=1e-3, warmup_steps=1, total_steps=10, kind="step")


def test_multihost_detection(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(1))
    for key in train._MULTIHOST_ENV:
        monkeypatch.delenv(key, raising=False)
    assert not train.maybe_initialize_distributed("auto")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not train.maybe_initialize_distributed("auto")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert not train.maybe_initialize_distributed("off")
    assert not calls
    assert train.maybe_initialize_distributed("auto") and calls == [1]
    with pytest.raises(ValueError, match="multihost"):
        train.maybe_initialize_distributed("maybe")


def test_quiet_library_logs_drops_read_only_notices_and_keeps_warnings():
    import logging as std_logging

    from absl import logging

    from teco.train import quiet_library_logs

    absl_logger = logging.get_absl_logger()
    before = list(absl_logger.filters)
    try:
        quiet_library_logs()
        keep = [f for f in absl_logger.filters if f not in before][0]

        def record(level, msg, path="/site-packages/orbax/checkpoint/checkpoint_manager.py"):
            return std_logging.LogRecord("absl", level, path, 1, msg, None, None)

        assert not keep(record(std_logging.WARNING,
                               "CheckpointManagerOptions.read_only=True, setting create=False."))
        assert not keep(record(std_logging.WARNING, "Given directory is read only=/w/checkpoints"))
        assert not keep(record(std_logging.INFO, "Saving checkpoint at step 3"))
        assert keep(record(std_logging.WARNING, "Could not write the checkpoint: disk full"))
        assert keep(record(std_logging.INFO, "step 3/10", path="/teco/train.py"))
    finally:
        for f in absl_logger.filters[len(before):]:
            absl_logger.removeFilter(f)


def test_chunked_encoder_on_the_cpu_is_warned_about(monkeypatch):
    said = []
    monkeypatch.setattr(train.logging, "warning", lambda msg, *a: said.append(msg % a))
    chunked = ml_collections.ConfigDict({"encoder_frames_per_chunk": 75})
    assert train.warn_if_slow_here(chunked, "cpu")
    assert len(said) == 1 and "encoder_frames_per_chunk=75" in said[0] and "~50x" in said[0]
    assert not train.warn_if_slow_here(chunked, "tpu")
    assert not train.warn_if_slow_here(ml_collections.ConfigDict({"encoder_frames_per_chunk": 0}), "cpu")
    assert not train.warn_if_slow_here(ml_collections.ConfigDict({"lr": 1e-3}), "cpu")  # VQ-GAN
    assert len(said) == 1
