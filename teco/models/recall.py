"""Recall by path integration: which earlier frames showed the view frame t will show.

Not in the paper. An agent that turns by a fixed angle per action (Memory Maze: 17.5 degrees)
and comes back to a heading and place sees the view it saw there. `PathMatch` integrates the
actions: each action turns K planes by its own learnt angles, a frame's phases are the sums of
its clip's actions up to it, and frame t matches an earlier frame s by sum_k w_k cos(phase_t,k -
phase_s,k) (w_k >= 0, learnt), which depends only on the actions between s and t. It learns
from a teacher that sees the frames: frame t's own coarse look matched against the earlier
frames' (`appearance_logits`), a target a rollout cannot have (frame t is not drawn yet) but the
actions can predict. In the demo's TECO after 1,350 steps its pick among the frames more than 4
back was the same view in 0.31 of the held-out `revisits` frames, of 0.32 that had one in reach
(0.61 of 0.63 on `spins`), where a match learnt from h_t had picked at chance on `revisits`
(docs/demo_experiments.md, 2026-12-05 evening and night).

Shapes: B batch, S frames that may be recalled, Q frames that recall, K planes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from teco.models.layers import param
from teco.models.quantizer import l2_normalize

PLANES = 32
# The teacher reads frames as a 2x2 grid of block means of their VQ embeddings, and its
# softmax over the earlier frames is that of TEACHER_SHARPNESS x cosine.
TEACHER_GRID = 2
TEACHER_SHARPNESS = 10.0
# The angles and weights are stored divided by PARAM_SCALE: AdamW moves a parameter by about the
# learning rate per step, and at 1e-3 an angle would need ~300 steps to turn by the 17.5 degrees
# a Memory Maze turn takes; scaled by 30, a fitted integrator matched its teacher as well in
# 1,350 steps of batch 4 as in 1,500 of batch 32 unscaled at 3e-2 (0.27 against 0.26, the
# teacher 0.26; at scale 1, 0.16).
PARAM_SCALE = 30.0


def pooled_grid(x_BTHWC, g: int):
    """Mean over g x g blocks of each frame, flattened: [B, T, H, W, C] -> [B, T, g * g * C]."""
    b, t, h, w, c = x_BTHWC.shape
    x = x_BTHWC.astype(jnp.float32).reshape(b, t, g, h // g, g, w // g, c)
    return x.mean(axis=(3, 5)).reshape(b, t, g * g * c)


def appearance_logits(vq_embeddings_BShwC, query_positions_Q, valid_BQS):
    """The teacher: for the frame at each query position, its coarse look's cosine with each
    frame's, both less the mean over the frames the query may recall (every frame of a maze
    shares most of its look: raw, a clip's frames agree to a cosine of 0.99), times
    TEACHER_SHARPNESS -> [B, Q, S] (invalid entries are meaningless)."""
    look = pooled_grid(vq_embeddings_BShwC, TEACHER_GRID)
    valid = valid_BQS.astype(jnp.float32)
    mean = jnp.einsum("bqs,bsd->bqd", valid, look) / jnp.maximum(valid.sum(-1), 1.0)[..., None]
    keys = l2_normalize(look[:, None] - mean[:, :, None])
    own = jnp.take(look, jnp.asarray(query_positions_Q), axis=1)
    return jnp.einsum("bqd,bqsd->bqs", l2_normalize(own - mean), keys) * TEACHER_SHARPNESS


class PathMatch(nnx.Module):
    """Learnt per-action turns of PLANES planes and per-plane weights (see the module doc)."""

    def __init__(self, action_dim: int, *, rngs: nnx.Rngs, planes: int = PLANES):
        self.action_dim = int(action_dim)
        # Angles start at N(0, 1) times frequencies from one turn per 100 frames to half a
        # turn per frame, so some planes start near any turn an action makes.
        freqs = np.exp(np.linspace(np.log(2 * np.pi / 100), np.log(np.pi), planes))
        self.angles = param(
            rngs, lambda key, shape, dtype: (jax.random.normal(key, shape, dtype)
                                             * jnp.asarray(freqs, dtype) / PARAM_SCALE),
            (self.action_dim + 1, planes), (None, None))
        self.plane_weights = param(
            rngs, lambda key, shape, dtype: jnp.full(shape, -2.0 / PARAM_SCALE, dtype),
            (planes,), (None,))

    def weights(self):
        """Per-plane weights w_k >= 0 [K]."""
        return jax.nn.softplus(self.plane_weights[...] * PARAM_SCALE)

    def turns(self, actions_BT):
        """[B, T, K]: each action's learnt angles (ints in [0, action_dim), or -1 for no
        action, which has angles of its own)."""
        a = jnp.where(actions_BT < 0, self.action_dim, actions_BT).astype(jnp.int32)
        return jnp.take(self.angles[...] * PARAM_SCALE, a, axis=0)

    def phases(self, actions_BT):
        """[B, T, K]: the sum of the turns of the actions up to each frame."""
        return jnp.cumsum(self.turns(actions_BT), axis=1)

    def logits(self, phases_BQK, phases_BSK):
        """[B, Q, S]: sum_k w_k cos(phase_q,k - phase_s,k)."""
        diff = phases_BQK[:, :, None, :] - phases_BSK[:, None, :, :]
        return jnp.einsum("bqsk,k->bqs", jnp.cos(diff), self.weights())

    def clip_logits(self, actions_BT):
        """[B, T, T]: the match of every frame of a clip with every frame (evaluation)."""
        phases = self.phases(jnp.asarray(actions_BT))
        return self.logits(phases, phases)

    def loss(self, actions_BT, vq_embeddings_BThwC):
        """Cross-entropy of the match's softmax over each frame's earlier frames in the clip
        against the teacher's (`appearance_logits`, held still), mean over frames 1..T-1."""
        t = actions_BT.shape[1]
        positions = jnp.arange(1, t)
        valid = jnp.arange(t)[None, None, :] < positions[None, :, None]
        target = jax.lax.stop_gradient(
            appearance_logits(vq_embeddings_BThwC, positions, valid))
        phases = self.phases(actions_BT)
        logp = masked_log_softmax(self.logits(phases[:, 1:], phases), valid)
        p_target = jnp.exp(masked_log_softmax(target, valid))
        return -jnp.mean(jnp.sum(jnp.where(valid, p_target * logp, 0.0), axis=-1))


def masked_log_softmax(logits_BQS, valid_BQS):
    """log_softmax over the valid entries (a finite floor: a row with none gives no NaN)."""
    return jax.nn.log_softmax(jnp.where(valid_BQS, logits_BQS, -1e30), axis=-1)
