"""Shared building blocks with the authors' exact numerics (see AUTHORS_ARCHITECTURE.md section 1).

Parameters are float32; `dtype` is the compute dtype of matmuls and convolutions. Norm statistics,
softmax and losses stay float32. Every parameter carries logical axis names (teco.sharding).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from teco.sharding import logical

_NORM_EPS = 1e-6

lecun_normal = nnx.initializers.lecun_normal()
zeros = nnx.initializers.zeros
ones = nnx.initializers.ones


def as_dtype(dtype) -> jnp.dtype:
    """'float32' / 'bfloat16' / a numpy dtype -> jnp dtype, with one clear error otherwise."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown compute dtype {dtype!r}") from e
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"compute dtype must be float32, bfloat16 or float16, got {dt}")
    return dt


def param(rngs: nnx.Rngs, init, shape, names) -> nnx.Param:
    return nnx.Param(logical(init, names)(rngs.params(), tuple(shape), jnp.float32))


def rematerialised(module: nnx.Module, call, *args):
    """`call(module, *args)` under jax.checkpoint: the backward pass keeps only the inputs and
    recomputes the activations inside (less memory, more compute)."""
    graphdef, state = nnx.split(module)
    return jax.checkpoint(lambda st, *a: call(nnx.merge(graphdef, st), *a))(state, *args)


def over_time_in_chunks(module: nnx.Module, call, x_BTX, frames_per_chunk: int):
    """`call(module, x_NX)` on the B * T frames of x_BTX, `frames_per_chunk` time steps (of every
    video) at a time, each chunk under jax.checkpoint: the backward pass keeps the chunks' inputs
    and recomputes one chunk's activations at a time, so a per-frame network's peak memory is a
    chunk's, not the whole clip's. T is padded up to whole chunks (the padding's outputs are
    dropped). Chunks run along time, so a batch sharded over devices stays sharded."""
    b, t = x_BTX.shape[:2]
    n = -(-t // frames_per_chunk)
    pad = n * frames_per_chunk - t
    if pad:
        x_BTX = jnp.pad(x_BTX, [(0, 0), (0, pad)] + [(0, 0)] * (x_BTX.ndim - 2))
    chunks = x_BTX.reshape(b, n, frames_per_chunk, *x_BTX.shape[2:]).swapaxes(0, 1)
    graphdef, state = nnx.split(module)

    @jax.checkpoint
    def one_chunk(state, x_BCX):
        y = call(nnx.merge(graphdef, state), x_BCX.reshape(b * frames_per_chunk, *x_BCX.shape[2:]))
        return y.reshape(b, frames_per_chunk, *y.shape[1:])

    y_NBCX = jax.lax.map(lambda x: one_chunk(state, x), chunks)
    return y_NBCX.swapaxes(0, 1).reshape(b, n * frames_per_chunk, *y_NBCX.shape[3:])[:, :t]


def quick_gelu(x):
    """x * sigmoid(1.702 x): the authors' transformer MLP activation."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_tanh(x):
    """tanh-approximated GELU (the authors' final projections and MLM head)."""
    return jax.nn.gelu(x, approximate=True)


def _fast_normalize(x, axes, eps):
    """(x - m) * rsqrt(v + eps), v = mean(x^2) - m^2 clipped at 0, in float32 (authors' formula)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    mean2 = jnp.mean(jnp.square(x), axis=axes, keepdims=True)
    var = jnp.maximum(0.0, mean2 - jnp.square(mean))
    return (x - mean) * jax.lax.rsqrt(var + eps)


class LayerNorm(nnx.Module):
    """Over the last axis, eps 1e-6, fast variance, float32; output in `dtype`."""

    def __init__(self, features: int, *, names=("embed",), dtype=jnp.float32, rngs: nnx.Rngs):
        self.scale = param(rngs, ones, (features,), names)
        self.bias = param(rngs, zeros, (features,), names)
        self.dtype = as_dtype(dtype)

    def __call__(self, x):
        y = _fast_normalize(x, (-1,), _NORM_EPS) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


class GroupNorm(nnx.Module):
    """32 contiguous channel groups, statistics over (H, W, group) per sample, eps 1e-6."""

    def __init__(self, features: int, *, num_groups: int = 32, dtype=jnp.float32, rngs: nnx.Rngs):
        if features % num_groups:
            raise ValueError(f"GroupNorm: {features} channels are not a multiple of {num_groups} groups")
        self.num_groups = num_groups
        self.scale = param(rngs, ones, (features,), (None,))
        self.bias = param(rngs, zeros, (features,), (None,))
        self.dtype = as_dtype(dtype)

    def __call__(self, x_NHWC):
        *lead, c = x_NHWC.shape
        g = self.num_groups
        x = x_NHWC.reshape(*lead, g, c // g)
        axes = tuple(range(1, len(lead))) + (len(lead) + 1,)  # spatial axes and channels in group
        y = _fast_normalize(x, axes, _NORM_EPS).reshape(*lead, c)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class AddBias(nnx.Module):
    """A learned vector added over the last axis (authors' AddBias / out_bias / wo_bias)."""

    def __init__(self, features: int, *, names=("embed",), rngs: nnx.Rngs):
        self.bias = param(rngs, zeros, (features,), names)

    def __call__(self, x):
        return x + self.bias[...].astype(x.dtype)


class Dense(nnx.Module):
    """y = x @ kernel (+ bias); kernel [in, out] float32, matmul in `dtype`."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 names=(None, None), kernel_init=lecun_normal, dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), names)
        self.bias = param(rngs, zeros, (out_features,), names[-1:]) if use_bias else None
        self.dtype = as_dtype(dtype)

    def __call__(self, x):
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Conv(nnx.Module):
    """Cross-correlation, stride 1, SAME zero padding; kernel [kh, kw, in, out]."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
                 use_bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
        names = (None, None, "conv_in", "conv_out")
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = param(rngs, lecun_normal, shape, names)
        self.bias = param(rngs, zeros, (out_features,), ("conv_out",)) if use_bias else None
        self.dtype = as_dtype(dtype)

    def __call__(self, x_NHWC):
        y = jax.lax.conv_general_dilated(
            x_NHWC.astype(self.dtype), self.kernel[...].astype(self.dtype), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def avg_pool_2x2(x_NHWC):
    n, h, w, c = x_NHWC.shape
    return x_NHWC.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest_2x(x_NHWC):
    return jnp.repeat(jnp.repeat(x_NHWC, 2, axis=1), 2, axis=2)


class ResNetBlock(nnx.Module):
    """skip(x) + 0.1 * (AddBias(Conv_1(ELU(GN_1(Conv_0(ELU(GN_0(x))))))))."""

    def __init__(self, in_features: int, depth: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm_0 = GroupNorm(in_features, dtype=dtype, rngs=rngs)
        self.conv_0 = Conv(in_features, depth, 3, use_bias=True, dtype=dtype, rngs=rngs)
        self.norm_1 = GroupNorm(depth, dtype=dtype, rngs=rngs)
        self.conv_1 = Conv(depth, depth, 3, use_bias=False, dtype=dtype, rngs=rngs)
        self.add_bias = AddBias(depth, names=("conv_out",), rngs=rngs)
        self.skip = (Conv(in_features, depth, 1, use_bias=False, dtype=dtype, rngs=rngs)
                     if in_features != depth else None)
        self.dtype = as_dtype(dtype)

    def __call__(self, x):
        x = x.astype(self.dtype)
        h = self.conv_0(jax.nn.elu(self.norm_0(x)))
        h = self.add_bias(self.conv_1(jax.nn.elu(self.norm_1(h))))
        skip = x if self.skip is None else self.skip(x)
        return skip + 0.1 * h


class ResNetEncoder(nnx.Module):
    """Conv_0 -> ONE block at depths[0] (whatever `blocks` is) -> per further level: pool, `blocks` blocks."""

    def __init__(self, in_features: int, depths: Sequence[int], blocks: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        depths = tuple(int(d) for d in depths)
        if not depths or blocks < 1:
            raise ValueError(f"ResNetEncoder: need depths and blocks >= 1, got {depths}, {blocks}")
        self.conv_in = Conv(in_features, depths[0], 3, dtype=dtype, rngs=rngs)
        plan = [depths[0]] + [d for d in depths[1:] for _ in range(blocks)]
        chans = [depths[0]] + plan[:-1]
        self.blocks = nnx.List([ResNetBlock(c, d, dtype=dtype, rngs=rngs) for c, d in zip(chans, plan)])
        # Pool before the first block of every level after the first.
        self.pool_before = tuple([False] + [j == 0 for d in depths[1:] for j in range(blocks)])
        self.out_features = depths[-1]

    def __call__(self, x_NHWC):
        h = self.conv_in(x_NHWC)
        for pool, block in zip(self.pool_before, self.blocks):
            if pool:
                h = avg_pool_2x2(h)
            h = block(h)
        return h


class ResNetDecoder(nnx.Module):
    """concat(deter, z) -> Conv_0 to depths[0] (un-reversed, the authors' quirk) -> reversed levels of
    `blocks` blocks with nearest 2x upsampling between them -> LayerNorm -> Dense to out_dim."""

    def __init__(self, in_features: int, depths: Sequence[int], blocks: int, out_dim: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        depths = tuple(int(d) for d in depths)
        if not depths or blocks < 1:
            raise ValueError(f"ResNetDecoder: need depths and blocks >= 1, got {depths}, {blocks}")
        self.conv_in = Conv(in_features, depths[0], 3, dtype=dtype, rngs=rngs)
        plan = [d for d in reversed(depths) for _ in range(blocks)]
        chans = [depths[0]] + plan[:-1]
        self.blocks = nnx.List([ResNetBlock(c, d, dtype=dtype, rngs=rngs) for c, d in zip(chans, plan)])
        n_levels = len(depths)
        self.upsample_after = tuple(
            (j == blocks - 1) and (i < n_levels - 1) for i in range(n_levels) for j in range(blocks))
        self.norm_out = LayerNorm(plan[-1], names=(None,), dtype=dtype, rngs=rngs)
        self.dense_out = Dense(plan[-1], out_dim, names=("conv_in", "vocab"), dtype=dtype, rngs=rngs)

    def __call__(self, deter_NHWC, z_NHWC):
        h = self.conv_in(jnp.concatenate([deter_NHWC, z_NHWC.astype(deter_NHWC.dtype)], axis=-1))
        for up, block in zip(self.upsample_after, self.blocks):
            h = block(h)
            if up:
                h = upsample_nearest_2x(h)
        return self.dense_out(self.norm_out(h))


def sinusoidal_bias(positions, dim: int):
    """[N] positions -> [N, dim]: sin(p f_i) for all i, then cos(p f_i); f_i = 10000^(-2i/dim)."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {dim}")
    freqs = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class BroadcastPositionBiases(nnx.Module):
    """One table d_i [shape_i, chunk_i] per grid axis; channels split into len(shape) chunks (the
    first chunks get the remainder); bias(r, c, ...) = concat(d_0[r], d_1[c], ...), row-major."""

    def __init__(self, shape: Sequence[int], dim: int, *, rngs: nnx.Rngs):
        self.shape = tuple(int(s) for s in shape)
        chunks = [len(c) for c in np.array_split(np.arange(dim), len(self.shape))]
        init = nnx.initializers.normal(0.02)
        self.tables = nnx.List([param(rngs, init, (s, c), (None, None))
                                for s, c in zip(self.shape, chunks)])

    def __call__(self):
        """-> [prod(shape), dim]."""
        n = len(self.shape)
        parts = []
        for i, table in enumerate(self.tables):
            view = [1] * n + [table.shape[-1]]
            view[i] = self.shape[i]
            parts.append(jnp.broadcast_to(table[...].reshape(view), self.shape + (table.shape[-1],)))
        return jnp.concatenate(parts, axis=-1).reshape(math.prod(self.shape), -1)


class Embed(nnx.Module):
    """Table [num, features]; negative indices wrap (index -1 is the last row)."""

    def __init__(self, num: int, features: int, *, init=None, names=("vocab", None), rngs: nnx.Rngs):
        init = init or nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
        self.embedding = param(rngs, init, (num, features), names)

    def __call__(self, idx):
        table = self.embedding[...]
        return jnp.take(table, jnp.mod(idx, table.shape[0]), axis=0)
