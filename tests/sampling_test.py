"""MaskGit decoding algorithms: counts per pass, fixed tokens, guidance, top-k."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teco import sampling

B, L, V = 3, 16, 11


def recording_logits_fn(record):
    """Logits that favour token (position % V), and a log of how many MASKs each pass saw."""
    def fn(tokens):
        record.append(tokens)
        return jax.nn.one_hot(jnp.arange(L) % V, V)[None].repeat(tokens.shape[0], 0) * 50.0
    return fn


def test_group_ids_split_like_array_split():
    ids = np.asarray(sampling.group_ids(jax.random.key(0), B, 10, 4))
    for row in ids:
        np.testing.assert_array_equal(np.bincount(row, minlength=4), [3, 3, 2, 2])
    assert not np.array_equal(ids[0], ids[1])  # each video has its own order


def test_draft_and_revise_unmasks_one_group_per_pass():
    seen = []
    fixed = jnp.zeros((B, L), bool)
    out = jax.jit(lambda k: sampling.draft_and_revise(
        recording_logits_fn(seen), k, jnp.zeros((B, L), jnp.int32), fixed,
        T_draft=4, T_revise=2, M=2), )(jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(out), np.tile(np.arange(L) % V, (B, 1)))
    # Traced once inside fori_loop; check the counts by running the loop body eagerly instead.
    seen.clear()
    with jax.disable_jit():
        sampling.draft_and_revise(recording_logits_fn(seen), jax.random.key(1),
                                  jnp.zeros((B, L), jnp.int32), fixed, T_draft=4, T_revise=2, M=2)
    masked = [int((np.asarray(t) == -1).sum(-1)[0]) for t in seen]
    assert len(masked) == 4 + 2 * 2
    assert masked[:4] == [16, 12, 8, 4]        # draft: 4 groups of 4, the rest still MASK
    assert masked[4:] == [8, 8, 8, 8]          # revise: half the frame re-generated per pass


def test_confidence_schedule_counts():
    seen = []
    with jax.disable_jit():
        sampling.confidence_decode(recording_logits_fn(seen), jax.random.key(2),
                                   jnp.zeros((B, L), jnp.int32), jnp.zeros((B, L), bool), steps=4)
    masked = [int((np.asarray(t) == -1).sum(-1)[0]) for t in seen]
    expected = [L] + [int(sampling.masked_after_step(L, s, 4, xp=np)) for s in range(3)]
    assert masked == expected
    assert expected == [16, 14, 11, 6]        # floor(16 cos(pi/2 * s/4)) for s = 1..3


@pytest.mark.parametrize("decoder", ["draft_revise", "confidence"])
def test_fixed_tokens_stay_fixed(decoder):
    rng = np.random.default_rng(0)
    given = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    fixed = jnp.asarray(rng.random((B, L)) < 0.4)
    logits_fn = lambda t: jax.random.normal(jax.random.key(3), (t.shape[0], L, V))
    if decoder == "draft_revise":
        out = sampling.draft_and_revise(logits_fn, jax.random.key(4), given, fixed,
                                        T_draft=3, T_revise=3, M=1)
    else:
        out = sampling.confidence_decode(logits_fn, jax.random.key(4), given, fixed, steps=5)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[np.asarray(fixed)], np.asarray(given)[np.asarray(fixed)])
    assert (out >= 0).all() and (out < V).all()


def test_guidance_scale_zero_and_one():
    cond, uncond = jnp.array([1.0, 2.0]), jnp.array([-3.0, 0.5])
    np.testing.assert_allclose(sampling.mix_guidance(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(sampling.mix_guidance(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(sampling.mix_guidance(cond, uncond, 2.0), 2 * cond - uncond)


def test_top_k_and_temperature_zero():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0]])
    filtered = sampling.top_k_filter(logits, 2)
    assert np.isinf(np.asarray(filtered)[0, [0, 2]]).all()
    draws = jax.vmap(lambda k: sampling.sample_logits(k, logits, 1.0, 2))(
        jax.random.split(jax.random.key(0), 200))
    assert set(np.unique(np.asarray(draws))) <= {1, 3}
    assert int(sampling.sample_logits(jax.random.key(0), logits, 0.0)[0]) == 1


def test_temperature_zero_on_the_command_line_is_the_configs_argmax():
    from ml_collections import ConfigDict

    from teco import eval as teco_eval
    from teco.sample import sampler_spec

    config = ConfigDict(dict(sampler="draft_revise", T_draft=8, T_revise=8, M=2,
                             temperature=1.0, top_k=0, guidance_scale=1.0))
    args = teco_eval.parse(["--workdir=w", "--temperature=0"])
    assert sampler_spec(config, args).temperature == 0.0
    assert sampler_spec(config, teco_eval.parse(["--workdir=w"])).temperature == 1.0


@pytest.mark.parametrize("flags, warned", [
    (["--guidance_scale=2"], True), (["--no_actions"], True), ([], False)])
def test_the_no_action_token_of_a_model_trained_without_action_dropout_is_warned_of(
        capsys, flags, warned):
    from ml_collections import ConfigDict

    from teco import eval as teco_eval
    from teco.sample import sampler_spec

    config = ConfigDict(dict(sampler="draft_revise", T_draft=8, T_revise=8, M=2, temperature=1.0,
                             top_k=0, guidance_scale=1.0, use_actions=True, dropout_actions=False))
    sampler_spec(config, teco_eval.parse(["--workdir=w", *flags]))
    assert ("never learnt the no-action token" in capsys.readouterr().err) == warned
    sampler_spec(ConfigDict(dict(config, dropout_actions=True)),
                 teco_eval.parse(["--workdir=w", *flags]))
    assert capsys.readouterr().err == ""
