"""Checkpoints: save -> restore, what is kept, and loading a frozen VQ-GAN for stage 2."""
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import teco  # noqa: F401
from teco import checkpoint, train
from teco.tasks.vqgan import VQGANTask
from vqgan_test import one_device_mesh, shared_data_dir, small_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = small_config(shared_data_dir(tmp_path_factory))
    task = VQGANTask(config)
    mesh = one_device_mesh()
    state, abstract, shardings = train.create_train_state(task, config, mesh)
    workdir = tmp_path_factory.mktemp("vq_workdir")
    checkpoint.save_config(workdir, config)
    manager = checkpoint.make_manager(workdir, keep=2, best_metric=task.best_metric)
    checkpoint.save(manager, 3, state, {"grain": {"position": 7}}, metrics={"lpips": 0.5})
    manager.wait_until_finished()
    return workdir, config, state, checkpoint.abstract_with_shardings(abstract, shardings)


def test_save_restore_identical(saved):
    workdir, _, state, target = saved
    manager = checkpoint.make_manager(workdir, keep=2, best_metric="lpips")
    restored, data_state = checkpoint.restore(manager, target)
    assert data_state == {"grain": {"position": 7}}
    leaves, restored_leaves = jax.tree.leaves(state), jax.tree.leaves(restored)
    assert len(leaves) == len(restored_leaves)
    assert jax.tree.structure(state) == jax.tree.structure(restored)
    for a, b in zip(leaves, restored_leaves):
        assert a.dtype == b.dtype and a.sharding == b.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_into_another_shape_names_the_array(saved):
    workdir, _, _, target = saved
    params = target.params
    kernel = params["quantizer"]["codebook"]
    bad = jax.tree.map(lambda x: x, target)
    bad.params["quantizer"]["codebook"].set_value(
        jax.ShapeDtypeStruct((kernel.shape[0] * 2, kernel.shape[1]), kernel.dtype))
    manager = checkpoint.make_manager(workdir, keep=2, best_metric="lpips")
    with pytest.raises(ValueError, match="params/quantizer/codebook.*shape"):
        checkpoint.restore(manager, bad)


def test_load_vqgan_returns_the_saved_model(saved):
    workdir, config, state, _ = saved
    model, vq_config = checkpoint.load_vqgan(workdir)
    assert vq_config.vqgan.n_codes == config.vqgan.n_codes
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    facts = checkpoint.vqgan_facts(vq_config)
    assert facts == {"latent_size": 8, "n_codes": config.vqgan.n_codes,
                     "embedding_dim": config.vqgan.embedding_dim, "image_size": 16}


def test_load_vqgan_failures_say_which(saved, tmp_path):
    workdir, _, _, _ = saved
    with pytest.raises(ValueError, match="vqvae_ckpt is empty"):
        checkpoint.load_vqgan("")
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint.load_vqgan(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json is missing"):
        checkpoint.load_vqgan(tmp_path / "empty")
    stage2 = tmp_path / "teco_run"
    stage2.mkdir()
    (stage2 / checkpoint.CONFIG_FILE).write_text(json.dumps({"model": "teco"}))
    with pytest.raises(ValueError, match="not a VQ-GAN"):
        checkpoint.load_vqgan(stage2)
    # A checkpoint whose arrays do not match its config (e.g. the config was edited).
    edited = tmp_path / "edited"
    shutil.copytree(workdir, edited)
    cfg = json.loads((edited / checkpoint.CONFIG_FILE).read_text())
    cfg["vqgan"]["n_codes"] *= 2
    (edited / checkpoint.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"params/quantizer/codebook' has shape \(16, 4\)"):
        checkpoint.load_vqgan(edited)
    with pytest.raises(ValueError, match="no checkpoint of step 99"):
        checkpoint.load_vqgan(workdir, step=99)


def test_stage2_config_mismatch(saved):
    _, config, _, _ = saved
    stage2 = ml_collections.ConfigDict({"image_size": 64, "channels": 3, "vqvae_ckpt": "x"})
    with pytest.raises(ValueError, match="image_size=64 does not match the VQ-GAN's image_size=16"):
        checkpoint.check_stage2_config(config, stage2)
    stage2.image_size = 16
    checkpoint.check_stage2_config(config, stage2)


def test_a_key_added_since_resumes_as_older_runs_did():
    """A config saved before `loss.lpips_min_side` existed reads as 0 (what those runs did)."""
    saved = {"lr": 1e-3, "loss": {"pixel": "l1"}}
    now = lambda side: {"lr": 1e-3, "loss": {"pixel": "l1", "lpips_min_side": side}}
    assert checkpoint.config_changes(saved, now(0)) == {}
    assert checkpoint.config_changes(saved, now(64)) == {"loss.lpips_min_side": (0, 64)}
    # configs without the key (TECO's) gain nothing
    assert checkpoint.config_changes({"lr": 1e-3}, {"lr": 1e-3}) == {}


def test_keeps_last_n_plus_best(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=2, best_metric="lpips")
    state = {"w": jnp.arange(3.0)}
    metrics = {1: {"lpips": 0.1}, 3: {"lpips": 0.5}, 5: {"lpips": 0.4}}
    for step in range(1, 7):
        checkpoint.save(manager, step, state, {"pos": step}, metrics=metrics.get(step))
    manager.wait_until_finished()
    assert list(manager.all_steps()) == [1, 5, 6]   # the best (1) and the last two
    assert manager.best_step() == 1 and manager.latest_step() == 6


def test_saving_small_replicated_arrays_compiles_nothing(tmp_path):
    """Orbax would cut each replicated array into one slice per replica, compiling a program
    per distinct slice at the first save; arrays under MIN_REPLICA_SLICE_BYTES are written whole,
    and read back the same."""
    from jax.sharding import NamedSharding, PartitionSpec

    from teco import sharding

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})
    state = {f"w{i}": jax.device_put(jnp.arange(8.0 * (i + 1) * 3).reshape(-1, 3),
                                     NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
             for i in range(3)}
    state.update({f"b{i}": jax.device_put(jnp.full((i + 2,), float(i)), sharding.replicated(mesh))
                  for i in range(3)})
    compiles = []
    listener = lambda event, secs, **kw: compiles.append(event)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        manager = checkpoint.make_manager(tmp_path)
        checkpoint.save(manager, 1, state, {})
        manager.wait_until_finished()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "/jax/core/compile/backend_compile_duration" not in compiles
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
    restored, _ = checkpoint.restore(checkpoint.make_manager(tmp_path, read_only=True), target, 1)
    for key, value in state.items():
        np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value))


def test_registering_the_array_handler_logs_no_warning(tmp_path):
    """Orbax warns whenever a type handler is replaced; the replacement here is deliberate and
    would otherwise print a WARNING at the start of every run."""
    import logging

    import orbax.checkpoint as ocp

    original = ocp.type_handlers.get_type_handler(jax.Array)
    stock = ocp.type_handlers.ArrayHandler(
        array_metadata_store=getattr(original, "_array_metadata_store", None))
    ocp.type_handlers.register_type_handler(jax.Array, stock, override=True)
    records = []
    catch = logging.Handler()
    catch.emit = records.append
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(catch)
    try:
        checkpoint.make_manager(tmp_path)
        handler = ocp.type_handlers.get_type_handler(jax.Array)
    finally:
        absl_logger.removeHandler(catch)
        ocp.type_handlers.register_type_handler(jax.Array, original, override=True)
    assert handler is not stock
    assert handler._min_slice_bytes_for_replica_parallel == checkpoint.MIN_REPLICA_SLICE_BYTES
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
