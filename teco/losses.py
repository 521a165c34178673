"""Pure pieces of TECO's training objective (unit-testable without a network).

- `drop_loss_indices`: DropLoss frame selection. Unlike the authors' code (with replacement, from
  [0, T) although only T' = T - n_cond predictions exist, so the clamped last frame is over-weighted),
  indices are drawn WITHOUT replacement from the valid [0, T').
- `drop_actions`: one Bernoulli(0.5) per video replaces all its actions by -1 ("no action").
- `corrupt_codes`: each frame has a fraction u ~ U(0, max_rate) of its codes replaced by random
  ones (the previous frame TECO reads with `decoder_prev_frame` / `prior_prev_frame`).
- `recon_loss`: label-smoothed cross-entropy summed over the spatial grid, averaged over batch/frames.
- `trans_loss`: masked mean cross-entropy times the number of tokens per frame (authors' scaling).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

NO_ACTION = -1


def drop_loss_indices(key, n_frames: int, rate: float):
    """int32 [n]: the frames that get decoder and prior losses; n = max(1, int((1 - rate) * n_frames)).

    rate 0 gives all frames in order; otherwise n distinct indices in [0, n_frames), fresh per key.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_loss_rate must be in [0, 1), got {rate}")
    if n_frames < 1:
        raise ValueError(f"drop_loss_indices: need at least one predicted frame, got {n_frames}")
    if rate == 0.0:
        return jnp.arange(n_frames, dtype=jnp.int32)
    n = max(1, int((1.0 - rate) * n_frames))
    return jax.random.choice(key, n_frames, (n,), replace=False).astype(jnp.int32)


def drop_actions(key, actions_BT, prob: float = 0.5):
    """Each video independently loses all its actions (-> -1, the no-action row) with `prob`."""
    drop_B = jax.random.bernoulli(key, prob, (actions_BT.shape[0],))
    return jnp.where(drop_B[:, None], NO_ACTION, actions_BT)


def corrupt_codes(key, codes_BThw, max_rate: float, n_codes: int):
    """Each frame draws u ~ U(0, max_rate) and has each code replaced by a uniform random one with
    probability u (a replaced code may draw itself)."""
    k_rate, k_where, k_code = jax.random.split(key, 3)
    rate = jax.random.uniform(k_rate, (*codes_BThw.shape[:2], 1, 1)) * max_rate
    replace = jax.random.uniform(k_where, codes_BThw.shape) < rate
    random_codes = jax.random.randint(k_code, codes_BThw.shape, 0, n_codes, dtype=codes_BThw.dtype)
    return jnp.where(replace, random_codes, codes_BThw)


def recon_loss(logits_BTHWV, codes_BTHW, label_smoothing: float = 0.01):
    """CE(logits, one_hot * (1 - s) + s / V) summed over (H, W), mean over (B, T)."""
    v = logits_BTHWV.shape[-1]
    labels = jax.nn.one_hot(codes_BTHW, v) * (1.0 - label_smoothing) + label_smoothing / v
    ce = optax.softmax_cross_entropy(logits_BTHWV.astype(jnp.float32), labels)
    return jnp.mean(jnp.sum(ce, axis=(2, 3)))


def trans_loss(logits_BTHWK, codes_BTHW, mask_BTHW):
    """sum(mask * CE) / sum(mask) * (H * W): the authors' MaskGit loss scaling."""
    h, w = codes_BTHW.shape[-2:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BTHWK.astype(jnp.float32), codes_BTHW)
    m = mask_BTHW.astype(jnp.float32)
    return jnp.sum(m * ce) / jnp.maximum(jnp.sum(m), 1.0) * (h * w)


def accuracy(logits, labels, mask=None):
    """Share of positions whose label has the largest logit (a tie counts as a hit). A max and
    a gather, not argmax: XLA's CPU backend runs argmax as a scalar loop (19 ms of the demo
    TECO's 440 ms train step, for a logged metric)."""
    label_logit = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    hit = (label_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    if mask is None:
        return jnp.mean(hit)
    m = mask.astype(jnp.float32)
    return jnp.sum(m * hit) / jnp.maximum(jnp.sum(m), 1.0)
