"""MaskGit prior over one frame's z_h x z_w TECO codes, conditioned on deter (authors' `z_git`).

token_embed [n_codes + 1, vocab_dim] (MASK = last row, reached through index -1) -> concat with the
condition -> Transformer with broadcast positions, no attention mask -> MLM head: Dense, tanh-GELU,
LayerNorm, logits tied to token_embed[:n_codes] plus a per-code bias.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from teco.models.layers import AddBias, Dense, LayerNorm, as_dtype, gelu_tanh, param
from teco.models.transformer import Transformer

MASK_TOKEN = -1


def mask_ratio(r, schedule: str = "cosine"):
    """Fraction of tokens to mask for uniform r in [0, 1), clipped to [1e-6, 1]."""
    if schedule == "cosine":
        ratio = jnp.cos(0.5 * jnp.pi * r)
    elif schedule == "linear":
        ratio = 1.0 - r
    elif schedule == "square":
        ratio = 1.0 - r ** 2
    elif schedule == "cubic":
        ratio = 1.0 - r ** 3
    else:
        raise ValueError(f"mask_schedule must be cosine, linear, square or cubic, got {schedule!r}")
    return jnp.clip(ratio, 1e-6, 1.0)


def sample_training_mask(key, batch_shape, num_tokens: int, schedule: str = "cosine"):
    """bool [*batch_shape, num_tokens]: per row r ~ U[0, 1), n = max(1, floor(ratio(r) * L)) tokens
    masked at uniformly random positions (a fresh permutation per row): rows are independent, so
    every batch element and time step gets its own ratio and positions."""
    batch_shape = tuple(batch_shape)
    k_ratio, k_perm = jax.random.split(key)
    r = jax.random.uniform(k_ratio, batch_shape)
    n_masked = jnp.maximum(1, jnp.floor(mask_ratio(r, schedule) * num_tokens).astype(jnp.int32))
    # argsort of iid uniforms is a uniformly random permutation of 0..L-1 per row.
    perm = jnp.argsort(jax.random.uniform(k_perm, batch_shape + (num_tokens,)), axis=-1)
    return perm < n_masked[..., None]


class MlmHead(nnx.Module):
    def __init__(self, embed_dim: int, vocab_dim: int, n_codes: int, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.dense = Dense(embed_dim, vocab_dim, names=("embed", None),
                           kernel_init=nnx.initializers.normal(0.02), dtype=dtype, rngs=rngs)
        self.norm = LayerNorm(vocab_dim, names=(None,), dtype=dtype, rngs=rngs)
        self.bias = AddBias(n_codes, names=("vocab",), rngs=rngs)
        self.dtype = as_dtype(dtype)

    def __call__(self, h, code_table_KV):
        h = self.norm(gelu_tanh(self.dense(h)))
        logits = jnp.einsum("...v,kv->...k", h, code_table_KV.astype(self.dtype))
        return self.bias(logits.astype(jnp.float32))


class MaskGit(nnx.Module):
    def __init__(self, n_codes: int, vocab_dim: int, cond_dim: int, grid_shape, *, embed_dim: int,
                 mlp_dim: int, num_heads: int, num_layers: int, dropout: float = 0.0,
                 attention_dropout: float = 0.0, mask_schedule: str = "cosine",
                 dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
        mask_ratio(0.5, mask_schedule)  # validates the name early
        self.n_codes, self.grid_shape = n_codes, tuple(grid_shape)
        self.mask_schedule = mask_schedule
        self.token_embed = param(rngs, nnx.initializers.normal(0.02), (n_codes + 1, vocab_dim),
                                 ("vocab", None))
        self.net = Transformer(vocab_dim + cond_dim, embed_dim, mlp_dim, num_heads, num_layers,
                               pos_type="broadcast", pos_shape=self.grid_shape, dropout=dropout,
                               attention_dropout=attention_dropout, dtype=dtype, remat=remat,
                               rngs=rngs)
        self.mlm = MlmHead(embed_dim, vocab_dim, n_codes, dtype=dtype, rngs=rngs)

    def step(self, tokens_BHW, cond_BHWC, *, deterministic: bool = True, dropout_key=None):
        """Logits [B, H, W, n_codes] (float32) for codes in 0..n_codes-1 or -1 (= MASK)."""
        if tuple(tokens_BHW.shape[1:]) != self.grid_shape:
            raise ValueError(f"MaskGit: tokens grid {tokens_BHW.shape[1:]} != {self.grid_shape}")
        table = self.token_embed[...]
        tok = jnp.take(table, jnp.mod(tokens_BHW, table.shape[0]), axis=0)
        h = self.net(tok, cond_BHWC, deterministic=deterministic, dropout_key=dropout_key)
        return self.mlm(h, table[:self.n_codes])

    def __call__(self, codes_BHW, cond_BHWC, key, *, deterministic: bool = True, dropout_key=None):
        """Training pass: random mask -> (logits, one-hot labels, mask [B, H, W])."""
        b = codes_BHW.shape[0]
        mask = sample_training_mask(key, (b,), math.prod(self.grid_shape), self.mask_schedule)
        mask = mask.reshape(codes_BHW.shape)
        logits = self.step(jnp.where(mask, MASK_TOKEN, codes_BHW), cond_BHWC,
                           deterministic=deterministic, dropout_key=dropout_key)
        return logits, jax.nn.one_hot(codes_BHW, self.n_codes), mask
