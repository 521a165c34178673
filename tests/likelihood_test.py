"""The teacher-forced place-memory probe: which frames each NLL is conditioned on."""
import numpy as np
import pytest
from flax import nnx

import jax
import teco  # noqa: F401  (disables eager sharding)
from teco import likelihood
from teco.likelihood import action_gain, context_nll, frame_nll, shuffled_actions
from teco.models.teco import TECO

VQ_CODES, VQ_DIM, GRID, WINDOW = 16, 8, (8, 8), 6


MODEL = dict(vq_n_codes=VQ_CODES, vq_embedding_dim=VQ_DIM, latent_shape=GRID, seq_len=WINDOW,
             n_cond=1, encoder_depths=(32, 32), encoder_blocks=1, decoder_depths=(32, 32),
             decoder_blocks=1, embedding_dim=8, n_codes=16, proj_dim=4, z_ds=2,
             tfm_embed_dim=32, tfm_mlp_dim=32, tfm_num_heads=2, tfm_num_layers=1,
             git_vocab_dim=8, git_embed_dim=32, git_mlp_dim=32, git_num_heads=2,
             git_num_layers=1, action_dim=3, action_embed_dim=4)


@pytest.fixture(scope="module")
def model_and_table():
    model = TECO(**MODEL, rngs=nnx.Rngs(0))
    return model, np.asarray(jax.random.normal(jax.random.key(1), (VQ_CODES, VQ_DIM)))


def clip(seed, t=12, b=2):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VQ_CODES, (b, t, *GRID)), rng.integers(0, 3, (b, t))


@pytest.mark.parametrize("recall", [False, True])
def test_each_frame_sees_its_window_and_the_short_context_only_its_last_frames(model_and_table,
                                                                             recall):
    """(recall: what a frame recalls stays inside its window too.)"""
    model, table = model_and_table
    if recall:
        model = TECO(**MODEL, recall=True, rngs=nnx.Rngs(0))
    codes, actions = clip(0)
    # 5 context frames, the last 2 kept: short windows start at frame 3, so frames 5..8 are
    # probed (a 6-frame window from 3 ends at 8) and 9..11 are not.
    full, short = context_nll(model, table, codes, actions, n_context=5, short_context=2)
    assert full.shape == short.shape == (2, 7)
    assert np.isfinite(full[:, :4]).all() and np.isnan(full[:, 4:]).all()
    assert np.isfinite(short[:, :4]).all() and np.isnan(short[:, 4:]).all()
    assert (full[:, :4] > 0).all() and (full[:, :4] < 2 * np.log(16)).all()
    # Frame 8's window is [3, 9): the short one.
    np.testing.assert_array_equal(full[:, 3], short[:, 3])
    # Frames before 3 reach the full NLL of frames 5..7 only; frames after 8 reach nothing.
    early = codes.copy()
    early[:, :3] = clip(1)[0][:, :3]
    full_e, short_e = context_nll(model, table, early, actions, n_context=5, short_context=2)
    np.testing.assert_array_equal(short_e, short)
    assert (np.abs(full_e[:, :3] - full[:, :3]) > 1e-6).any(axis=0).all()
    np.testing.assert_array_equal(full_e[:, 3], full[:, 3])
    late = codes.copy()
    late[:, 9:] = clip(2)[0][:, 9:]
    full_l, short_l = context_nll(model, table, late, actions, n_context=5, short_context=2)
    np.testing.assert_array_equal(full_l, full)
    np.testing.assert_array_equal(short_l, short)
    # The window that ends at frame 7 starts at 2: its last NLL is frame 7's.
    # (frame_nll compiled as the probe compiles it: run eagerly it compiles ~270 programs)
    direct = likelihood._window_nll(model)(table, codes[:, 2:8], actions[:, 2:8])
    np.testing.assert_allclose(full[:, 2], direct[:, -1], rtol=1e-6)


def test_a_clip_too_short_for_the_short_window_is_all_nan(model_and_table):
    model, table = model_and_table
    codes, actions = clip(0, t=8)
    full, short = context_nll(model, table, codes, actions, n_context=5, short_context=2)
    assert full.shape == (2, 3) and np.isnan(full).all() and np.isnan(short).all()


@pytest.mark.parametrize("n_context, short_context, message", [
    (5, 0, "short_context=0 must be at least n_cond=1"),
    (5, 5, "fewer than n_context=5"),
    (12, 2, "n_context=12 leaves no frame of 12 to predict"),
])
def test_bad_contexts_raise(model_and_table, n_context, short_context, message):
    model, table = model_and_table
    codes, actions = clip(0)
    with pytest.raises(ValueError, match=message):
        context_nll(model, table, codes, actions, n_context, short_context)


def test_action_gain_compares_the_last_window_with_true_and_shuffled_actions(model_and_table):
    """action_gain: NLL with the clip's actions shuffled in time minus with the true ones, on
    the predicted frames of the window that ends at the clip's last frame; 0 for a model that
    ignores its actions."""
    model, table = model_and_table
    codes, actions = clip(3)
    gain = action_gain(model, table, codes, actions, n_context=4)   # window [6, 12): 7..11
    assert gain.shape == (2, 8)
    assert np.isnan(gain[:, :3]).all() and np.isfinite(gain[:, 3:]).all()
    wrong = shuffled_actions(actions[:, 6:])
    assert (np.sort(wrong, axis=1) == np.sort(actions[:, 6:], axis=1)).all()
    assert (wrong != actions[:, 6:]).any()
    with_a = np.asarray(frame_nll(model, table, codes[:, 6:], actions[:, 6:]))
    with_wrong = np.asarray(frame_nll(model, table, codes[:, 6:], wrong))
    np.testing.assert_allclose(gain[:, 3:], (with_wrong - with_a), rtol=1e-5, atol=1e-6)
    assert (np.abs(gain[:, 3:]) > 1e-6).any()
    blind = TECO(**{**MODEL, "use_actions": False}, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(action_gain(blind, table, codes, actions, n_context=4)[:, 3:], 0)
    assert np.isnan(action_gain(model, table, codes[:, :5], actions[:, :5], n_context=4)).all()
