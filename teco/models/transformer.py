"""The authors' Transformer: Dense_0 in, additive positions, pre-norm layers, Dense_1 + tanh-GELU +
LayerNorm out; plus an incremental path over a key/value cache for rollouts.

Attention: q/k/v projections with biases (kernels [embed, heads, head_dim]), (q / sqrt(d)) . k plus an
additive bias (-1e10 where forbidden), float32 softmax, out kernel [heads, head_dim, embed] then a
separate `out_bias`. Block-causal masking (`block_size`): token i sees token j iff
j // block_size <= i // block_size, so all tokens of a frame see each other and earlier frames.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from teco.models.layers import (AddBias, BroadcastPositionBiases, Dense, LayerNorm, as_dtype,
                                gelu_tanh, param, quick_gelu, rematerialised, sinusoidal_bias,
                                zeros)

NEG_INF = -1e10  # the authors' additive mask value (not -inf: fully masked rows stay finite)


def block_causal_allowed(q_pos, k_pos, block_size: int | None):
    """bool [Q, K]: key k visible from query q (block-causal, or everything when block_size is None)."""
    if block_size is None:
        return jnp.ones((q_pos.shape[0], k_pos.shape[0]), bool)
    return (k_pos[None, :] // block_size) <= (q_pos[:, None] // block_size)


def _dropout(x, rate, key, broadcast_axes=()):
    if rate <= 0.0 or key is None:
        return x
    shape = list(x.shape)
    for a in broadcast_axes:
        shape[a] = 1
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class _HeadProjection(nnx.Module):
    """[embed] -> [heads, head_dim] with bias (authors' DenseGeneral query/key/value)."""

    def __init__(self, embed_dim, num_heads, head_dim, init, *, rngs: nnx.Rngs):
        self.kernel = param(rngs, init, (embed_dim, num_heads, head_dim), ("embed", "heads", "kv"))
        self.bias = param(rngs, zeros, (num_heads, head_dim), ("heads", "kv"))


class _OutProjection(nnx.Module):
    """[heads, head_dim] -> [embed], no bias of its own (the authors add `out_bias` after it)."""

    def __init__(self, num_heads, head_dim, embed_dim, init, *, rngs: nnx.Rngs):
        self.kernel = param(rngs, init, (num_heads, head_dim, embed_dim), ("heads", "kv", "embed"))


class MultiHeadAttention(nnx.Module):
    def __init__(self, embed_dim: int, num_heads: int, *, attention_dropout: float = 0.0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if embed_dim % num_heads:
            raise ValueError(f"attention: embed_dim {embed_dim} is not divisible by {num_heads} heads")
        head_dim = embed_dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attention_dropout = attention_dropout
        self.dtype = as_dtype(dtype)
        qkv_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2))
        out_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2)

        self.query = _HeadProjection(embed_dim, num_heads, head_dim, qkv_init, rngs=rngs)
        self.key = _HeadProjection(embed_dim, num_heads, head_dim, qkv_init, rngs=rngs)
        self.value = _HeadProjection(embed_dim, num_heads, head_dim, qkv_init, rngs=rngs)
        self.out = _OutProjection(num_heads, head_dim, embed_dim, out_init, rngs=rngs)
        self.out_bias = AddBias(embed_dim, rngs=rngs)

    def _project(self, p, x_BLE):
        return (jnp.einsum("ble,ehd->blhd", x_BLE, p.kernel[...].astype(self.dtype))
                + p.bias[...].astype(self.dtype))

    def qkv(self, x_BLE):
        x = x_BLE.astype(self.dtype)
        return self._project(self.query, x), self._project(self.key, x), self._project(self.value, x)

    def attend(self, q_BQHD, k_BKHD, v_BKHD, allowed_QK, dropout_key=None):
        q = q_BQHD / jnp.sqrt(jnp.asarray(self.head_dim, self.dtype))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k_BKHD).astype(jnp.float32)
        if allowed_QK is not None:
            scores = scores + jnp.where(allowed_QK, 0.0, NEG_INF).astype(jnp.float32)
        weights = jax.nn.softmax(scores, axis=-1)
        weights = _dropout(weights, self.attention_dropout, dropout_key).astype(self.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v_BKHD)
        y = jnp.einsum("bqhd,hde->bqe", y, self.out.kernel[...].astype(self.dtype))
        return self.out_bias(y)

    def __call__(self, x_BLE, allowed_LL=None, dropout_key=None):
        q, k, v = self.qkv(x_BLE)
        return self.attend(q, k, v, allowed_LL, dropout_key)


class MlpBlock(nnx.Module):
    """wi (bias) -> quick GELU -> dropout (shared along the sequence) -> wo (no bias) + wo_bias."""

    def __init__(self, embed_dim: int, mlp_dim: int, *, dropout: float = 0.0, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.wi = Dense(embed_dim, mlp_dim, names=("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.wo = Dense(mlp_dim, embed_dim, use_bias=False, names=("mlp", "embed"), dtype=dtype,
                        rngs=rngs)
        self.wo_bias = AddBias(embed_dim, rngs=rngs)
        self.dropout = dropout

    def __call__(self, x_BLE, dropout_key=None):
        h = quick_gelu(self.wi(x_BLE))
        h = _dropout(h, self.dropout, dropout_key, broadcast_axes=(1,))
        return self.wo_bias(self.wo(h))


class TransformerLayer(nnx.Module):
    def __init__(self, embed_dim: int, mlp_dim: int, num_heads: int, *, dropout: float = 0.0,
                 attention_dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm_attn = LayerNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(embed_dim, num_heads, attention_dropout=attention_dropout,
                                       dtype=dtype, rngs=rngs)
        self.norm_mlp = LayerNorm(embed_dim, dtype=dtype, rngs=rngs)
        self.mlp = MlpBlock(embed_dim, mlp_dim, dropout=dropout, dtype=dtype, rngs=rngs)
        self.dropout = dropout

    def _mlp_part(self, x, keys):
        h = self.mlp(self.norm_mlp(x), keys[2])
        return x + _dropout(h, self.dropout, keys[3])

    def __call__(self, x_BLE, allowed_LL, dropout_key=None):
        keys = [None] * 4 if dropout_key is None else list(jax.random.split(dropout_key, 4))
        h = self.attn(self.norm_attn(x_BLE), allowed_LL, keys[0])
        x = x_BLE + _dropout(h, self.dropout, keys[1])
        return self._mlp_part(x, keys)

    def extend(self, x_BNE, k_cache_BLHD, v_cache_BLHD, start, allowed_NL):
        """New tokens at positions start.. written into the cache, attending over the whole cache."""
        q, k, v = self.attn.qkv(self.norm_attn(x_BNE))
        k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache_BLHD, k.astype(k_cache_BLHD.dtype), start, 1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache_BLHD, v.astype(v_cache_BLHD.dtype), start, 1)
        x = x_BNE + self.attn.attend(q, k_cache, v_cache, allowed_NL)
        return self._mlp_part(x, [None] * 4), k_cache, v_cache


class Transformer(nnx.Module):
    """Authors' Transformer with `use_fc_in`, no vocab/out head, no right shift.

    x [B, *grid, in_features] (++ cond on channels) -> Dense_0 -> flatten grid row-major -> + position
    bias ('sinusoidal' over the flat index, or 'broadcast' over `pos_shape`) -> layers -> Dense_1,
    tanh-GELU, LayerNorm -> [B, *grid, embed_dim].
    """

    def __init__(self, in_features: int, embed_dim: int, mlp_dim: int, num_heads: int,
                 num_layers: int, *, pos_type: str = "sinusoidal", pos_shape=None,
                 block_size: int | None = None, dropout: float = 0.0,
                 attention_dropout: float = 0.0, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        if pos_type not in ("sinusoidal", "broadcast"):
            raise ValueError(f"Transformer: pos_type must be 'sinusoidal' or 'broadcast', got {pos_type!r}")
        if pos_type == "broadcast" and not pos_shape:
            raise ValueError("Transformer: broadcast positions need pos_shape")
        self.embed_dim, self.num_layers = embed_dim, num_layers
        self.pos_type, self.block_size = pos_type, block_size
        self.dropout, self.remat, self.dtype = dropout, remat, as_dtype(dtype)
        self.fc_in = Dense(in_features, embed_dim, names=(None, "embed"), dtype=dtype, rngs=rngs)
        self.pos_bias = (BroadcastPositionBiases(pos_shape, embed_dim, rngs=rngs)
                         if pos_type == "broadcast" else None)
        self.layers = nnx.List([
            TransformerLayer(embed_dim, mlp_dim, num_heads, dropout=dropout,
                             attention_dropout=attention_dropout, dtype=dtype, rngs=rngs)
            for _ in range(num_layers)])
        self.fc_out = Dense(embed_dim, embed_dim, names=("embed", None), dtype=dtype, rngs=rngs)
        self.norm_out = LayerNorm(embed_dim, dtype=dtype, rngs=rngs)

    def position_bias(self, positions_N):
        if self.pos_type == "sinusoidal":
            return sinusoidal_bias(positions_N, self.embed_dim)
        return jnp.take(self.pos_bias(), positions_N, axis=0)

    def _embed(self, x, cond):
        if cond is not None:
            x = jnp.concatenate([x.astype(self.dtype), cond.astype(self.dtype)], axis=-1)
        return self.fc_in(x)

    def _head(self, x):
        return self.norm_out(gelu_tanh(self.fc_out(x)))

    def __call__(self, x_BGC, cond=None, *, deterministic: bool = True, dropout_key=None):
        batch, grid = x_BGC.shape[0], x_BGC.shape[1:-1]
        h = self._embed(x_BGC, cond)
        h = h.reshape(batch, math.prod(grid), self.embed_dim)
        positions = jnp.arange(h.shape[1])
        h = h + self.position_bias(positions).astype(self.dtype)
        use_dropout = not deterministic and dropout_key is not None
        keys = (list(jax.random.split(dropout_key, self.num_layers + 2)) if use_dropout
                else [None] * (self.num_layers + 2))
        h = _dropout(h, self.dropout, keys[0])
        allowed = None if self.block_size is None else block_causal_allowed(
            positions, positions, self.block_size)
        for layer, key in zip(self.layers, keys[1:-1]):
            if self.remat:
                h = rematerialised(layer, lambda m, x, k: m(x, allowed, k), h, key)
            else:
                h = layer(h, allowed, key)
        h = _dropout(self._head(h), self.dropout, keys[-1])
        return h.reshape(batch, *grid, self.embed_dim)

    def init_cache(self, batch_size: int, max_len: int, dtype=None):
        """Key/value cache: dict(k, v) [num_layers, B, max_len, heads, head_dim]."""
        attn = self.layers[0].attn
        shape = (self.num_layers, batch_size, max_len, attn.num_heads, attn.head_dim)
        dt = self.dtype if dtype is None else dtype
        return dict(k=jnp.zeros(shape, dt), v=jnp.zeros(shape, dt))

    def extend(self, x_BNC, cache, start, cond=None):
        """Runs N new tokens at flat positions start..start+N-1 over the cache (no dropout).

        x_BNC: already-flattened new tokens (before Dense_0). Each query sees cache entries that are
        written (< start + N) and allowed by the block-causal rule. Returns ([B, N, E], new cache);
        equals the matching rows of `__call__` when the cache holds the earlier tokens.
        """
        n = x_BNC.shape[1]
        max_len = cache["k"].shape[2]
        if isinstance(start, int) and not 0 <= start <= max_len - n:
            # A traced start cannot be checked; past the end the cache write would be clamped.
            raise ValueError(f"Transformer.extend: tokens {start}..{start + n - 1} do not fit a "
                             f"cache of {max_len}")
        h = self._embed(x_BNC, cond)
        q_pos = start + jnp.arange(n)
        h = h + self.position_bias(q_pos).astype(self.dtype)
        k_pos = jnp.arange(max_len)
        allowed = block_causal_allowed(q_pos, k_pos, self.block_size) & (k_pos[None, :] < start + n)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            h, k_i, v_i = layer.extend(h, cache["k"][i], cache["v"][i], start, allowed)
            ks.append(k_i)
            vs.append(v_i)
        return self._head(h), dict(k=jnp.stack(ks), v=jnp.stack(vs))
