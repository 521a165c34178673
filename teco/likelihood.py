"""Place memory without sampling noise: how well TECO predicts the *real* frames, teacher-forced,
with the whole context and with only its last K frames.

For a frame t TECO's prior gives p(z_t | frames before t): the temporal transformer's output
for t, read by the MaskGit prior with every token of z_t masked (what the model expects the
frame to be before it has drawn any of it). Its negative log-likelihood per token, nats, is

    full(t)   with the frames of the model's window that ends at t ([t - seq_len + 1, t)),
    short(t)  with only the frames from context - K on ([context - K, t)).

On a revisit of a place that only the frames before context - K showed, a model that keeps
the maze predicts the real frame better with them (short - full > 0); on frames that revisit
nothing, the difference is what more context gives in general. The same comparison as the
sampled memory check (teco/eval.py `--memory_check`), on log-likelihoods, with no draw of
the MaskGit sampler in between. Frames the probe cannot reach (the short window is seq_len
frames from context - K) are NaN.

`action_gain` asks the same way whether the model follows its actions: the real frames' NLL
with the clip's actions shuffled in time minus with the true actions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from teco.metrics.revisit import mean_interval
from teco.models.maskgit import MASK_TOKEN


def frame_nll(model, table, codes_BTHW, actions_BT):
    """Per frame n_cond..seq_len-1 of a seq_len window: the prior's mean NLL per token of the
    frame's TECO codes with all of them masked, float32 [B, seq_len - n_cond]."""
    table = jnp.asarray(table, jnp.float32)
    vq_emb = jnp.take(table, codes_BTHW, axis=0)
    cond, z_emb, z_codes, _ = model.encode(vq_emb)
    actions_emb = model.embed_actions(actions_BT)
    deter = model.temporal_transformer(z_emb, actions_emb, cond)
    masked = jnp.full(z_codes.shape, MASK_TOKEN, z_codes.dtype)
    recalled = None
    if model.recall:
        positions = model.n_cond + jnp.arange(deter.shape[1])
        recalled = model.recall_in_clip(actions_BT, vq_emb, positions)
    logits = model.maskgit_step(masked, deter, vq_emb[:, model.n_cond - 1:-1],
                                actions_emb[:, model.n_cond:], recalled).astype(jnp.float32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), z_codes[..., None], axis=-1)
    return -logp[..., 0].mean(axis=(2, 3))


_COMPILED: dict = {}


def _window_nll(model):
    graphdef, state = nnx.split(model)
    if graphdef not in _COMPILED:
        _COMPILED[graphdef] = jax.jit(
            lambda s, table, codes, actions: frame_nll(nnx.merge(graphdef, s), table, codes,
                                                       actions))
    fn = _COMPILED[graphdef]
    return lambda table, codes, actions: np.asarray(fn(state, table, codes, actions))


def context_nll(model, table, codes_BTHW, actions_BT, n_context: int, short_context: int):
    """(full, short): float32 [B, T - n_context], the NLL of every predicted frame with the
    window ending at it and with only the frames from n_context - short_context on; NaN where
    the short window (seq_len frames) does not reach."""
    codes, actions = np.asarray(codes_BTHW, np.int32), np.asarray(actions_BT, np.int32)
    b, t = codes.shape[:2]
    window, n_cond = int(model.seq_len), int(model.n_cond)
    first = n_context - short_context
    if not n_cond <= short_context < n_context:
        raise ValueError(f"short_context={short_context} must be at least n_cond={n_cond} and "
                         f"fewer than n_context={n_context}")
    if n_context >= t:
        raise ValueError(f"n_context={n_context} leaves no frame of {t} to predict")
    full = np.full((b, t - n_context), np.nan, np.float32)
    short = np.full_like(full, np.nan)
    if first + window > t:                     # no seq_len window from n_context - K fits
        return full, short
    nll = _window_nll(model)

    def run(start: int) -> np.ndarray:          # NLL of frames start + n_cond .. start + window
        sl = slice(start, start + window)
        return nll(table, codes[:, sl], actions[:, sl])

    last = first + window                      # frames [n_context, last) are probed
    short[:, :last - n_context] = run(first)[:, n_context - first - n_cond:]
    # The window that ends at frame f starts at f - window + 1 (frame 0 for the first ones).
    start_of = {f: max(0, f - window + 1) for f in range(n_context, last)}
    for start in sorted(set(start_of.values())):
        values = run(start)
        for f in (f for f, s in start_of.items() if s == start):
            full[:, f - n_context] = values[:, f - start - n_cond]
    return full, short


def shuffled_actions(actions_BT, seed: int = 0) -> np.ndarray:
    """Each video's actions in another order (one fixed permutation of time per video): the
    same actions, as often, no longer where they happened. Unlike the no-action token this is
    an input the model saw in training, whether or not it was trained with action dropout."""
    actions = np.asarray(actions_BT)
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(actions.shape[1]) for _ in range(actions.shape[0])])
    return np.take_along_axis(actions, order, axis=1)


def action_gain(model, table, codes_BTHW, actions_BT, n_context: int):
    """Whether the model follows the actions, without sampling: float32 [B, T - n_context], per
    predicted frame of the last seq_len window (the one that ends at the clip's last frame), the
    real frame's NLL per token with the clip's actions shuffled in time minus with the true
    actions; NaN for frames before that window. ~0 for a model that ignores its actions, whose
    rollouts cannot turn where the agent turned."""
    codes, actions = np.asarray(codes_BTHW, np.int32), np.asarray(actions_BT, np.int32)
    b, t = codes.shape[:2]
    window, n_cond = int(model.seq_len), int(model.n_cond)
    if n_context >= t:
        raise ValueError(f"n_context={n_context} leaves no frame of {t} to predict")
    out = np.full((b, t - n_context), np.nan, np.float32)
    if t < window:
        return out
    nll = _window_nll(model)
    start = t - window
    sl = slice(start, t)
    given = nll(table, codes[:, sl], actions[:, sl])
    shuffled = nll(table, codes[:, sl], shuffled_actions(actions[:, sl]))
    first = max(n_context, start + n_cond)     # NLLs cover frames start + n_cond .. t - 1
    out[:, first - n_context:] = (shuffled - given)[:, first - start - n_cond:]
    return out


class ActionUse:
    """Collects action_gain batch by batch (teco.eval): the real predicted frames' NLL per token
    with the actions shuffled in time minus with the true ones, averaged with a bootstrap
    interval over the episodes. A model that ignores its actions (about 0) cannot
    follow where the agent went; its rollouts drift on their own."""

    def __init__(self):
        self.gains, self.episodes = [], []

    def add(self, gain_BP: np.ndarray, episodes_B) -> None:
        self.gains.append(np.asarray(gain_BP, np.float64))
        self.episodes.append(np.asarray(episodes_B))

    def summary(self, n: int) -> dict | None:
        if not self.gains:
            return None
        gain = np.concatenate(self.gains)[:n]
        out = mean_interval(gain, np.isfinite(gain), groups_N=np.concatenate(self.episodes)[:n])
        if out is None:       # clips shorter than the model's window
            return None
        return {**out, "note": "the real predicted frames' NLL per token (nats) with the clip's "
                               "actions shuffled in time minus with the true ones, teacher-forced, "
                               "in the window of seq_len frames that ends at each clip's last "
                               "frame; above 0: the model follows the actions"}
