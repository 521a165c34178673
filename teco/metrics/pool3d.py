"""Max pooling as elementwise maxima of strided slices, for I3D on CPUs.

XLA's CPU backend runs `lax.reduce_window` as a scalar loop over every window: I3D's max pools
(3x3x3 and 1x3x3, stride 1 or 2, 'SAME') took ~30% of its time on 100-frame videos, more than
any convolution. A max over a box is the max over each axis in turn, and a max over one axis's
window is an elementwise maximum of the window's shifted strided slices, which XLA fuses and
vectorises. Max is exact, so `max_pool_same` gives `flax.linen.max_pool(..., padding="SAME")`'s
values bit for bit. `benchmarks/fvd_features.py` measures the effect on I3D.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def max_pool_same(x: jax.Array, window_shape, strides) -> jax.Array:
    """`flax.linen.max_pool(x, window_shape, strides, padding="SAME")` for x (B, *spatial, C):
    padding as TensorFlow's 'SAME' (the extra cell at the end), padded cells never win."""
    window_shape = tuple(int(k) for k in window_shape)
    strides = tuple(int(s) for s in strides)
    spatial = x.shape[1:-1]
    if len(window_shape) != len(spatial) or len(strides) != len(spatial):
        raise ValueError(f"max_pool_same: input {x.shape} has {len(spatial)} spatial axes, got "
                         f"window {window_shape} and strides {strides}")
    if min(window_shape + strides, default=1) < 1:
        raise ValueError(f"max_pool_same: window and strides must be >= 1, got {window_shape} "
                         f"and {strides}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"max_pool_same: needs a floating-point input, got {x.dtype}")
    pads = jax.lax.padtype_to_pads(spatial, window_shape, strides, "SAME")
    for axis, (k, s, (lo, hi)) in enumerate(zip(window_shape, strides, pads), start=1):
        x = _max_over_axis(x, axis, k, s, lo, hi)
    return x


def _max_over_axis(x, axis: int, k: int, s: int, lo: int, hi: int):
    if k == 1 and s == 1:
        return x
    if lo or hi:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (lo, hi)
        x = jnp.pad(x, widths, constant_values=-jnp.inf)
    n_out = (x.shape[axis] - k) // s + 1
    out = None
    for j in range(k):
        tap = jax.lax.slice_in_dim(x, j, j + (n_out - 1) * s + 1, stride=s, axis=axis)
        out = tap if out is None else jnp.maximum(out, tap)
    return out
