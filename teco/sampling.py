"""Pure sampling algorithms: mask schedules and MaskGit decoding of one frame's tokens.

Networks enter only as `logits_fn(tokens_BL) -> logits_BLV`, where a token of -1 is MASK.
Both decoders run as one `lax.fori_loop`, so a whole frame compiles once:

- draft-and-revise (TECO, after Lee et al. 2022): `T_draft` random groups of positions are
  generated one group at a time, then `M` rounds re-generate the frame in `T_revise` groups.
- confidence (MaskGIT): every step samples all unknown tokens and keeps the most confident;
  the number still masked after step s of S is floor(L_free * cos(pi/2 * (s+1)/S)).

Tokens marked `fixed` are never changed (editing: a region given, the rest imagined).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from teco.first_index import first_argmax

MASK = -1
LogitsFn = Callable[[jax.Array], jax.Array]


def cosine_schedule(ratio):
    """Fraction of tokens masked at progress `ratio` in [0, 1]."""
    return jnp.cos(0.5 * jnp.pi * ratio)


def mix_guidance(cond_logits, uncond_logits, scale):
    """Classifier-free guidance: scale 1 = conditioned, 0 = unconditioned, >1 sharpens."""
    return uncond_logits + scale * (cond_logits - uncond_logits)


def top_k_filter(logits, k: int):
    """Keeps the k largest logits per position (k <= 0: all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def sample_logits(key, logits, temperature: float = 1.0, top_k: int = 0):
    """Categorical sample per position; temperature 0 is argmax. The sample is
    `jax.random.categorical`'s, Gumbel noise and all, with its argmax as `first_argmax`."""
    logits = top_k_filter(logits, top_k)
    if temperature == 0:
        return first_argmax(logits)
    logits = logits / temperature
    return first_argmax(jax.random.gumbel(key, logits.shape, logits.dtype) + logits)


def group_ids(key, batch: int, length: int, n_groups: int) -> jax.Array:
    """Random split of the positions into `n_groups` nearly equal groups, per batch element.

    A random permutation is cut into contiguous chunks with array-split sizes (the first
    length % n_groups chunks get one extra position). Returns int32 [batch, length].
    """
    chunk_of_rank = np.repeat(np.arange(n_groups), [len(c) for c in np.array_split(
        np.arange(length), n_groups)]).astype(np.int32)
    perms = jax.vmap(lambda k: jax.random.permutation(k, length))(jax.random.split(key, batch))
    ids = jnp.zeros((batch, length), jnp.int32)
    return ids.at[jnp.arange(batch)[:, None], perms].set(jnp.asarray(chunk_of_rank)[None])


def draft_and_revise(logits_fn: LogitsFn, key, tokens_BL, fixed_BL, *, T_draft: int,
                     T_revise: int, M: int, temperature: float = 1.0, top_k: int = 0):
    """TECO's sampler: T_draft + M * T_revise network passes. Returns int32 [B, L]."""
    B, L = tokens_BL.shape
    tokens = jnp.where(fixed_BL, tokens_BL, MASK).astype(jnp.int32)
    rounds = [T_draft] + [T_revise] * M
    keys = jax.random.split(key, 2 * len(rounds))
    # Pass p belongs to round r and regenerates that round's group j.
    groups = jnp.stack([group_ids(keys[r], B, L, n) for r, n in enumerate(rounds)])  # [R,B,L]
    round_of_pass = jnp.asarray(np.repeat(np.arange(len(rounds)), rounds), jnp.int32)
    group_of_pass = jnp.asarray(np.concatenate([np.arange(n) for n in rounds]), jnp.int32)

    def body(p, carry):
        tokens, key = carry
        key, sub = jax.random.split(key)
        chunk = (groups[round_of_pass[p]] == group_of_pass[p]) & ~fixed_BL
        tokens = jnp.where(chunk, MASK, tokens)
        sampled = sample_logits(sub, logits_fn(tokens), temperature, top_k)
        return jnp.where(chunk, sampled, tokens), key

    tokens, _ = jax.lax.fori_loop(0, int(sum(rounds)), body, (tokens, keys[-1]))
    return tokens


def masked_after_step(free, s, steps: int, xp=jnp):
    """How many of `free` unknown positions stay masked after step s (0-based) of `steps`.

    The cosine schedule, with at least one position revealed per step and all by the end.
    """
    left = xp.maximum(free - (s + 1), 0)
    n = xp.floor(free * xp.cos(0.5 * math.pi * (s + 1) / steps)).astype(xp.int32)
    n = xp.clip(n, xp.minimum(1, left), left)
    return xp.where(s == steps - 1, 0, n)


def confidence_decode(logits_fn: LogitsFn, key, tokens_BL, fixed_BL, *, steps: int,
                      temperature: float = 1.0, top_k: int = 0, choice_temperature: float = 4.5):
    """MaskGIT's confidence-ordered decoding with a cosine schedule. Returns int32 [B, L].

    Confidence is the sampled token's log-probability plus Gumbel noise annealed to zero
    (`choice_temperature` * (1 - progress)), as in MaskGIT.
    """
    B, L = tokens_BL.shape
    tokens = jnp.where(fixed_BL, tokens_BL, MASK).astype(jnp.int32)
    free = jnp.sum(~fixed_BL, axis=-1)                                      # [B]
    ratios = (jnp.arange(steps, dtype=jnp.float32) + 1) / steps

    def body(s, carry):
        tokens, key = carry
        key, k_sample, k_noise = jax.random.split(key, 3)
        logits = top_k_filter(logits_fn(tokens), top_k)
        sampled = sample_logits(k_sample, logits, temperature)
        unknown = tokens == MASK
        logp = jax.nn.log_softmax(logits / jnp.maximum(temperature, 1e-6), axis=-1)
        conf = jnp.take_along_axis(logp, sampled[..., None], axis=-1)[..., 0]
        conf = conf + choice_temperature * (1.0 - ratios[s]) * jax.random.gumbel(k_noise, conf.shape)
        conf = jnp.where(unknown, conf, jnp.inf)          # known tokens are never re-masked
        filled = jnp.where(unknown, sampled, tokens)
        # Re-mask the n least confident positions of each row.
        rank = jnp.argsort(jnp.argsort(conf, axis=-1), axis=-1)
        remask = rank < masked_after_step(free, s, steps)[:, None]
        return jnp.where(remask, MASK, filled), key

    tokens, _ = jax.lax.fori_loop(0, steps, body, (tokens, key))
    return tokens
