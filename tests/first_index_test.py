"""teco.first_index against jnp.argmin / jnp.argmax, and the samplers that use it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teco import sampling
from teco.first_index import first_argmax, first_argmin


@pytest.mark.parametrize("fn, reference", [(first_argmin, np.argmin), (first_argmax, np.argmax)])
def test_first_index_is_numpys_with_ties_and_nan(fn, reference):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 512)).astype(np.float32)
    extreme = -10.0 if fn is first_argmin else 10.0
    x[0, :, 9] = x[0, :, 400] = extreme  # tied: the first index wins
    x[1, 2, 0] = x[1, 2, 511] = extreme
    x[2, 1, 3] = -np.inf
    got = np.asarray(jax.jit(fn)(x))
    np.testing.assert_array_equal(got, reference(x, axis=-1))
    assert got.dtype == np.int32 and (got[0] == 9).all() and got[1, 2] == 0
    x[2, 3, 5] = np.nan  # never an index out of range (a gather would clamp it silently)
    assert 0 <= int(jax.jit(fn)(x)[2, 3]) < 512


def test_sample_logits_draws_jax_categoricals_samples():
    """The same key gives the same codes as jax.random.categorical, at any temperature, with
    and without top-k; temperature 0 is the argmax."""
    logits = jax.random.normal(jax.random.key(0), (2, 64, 512)) * 3
    for temperature, top_k in [(1.0, 0), (0.5, 0), (1.0, 16)]:
        for seed in range(3):
            key = jax.random.key(seed)
            want = jax.random.categorical(key, sampling.top_k_filter(logits, top_k) / temperature)
            got = jax.jit(sampling.sample_logits, static_argnums=(2, 3))(key, logits,
                                                                         temperature, top_k)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(sampling.sample_logits(key, logits, 0.0)),
                                  np.asarray(jnp.argmax(logits, -1)))
