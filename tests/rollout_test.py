"""Cached rollout == the authors' recompute-everything rollout, within and past the window."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import teco  # noqa: F401  (disables eager sharding)
from teco import rollout
from teco.models.teco import TECO

VQ_CODES, VQ_DIM, GRID = 16, 8, (8, 8)


def small_model(**kwargs):
    model = TECO(vq_n_codes=VQ_CODES, vq_embedding_dim=VQ_DIM, latent_shape=GRID, seq_len=4,
                 n_cond=1, encoder_depths=(32, 32), encoder_blocks=1, decoder_depths=(32, 32),
                 decoder_blocks=1, embedding_dim=8, n_codes=16, proj_dim=4, z_ds=2,
                 tfm_embed_dim=32, tfm_mlp_dim=32, tfm_num_heads=2, tfm_num_layers=1,
                 git_vocab_dim=8, git_embed_dim=32, git_mlp_dim=32, git_num_heads=2,
                 git_num_layers=1, action_dim=3, action_embed_dim=4, rngs=nnx.Rngs(0), **kwargs)
    # Larger token embeddings make the random prior's logits decisive, like a trained one.
    model.z_git.token_embed[...] = model.z_git.token_embed[...] * 50
    table = jax.random.normal(jax.random.key(1), (VQ_CODES, VQ_DIM))
    return model, table


@pytest.fixture(scope="module")
def model_and_table():
    return small_model()


def inputs(b, c, n_new, seed=0):
    rng = np.random.default_rng(seed)
    codes = jnp.asarray(rng.integers(0, VQ_CODES, (b, c, *GRID)), jnp.int32)
    actions = jnp.asarray(rng.integers(0, 3, (b, c + n_new)), jnp.int32)
    return codes, actions


def run_both(model, table, c, n_new, spec):
    codes, actions = inputs(2, c, n_new)
    key = jax.random.key(7)
    graphdef, state = nnx.split(model)

    @jax.jit
    def fast(state, codes, actions, key):
        return rollout.rollout(nnx.merge(graphdef, state), table, codes, actions, key,
                               n_new=n_new, spec=spec)

    got = fast(state, codes, actions, key)
    want = rollout.rollout_reference(model, table, codes, actions, key, n_new=n_new, spec=spec)
    return np.asarray(got), np.asarray(want), np.asarray(codes)


@pytest.mark.parametrize("c,n_new,guidance", [(2, 6, 1.0), (5, 2, 2.0)])
def test_cached_rollout_equals_reference(model_and_table, c, n_new, guidance):
    model, table = model_and_table
    spec = rollout.SamplerSpec(T_draft=2, T_revise=2, M=1, guidance_scale=guidance)
    got, want, codes = run_both(model, table, c, n_new, spec)
    assert got.shape == (2, c + n_new, *GRID)
    np.testing.assert_array_equal(got[:, :c], codes)       # the context is passed through
    np.testing.assert_array_equal(got, want)               # (2, 6): slides past seq_len=4
    assert (got >= 0).all() and (got < VQ_CODES).all()


def test_reading_the_previous_frame_rolls_out_from_its_own_frames():
    """decoder_prev_frame and prior_prev_frame: both paths feed the decoder and the prior (the
    guided one too) the frame before, the context's last and then the imagined ones, and the
    frame drawn changes with it."""
    model, table = small_model(decoder_prev_frame=True, prior_prev_frame=True)
    folded = 2 * 2 * VQ_DIM   # z 4x4, VQ 8x8: 2x2 VQ vectors per z cell
    assert model.decoder.conv_in.kernel.shape[2] == 2 * 8 + folded          # deter + z + prev
    assert model.z_git.net.fc_in.kernel.shape[0] == 8 + 8 + folded          # token + deter + prev
    spec = rollout.SamplerSpec(T_draft=2, T_revise=2, M=1, guidance_scale=2.0)
    got, want, codes = run_both(model, table, 2, 6, spec)
    np.testing.assert_array_equal(got, want)
    deter = jax.random.normal(jax.random.key(2), (2, *model.z_shape, 8))
    frames = [rollout.decode_frame(model, table, deter, deter, jax.random.key(3), spec,
                                   prev_codes_BHW=jnp.full((2, *GRID), code))[0] for code in (0, 1)]
    assert not np.array_equal(frames[0], frames[1])
    for fn, flag in ((model.decoder_input, "decoder_prev_frame"),
                     (model.prior_condition, "prior_prev_frame")):
        with pytest.raises(ValueError, match=f"{flag} needs the previous frame's VQ embeddings"):
            fn(jnp.zeros((2, *model.z_shape, 8)))


def test_reading_the_action_in_the_heads_rolls_out_like_the_reference():
    """decoder_action and prior_action: both paths feed the decoder and the prior frame t's
    action (the no-action one to the guided path's unconditioned logits), and the frame drawn
    changes with it."""
    model, table = small_model(decoder_action=True, prior_action=True, decoder_prev_frame=True)
    folded = 2 * 2 * VQ_DIM
    assert model.decoder.conv_in.kernel.shape[2] == 2 * 8 + folded + 4     # deter + z + prev + a
    assert model.z_git.net.fc_in.kernel.shape[0] == 8 + 8 + 4               # token + deter + a
    for guidance in (1.0, 2.0):
        spec = rollout.SamplerSpec(T_draft=2, T_revise=2, M=1, guidance_scale=guidance)
        got, want, _ = run_both(model, table, 2, 6, spec)
        np.testing.assert_array_equal(got, want)
    spec = rollout.SamplerSpec(T_draft=2, T_revise=2, M=1)
    deter = jax.random.normal(jax.random.key(2), (2, *model.z_shape, 8))
    prev = jnp.zeros((2, *GRID), jnp.int32)
    frames = [rollout.decode_frame(model, table, deter, deter, jax.random.key(3), spec,
                                   prev_codes_BHW=prev,
                                   action_emb_BA=model.embed_actions(jnp.full((2,), a)))[0]
              for a in (0, 1)]
    assert not np.array_equal(frames[0], frames[1])
    for fn, flag in ((model.decoder_input, "decoder_action"), (model.prior_condition, "prior_action")):
        with pytest.raises(ValueError, match=f"{flag} needs the frame's action embedding"):
            fn(jnp.zeros((2, *model.z_shape, 8)), jnp.zeros((2, *GRID, VQ_DIM)))


def test_recall_rolls_out_like_the_reference_from_the_frames_in_reach():
    """recall: both paths (guided too, past the window) feed the decoder and the prior the same
    recalled frames; frame t recalls from frames t - recall_reach .. t - 1 only (here reaching
    past the window of 4), matched by the actions since each of them, exactly as the same
    frames recall in a training clip."""
    model, table = small_model(recall=True, prior_prev_frame=True, recall_reach=5)
    features = 2 * 2 * VQ_DIM + 1                   # folded frames and how sure the match is
    assert model.decoder.conv_in.kernel.shape[2] == 2 * 8 + features        # deter + z + recalled
    assert model.z_git.net.fc_in.kernel.shape[0] == 8 + 8 + 2 * 2 * VQ_DIM + features  # + prev
    spec = rollout.SamplerSpec(T_draft=2, T_revise=2, M=1, guidance_scale=2.0)  # both paths
    got, want, _ = run_both(model, table, 2, 6, spec)
    np.testing.assert_array_equal(got, want)
    rng = np.random.default_rng(1)
    hist = jnp.asarray(rng.integers(0, VQ_CODES, (2, 8, *GRID)), jnp.int32)
    actions = jnp.asarray(rng.integers(0, 3, (2, 8)), jnp.int32)
    emb = jnp.take(table, hist, axis=0)
    for t in (2, 7):   # frames 0, 1 and 2..6 are in reach
        base = rollout.recall_window(model, table, hist, actions, t)
        assert base.shape == (2, *model.z_shape, features)
        first = max(t - 5, 0)
        in_clip = model.recall_in_clip(actions[:, first:t + 1], emb[:, first:t + 1],
                                       jnp.asarray([t - first]))[:, 0]
        np.testing.assert_allclose(np.asarray(base), np.asarray(in_clip), rtol=1e-5, atol=1e-5)
    for frame, in_reach in ((1, False), (2, True), (6, True), (7, False)):
        changed = hist.at[:, frame].set((hist[:, frame] + 1) % VQ_CODES)
        moved = not np.allclose(rollout.recall_window(model, table, changed, actions, t), base)
        assert moved == in_reach, frame
    # the match reads the actions that lead from a frame in reach to frame t: 3..7
    for frame, read in ((2, False), (3, True), (7, True)):
        changed = actions.at[:, frame].set((actions[:, frame] + 1) % 3)
        moved = not np.allclose(rollout.recall_window(model, table, hist, changed, t), base,
                                atol=1e-4)   # phases are sums: float32 rounding moves a little
        assert moved == read, frame
    with pytest.raises(ValueError, match="recall needs the recalled frames"):
        model.decoder_input(jnp.zeros((2, *model.z_shape, 8)))


def test_recall_skips_the_nearest_frames_in_rollouts_and_clips_alike():
    """recall_skip=2: frame t recalls from frames t - recall_reach .. t - 3 only, in a rollout
    as in a training clip, and both rollout paths still agree."""
    model, table = small_model(recall=True, prior_prev_frame=True, recall_reach=5, recall_skip=2)
    spec = rollout.SamplerSpec(T_draft=2, T_revise=2, M=1)
    got, want, _ = run_both(model, table, 2, 6, spec)
    np.testing.assert_array_equal(got, want)
    rng = np.random.default_rng(2)
    hist = jnp.asarray(rng.integers(0, VQ_CODES, (2, 8, *GRID)), jnp.int32)
    actions = jnp.asarray(rng.integers(0, 3, (2, 8)), jnp.int32)
    t = 7
    base = rollout.recall_window(model, table, hist, actions, t)
    in_clip = model.recall_in_clip(actions[:, 2:], jnp.take(table, hist, axis=0)[:, 2:],
                                   jnp.asarray([t - 2]))[:, 0]
    np.testing.assert_allclose(np.asarray(base), np.asarray(in_clip), rtol=1e-5, atol=1e-5)
    for frame, in_reach in ((1, False), (2, True), (4, True), (5, False), (6, False)):
        changed = hist.at[:, frame].set((hist[:, frame] + 1) % VQ_CODES)
        moved = not np.allclose(rollout.recall_window(model, table, changed, actions, t), base)
        assert moved == in_reach, frame
    early = rollout.recall_window(model, table, hist, actions, 2)   # nothing far enough back
    np.testing.assert_array_equal(np.asarray(early), 0.0)
    with pytest.raises(ValueError, match="recall_skip must be in"):
        small_model(recall=True, recall_skip=3)   # seq_len 4: no frame left to recall


def test_fixed_tokens_are_kept(model_and_table):
    model, table = model_and_table
    codes, actions = inputs(2, 2, 3)
    fixed_codes = jnp.full((2, 3, 4, 4), 5, jnp.int32)
    fixed_mask = jnp.zeros((2, 3, 4, 4), bool).at[:, :, :2].set(True)
    spec = rollout.SamplerSpec(T_draft=2, T_revise=2, M=1, temperature=0.0)
    got = rollout.rollout(model, table, codes, actions, jax.random.key(0), n_new=3, spec=spec,
                          fixed_codes=fixed_codes, fixed_mask=fixed_mask)
    assert got.shape == (2, 5, *GRID)


def test_bad_arguments(model_and_table):
    model, table = model_and_table
    codes, actions = inputs(1, 2, 3)
    spec = rollout.SamplerSpec()
    with pytest.raises(ValueError, match="actions cover 5 frames, expected n_context \\+ n_new = 6"):
        rollout.rollout(model, table, codes, actions, jax.random.key(0), n_new=4, spec=spec)
