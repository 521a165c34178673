"""VQ-GAN network, quantiser gradient, adaptive GAN weight, dead-code restarts and one real step."""
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import teco  # noqa: F401
from teco import sharding, train
from teco.config import load_config
from teco.models.quantizer import l2_normalize, quantize
from teco.models.vqgan import VQGAN, depth_to_space, space_to_depth
from teco.tasks.vqgan import VQGANTask, adaptive_weight, restart_dead_codes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_config(tmp_dir, **overrides):
    """The tiny config, narrower still, GAN and LPIPS on from step 0.

    Every test module uses this one config (and `shared_data_dir`): tasks are static arguments
    of the trainer's jitted functions and compare by config, so the init, the 1-device step and
    the 8-device step compile once per session however many tests use them. Compiling, not
    running, is what these tests spend their time on.
    """
    base = {"vqgan.ch": 8, "vqgan.n_codes": 16, "vqgan.embedding_dim": 8, "vqgan.proj_dim": 4,
            "vqgan.restart_interval": 2, "disc.ch": 8, "disc.n_layers": 1,
            "loss.disc_start": 0, "loss.lpips_weight": 0.5, "batch_size": 8, "warmup_steps": 0,
            "lr": 2e-3, "total_steps": 4, "log_interval": 1, "log_eval_interval": 4,
            "viz_interval": 4, "save_interval": 2, "eval_batches": 1, "keep_checkpoints": 2,
            "progress_interval_secs": 0.0, "mesh.data": 4, "mesh.fsdp": 2,
            "data.data_dir": str(tmp_dir)}
    base.update(overrides)
    return load_config(f"{CONFIGS}/memory_maze_vqgan.py:tiny", base)


def one_device_mesh():
    return sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, jax.devices()[:1])


def smooth_frames(n, size=16, seed=0):
    """Frames with large-scale structure (a VQ-GAN can fit them within a few steps)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(-1, 1, (n, 4, 4, 3))
    return np.clip(np.kron(low, np.ones((1, size // 4, size // 4, 1))), -1, 1).astype(np.float32)


def shared_data_dir(tmp_path_factory):
    """One data path for every test module: equal configs then share compiled programs."""
    path = tmp_path_factory.getbasetemp() / "synthetic_data"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def gan_setup(tmp_path_factory):
    config = small_config(shared_data_dir(tmp_path_factory))
    task = VQGANTask(config)
    mesh = one_device_mesh()
    state, _, shardings = train.create_train_state(task, config, mesh)
    consts = jax.device_put(task.constants(), sharding.replicated(mesh))
    return config, task, mesh, state, shardings, consts


def test_space_to_depth_round_trip():
    x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 4, 4, 12)
    np.testing.assert_array_equal(y[0, 0, 0, :3], x[0, 0, 0])   # row 0, column 0
    np.testing.assert_array_equal(y[0, 0, 0, 3:6], x[0, 0, 1])  # row 0, column 1
    np.testing.assert_array_equal(depth_to_space(y, 2), x)


@pytest.mark.parametrize("image_size, ch_mult, patch_size", [
    (64, (1, 2, 2), 1),   # 4x: the published 64x64 layout
    (64, (1, 2), 2),      # 4x with pixel-unshuffle (the CPU Memory Maze layout)
    (128, (1, 1, 2, 2), 1),  # 8x: 128x128 frames
])
def test_latent_grid_is_16x16(image_size, ch_mult, patch_size):
    def build():
        return VQGAN(image_size=image_size, ch=8, ch_mult=ch_mult, num_res_blocks=1,
                     embedding_dim=8, n_codes=32, proj_dim=4, patch_size=patch_size,
                     rngs=nnx.Rngs(0))
    model = nnx.eval_shape(build)
    assert model.latent_size == 16
    graphdef, params = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
    x_hat, vq = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
    assert x_hat.shape == (2, image_size, image_size, 3)
    assert vq["codes"].shape == (2, 16, 16) and vq["codes"].dtype == jnp.int32


def test_bad_sizes_raise():
    def build(image_size):
        return lambda: VQGAN(image_size=image_size, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                             embedding_dim=8, n_codes=8, proj_dim=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="not divisible"):
        nnx.eval_shape(build(18))
    model = nnx.eval_shape(build(16))
    with pytest.raises(ValueError, match="expected frames"):
        model.encode(jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def test_lpips_sees_frames_of_at_least_lpips_min_side():
    """Frames go to LPIPS upsampled by a whole factor to the net's minimum (AlexNet 31 px), or
    to `loss.lpips_min_side` where larger (the tiny config's 16 px frames: 64 px)."""
    from teco.config import load_config as load
    from teco.tasks.vqgan import _upsample_to

    tiny = load(f"{CONFIGS}/memory_maze_vqgan.py:tiny")
    assert VQGANTask(tiny).lpips_side == 64
    assert _upsample_to(jnp.zeros((2, 16, 16, 3)), 64).shape == (2, 64, 64, 3)
    assert _upsample_to(jnp.zeros((2, 24, 24, 3)), 31).shape == (2, 48, 48, 3)
    assert _upsample_to(jnp.zeros((2, 64, 64, 3)), 31).shape == (2, 64, 64, 3)
    full = load(f"{CONFIGS}/memory_maze_vqgan.py")
    assert full.loss.lpips_min_side == 0 and VQGANTask(full).lpips_side == 31
    with pytest.raises(ValueError, match="loss.lpips_min_side must be >= 0, got -1"):
        VQGANTask(load(f"{CONFIGS}/memory_maze_vqgan.py:tiny", {"loss.lpips_min_side": -1}))


def test_remat_same_loss_and_grads():
    """`remat` recomputes the res blocks in the backward pass: the same loss and gradients.
    (Its memory saving is not asserted: XLA's CPU memory analysis does not show one, for TECO's
    transformers either; launch/README.md.)"""
    kw = dict(image_size=32, ch=16, ch_mult=(1, 2), num_res_blocks=2, embedding_dim=8,
              n_codes=8, proj_dim=4)
    x = jnp.asarray(smooth_frames(4, size=32))
    _, state = nnx.split(VQGAN(**kw, rngs=nnx.Rngs(0)))
    results = {}
    for remat in (False, True):
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: VQGAN(**kw, remat=remat, rngs=nnx.Rngs(0))))

        def loss(s, x, graphdef=graphdef):
            x_hat, _ = nnx.merge(graphdef, s)(x)
            return jnp.mean(jnp.square(x_hat - x))
        results[remat] = jax.jit(jax.value_and_grad(loss))(state, x)
    (l0, g0), (l1, g1) = results[False], results[True]
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_reconstruction_shapes_and_finite(gan_setup):
    config, task, _, state, _, _ = gan_setup
    x = smooth_frames(4)
    x_hat, vq = jax.jit(task.reconstruct)(state.params, x)
    assert x_hat.shape == x.shape and x_hat.dtype == jnp.float32
    assert vq["codes"].shape == (4, 8, 8)
    assert int(vq["codes"].min()) >= 0 and int(vq["codes"].max()) < config.vqgan.n_codes
    assert bool(jnp.all(jnp.isfinite(x_hat))) and bool(jnp.all(jnp.abs(x_hat) <= 1.0))
    for k in ("commitment_loss", "codebook_loss", "perplexity"):
        assert np.isfinite(float(vq[k]))


def test_straight_through_gradient():
    """d(embeddings)/dz equals the gradient of the un-quantised path proj_out(p)."""
    k = jax.random.split(jax.random.key(0), 4)
    z = jax.random.normal(k[0], (5, 6))
    w_in, w_out = jax.random.normal(k[1], (6, 3)), jax.random.normal(k[2], (3, 6))
    codebook, probe = jax.random.normal(k[3], (8, 3)), jnp.linspace(-1, 1, 30).reshape(5, 6)
    quantised = lambda z: jnp.sum(quantize(z, w_in, w_out, codebook)["embeddings"] * probe)
    identity = lambda z: jnp.sum(l2_normalize(z @ w_in) @ w_out * probe)
    g, g_identity = jax.jit(lambda z: (jax.grad(quantised)(z), jax.grad(identity)(z)))(z)
    assert float(jnp.max(jnp.abs(g))) > 0
    np.testing.assert_allclose(g, g_identity, rtol=1e-5, atol=1e-6)
    # The forward value is the code's, not the encoder output's.
    out = jax.jit(quantize)(z, w_in, w_out, codebook)
    q = l2_normalize(codebook)[out["codes"]]
    np.testing.assert_allclose(out["embeddings"], q @ w_out, rtol=1e-5, atol=1e-5)


def test_adaptive_weight_by_hand():
    grad_rec = {"kernel": jnp.array([[3.0, 0.0], [0.0, 4.0]])}   # norm 5
    grad_gan = {"kernel": jnp.array([[0.0, 1.0], [2.0, 2.0]])}   # norm 3
    np.testing.assert_allclose(float(adaptive_weight(grad_rec, grad_gan, 1e-6)),
                               5.0 / (3.0 + 1e-6), rtol=1e-6)
    # No GAN gradient: the ratio is clipped, not infinite.
    zero = {"kernel": jnp.zeros((2, 2))}
    assert float(adaptive_weight(grad_rec, zero, 1e-6, max_value=1e4)) == 1e4
    # No gradient flows through lambda.
    g = jax.grad(lambda s: adaptive_weight({"k": s * grad_rec["kernel"]}, grad_gan))(1.0)
    assert float(g) == 0.0


def test_restart_dead_codes_by_hand():
    codebook = jnp.array([[3.0, 4.0], [0.0, 5.0], [0.1, 0.0], [0.0, 0.1]])  # live rows: norm 5
    usage = jnp.array([0.5, 0.5, 0.0, 0.001])
    candidates = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    restart = jax.jit(lambda *a: restart_dead_codes(*a, threshold=0.03))  # dead below 0.03 / 4
    new, new_usage, n = restart(codebook, usage, candidates, jax.random.key(0))
    assert int(n) == 2
    np.testing.assert_array_equal(new[:2], codebook[:2])
    for row in np.asarray(new[2:]):
        np.testing.assert_allclose(np.linalg.norm(row), 5.0, rtol=1e-6)
        assert any(np.allclose(row / 5.0, c) for c in np.asarray(candidates))
    np.testing.assert_allclose(new_usage, [0.5, 0.5, 0.25, 0.25])


def test_gan_train_step_lowers_loss(gan_setup):
    config, task, mesh, state, shardings, consts = gan_setup
    assert task.phase(0) == "gan"
    step = train.make_train_step(task, mesh, shardings, "gan")
    state = jax.tree.map(jnp.copy, state)  # the step donates its input; keep the fixture's
    batch = jax.device_put({"video": smooth_frames(8)[:, None],
                            "actions": np.zeros((8, 1), np.int32)}, sharding.batch_sharding(mesh))
    history = []
    for _ in range(4):
        state, metrics = step(state, batch, consts)
        history.append(jax.device_get(metrics))
    assert int(state.step) == 4
    for m in history:
        for key, value in m.items():
            assert math.isfinite(float(value)), key
        assert float(m["adaptive_weight"]) > 0
    # metrics of step i are the loss at the parameters before update i.
    assert history[-1]["rec_loss"] < history[0]["rec_loss"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"disc_loss", "gan_loss", "lpips_loss", "codes_restarted", "perplexity"} <= set(history[0])
