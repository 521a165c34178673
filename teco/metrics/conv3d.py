"""3-D convolutions as faster equivalent XLA ops, for I3D on CPUs.

XLA's CPU convolution handles 3-D kernels much worse than 2-D ones, and a first layer with 3
input channels worst of all: I3D's 7x7x7 stride-2 stem spends half of I3D's time at ~25 GFLOP/s.
`conv3d_same` computes the same convolution ('SAME' padding as TensorFlow, no dilation, one
group) as
  - a space-to-depth by the stride, then a stride-1 convolution, when every stride is s > 1
    (the stem: 3 -> 24 input channels, ~1.6x faster);
  - a sum over the kernel's temporal taps of 2-D convolutions otherwise (3x3x3 kernels:
    1.2-1.9x faster).
Only the order of the sums differs from `lax.conv_general_dilated` (~1e-6 relative).
`benchmarks/fvd_features.py` measures the effect on I3D.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_DIMS_2D = ("NHWC", "HWIO", "NHWC")
_DIMS_3D = ("NDHWC", "DHWIO", "NDHWC")


def conv3d_same(x_BTHWC: jax.Array, kernel_THWIO: jax.Array, strides=(1, 1, 1)) -> jax.Array:
    """'SAME' 3-D convolution, (B, T, H, W, Cin) * (kt, kh, kw, Cin, Cout) -> (B, T', H', W', Cout)
    with T' = ceil(T / st) etc.; equal to `lax.conv_general_dilated` up to float rounding."""
    strides = tuple(int(s) for s in strides)
    if x_BTHWC.ndim != 5 or kernel_THWIO.ndim != 5 or len(strides) != 3:
        raise ValueError(f"conv3d_same: need (B, T, H, W, C) inputs, a 5-D kernel and 3 strides, "
                         f"got shapes {x_BTHWC.shape}, {kernel_THWIO.shape} and strides {strides}")
    if x_BTHWC.shape[-1] != kernel_THWIO.shape[3]:
        raise ValueError(f"conv3d_same: {x_BTHWC.shape[-1]} input channels, the kernel expects "
                         f"{kernel_THWIO.shape[3]}")
    if min(strides) < 1:
        raise ValueError(f"conv3d_same: strides must be >= 1, got {strides}")
    pads = jax.lax.padtype_to_pads(x_BTHWC.shape[1:4], kernel_THWIO.shape[:3], strides, "SAME")
    if strides[0] > 1 and len(set(strides)) == 1:
        return _space_to_depth_conv(x_BTHWC, kernel_THWIO, strides[0], pads)
    return _temporal_taps_conv(x_BTHWC, kernel_THWIO, strides, pads)


def _temporal_taps_conv(x, kernel, strides, pads):
    """sum over dt of conv2d(frames t*st + dt, kernel[dt]): 2-D convolutions of all B*T' frames."""
    b, t = x.shape[:2]
    kt, st = kernel.shape[0], strides[0]
    t_out = -(-t // st)
    x = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0)))
    out = None
    for dt in range(kt):
        frames = x[:, dt:dt + (t_out - 1) * st + 1:st]
        frames = frames.reshape((b * t_out,) + frames.shape[2:])
        y = jax.lax.conv_general_dilated(frames, kernel[dt], strides[1:], pads[1:],
                                         dimension_numbers=_DIMS_2D)
        out = y if out is None else out + y
    return out.reshape((b, t_out) + out.shape[1:])


def _space_to_depth_conv(x, kernel, s, pads):
    """Stride-s convolution as a stride-1 one on s x s x s blocks (s**3 * Cin channels), the
    kernel zero-padded to a multiple of s."""
    b, cin, cout = x.shape[0], x.shape[-1], kernel.shape[-1]
    outs = [-(-n // s) for n in x.shape[1:4]]
    ks = [math.ceil(k / s) * s for k in kernel.shape[:3]]
    # Inputs needed for `out` outputs of a kernel of k: (out - 1) * s + k, a multiple of s.
    lengths = [(o - 1) * s + k for o, k in zip(outs, ks)]
    x = jnp.pad(x, ((0, 0),) + tuple((lo, length - n - lo) for (lo, _), length, n
                                    in zip(pads, lengths, x.shape[1:4])) + ((0, 0),))
    kernel = jnp.pad(kernel, tuple((0, k - n) for k, n in zip(ks, kernel.shape[:3])) + ((0, 0),) * 2)
    lt, lh, lw = (length // s for length in lengths)
    x = x.reshape(b, lt, s, lh, s, lw, s, cin).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    x = x.reshape(b, lt, lh, lw, s ** 3 * cin)
    kt, kh, kw = (k // s for k in ks)
    kernel = kernel.reshape(kt, s, kh, s, kw, s, cin, cout).transpose(0, 2, 4, 1, 3, 5, 6, 7)
    kernel = kernel.reshape(kt, kh, kw, s ** 3 * cin, cout)
    return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "VALID", dimension_numbers=_DIMS_3D)
