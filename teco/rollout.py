"""Long-horizon rollouts of a TECO model in VQ-code space.

Given the VQ codes of `n_context` observed frames and the actions of all frames, imagine the
next frames one at a time. Two paths give the same frames for the same key:

- `rollout` (fast): the temporal transformer runs incrementally with a key/value cache, so a new
  frame costs one frame's tokens; the whole rollout is one `lax.scan`, compiled once.
  Within `seq_len` frames the transformer sees the sampled latents of the generated frames.
  Past it the window slides and, as in the authors' sampler, the last `seq_len - 1` frames are
  re-encoded from their VQ codes (the first one unquantised, as the conditioning frame); each
  frame's re-encoding is computed once when it is generated, so a slide only rebuilds the cache.
- `rollout_reference` (slow): recomputes the whole temporal transformer over the window for
  every frame, as the authors' sampler does. Used to check the fast path.

Randomness: frame t uses `fold_in(key, t)`, in both paths.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from teco import sampling
from teco.first_index import first_argmax


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """How MaskGit decodes one frame (see teco.sampling)."""

    sampler: str = "draft_revise"   # or 'confidence'
    T_draft: int = 8
    T_revise: int = 8
    M: int = 2
    temperature: float = 1.0
    top_k: int = 0
    guidance_scale: float = 1.0     # 1: action-conditioned logits; 0: unconditioned

    @classmethod
    def from_config(cls, config) -> "SamplerSpec":
        return cls(sampler=config.sampler, T_draft=config.T_draft, T_revise=config.T_revise,
                   M=config.M, temperature=config.temperature, top_k=config.top_k,
                   guidance_scale=config.guidance_scale)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0


def context_latents(model, table, codes_BCHW):
    """TECO latents of observed frames: the first n_cond unquantised, the rest quantised."""
    e = jnp.take(table, codes_BCHW.astype(jnp.int32), axis=0)
    u = model.encode_continuous(e)
    q = model.codebook(u)["embeddings"]
    n = model.n_cond
    return jnp.concatenate([u[:, :n], q[:, n:]], axis=1).astype(jnp.float32)


def encoded_latent(model, table, prev_codes_BHW, codes_BHW):
    """Quantised encoder latent of a frame from its VQ codes and its predecessor's."""
    e = jnp.take(table, jnp.stack([prev_codes_BHW, codes_BHW], axis=1).astype(jnp.int32), axis=0)
    u = model.encoder_out(model.encoder(jnp.concatenate([e[:, 0], e[:, 1]], axis=-1)))
    return model.codebook(u)["embeddings"].astype(jnp.float32)


def recall_window(model, table, vq_hist_BNHW, actions_BN, t):
    """`recall` for frame t of a rollout: the recalled VQ embeddings of frames
    t - recall_reach .. t - 1 - recall_skip (those that exist; by default seq_len - 1 back, the
    reach frame t's recall has in training), matched by the actions since each of them
    [B, z_h, z_w, F]."""
    n = min(model.recall_reach, vq_hist_BNHW.shape[1])
    start = jnp.clip(jnp.asarray(t) - n, 0, vq_hist_BNHW.shape[1] - n)
    codes = jax.lax.dynamic_slice_in_dim(vq_hist_BNHW, start, n, axis=1)
    past = jnp.take(table, codes.astype(jnp.int32), axis=0)
    # only phase differences count: frame t's is frame t-1's (in the slice) plus t's turn
    past_phases = model.recall_match.phases(
        jax.lax.dynamic_slice_in_dim(actions_BN, start, n, axis=1))
    phase_t = (jax.lax.dynamic_index_in_dim(past_phases, jnp.asarray(t) - 1 - start, axis=1)
               + model.recall_match.turns(
                   jax.lax.dynamic_index_in_dim(actions_BN, t, axis=1)))
    valid = model._recall_valid(n, (jnp.asarray(t) - start)[None])   # the clip's rule, t local
    return model.recall_frames(phase_t, past_phases, past, valid)[:, 0]


def _recalled(model, table, vq_hist_BNHW, actions_BN, t, guided: bool):
    """recall_window with the actions, and without any (the unconditioned side of guidance)."""
    if not model.recall:
        return None, None
    recalled = recall_window(model, table, vq_hist_BNHW, actions_BN, t)
    if not guided:
        return recalled, None
    return recalled, recall_window(model, table, vq_hist_BNHW, jnp.full_like(actions_BN, -1), t)


def decode_frame(model, table, deter_BHWC, deter_uncond_BHWC, key, spec: SamplerSpec,
                 fixed_codes_BL=None, fixed_mask_BL=None, prev_codes_BHW=None,
                 action_emb_BA=None, action_emb_uncond_BA=None, recalled_BHWC=None,
                 recalled_uncond_BHWC=None):
    """MaskGit-samples TECO codes given h_{t-1}, then decodes VQ codes (argmax); a model with
    `decoder_prev_frame` / `prior_prev_frame` also reads the previous frame's VQ codes
    `prev_codes_BHW`, one with `decoder_action` / `prior_action` the frame's action embedding
    (`action_emb_uncond_BA`, the no-action one, beside the unconditioned h when guided), one
    with `recall` what it recalls (recall_window; and with no actions, beside the
    unconditioned h)."""
    b = deter_BHWC.shape[0]
    zh, zw = model.z_shape
    prev = None
    if model.reads_prev_frame:
        prev = jnp.take(table, prev_codes_BHW.astype(jnp.int32), axis=0)
    recalled, recalled_u = recalled_BHWC, recalled_uncond_BHWC
    if model.recall:
        if recalled is None or (spec.guided and recalled_u is None):
            raise ValueError("decode_frame: a model with recall needs the recalled frames "
                             "(recall_window)")
        recalled_u = recalled_u if spec.guided else recalled
    cond = model.prior_condition(deter_BHWC, prev, action_emb_BA, recalled)
    cond_u = (model.prior_condition(deter_uncond_BHWC, prev, action_emb_uncond_BA, recalled_u)
              if spec.guided else cond)

    def logits_fn(tokens_BL):
        tokens = tokens_BL.reshape(b, zh, zw)
        logits = model.z_git.step(tokens, cond)
        if spec.guided:
            uncond = model.z_git.step(tokens, cond_u)
            logits = sampling.mix_guidance(logits, uncond, spec.guidance_scale)
        return logits.reshape(b, zh * zw, -1)

    given = jnp.zeros((b, zh * zw), jnp.int32) if fixed_codes_BL is None else fixed_codes_BL
    fixed = jnp.zeros((b, zh * zw), bool) if fixed_mask_BL is None else fixed_mask_BL
    if spec.sampler == "draft_revise":
        codes = sampling.draft_and_revise(logits_fn, key, given, fixed, T_draft=spec.T_draft,
                                          T_revise=spec.T_revise, M=spec.M,
                                          temperature=spec.temperature, top_k=spec.top_k)
    elif spec.sampler == "confidence":
        codes = sampling.confidence_decode(logits_fn, key, given, fixed,
                                           steps=spec.T_draft + spec.M * spec.T_revise,
                                           temperature=spec.temperature, top_k=spec.top_k)
    else:
        raise ValueError(f"sampler must be 'draft_revise' or 'confidence', got {spec.sampler!r}")
    z = model.lookup(codes.reshape(b, zh, zw))
    vq_logits = model.decoder(deter_BHWC, model.decoder_input(z, prev, action_emb_BA, recalled))
    return first_argmax(vq_logits), z


def _check(model, codes_BCHW, actions_BN, n_new):
    c = codes_BCHW.shape[1]
    if c < model.n_cond or c < 1:
        raise ValueError(f"rollout: need at least n_cond={model.n_cond} context frames, got {c}")
    if actions_BN.shape[1] != c + n_new:
        raise ValueError(f"rollout: actions cover {actions_BN.shape[1]} frames, expected "
                         f"n_context + n_new = {c + n_new}")
    if n_new < 1:
        raise ValueError(f"rollout: n_new must be positive, got {n_new}")


def _embedded_actions(model, actions_BN, guided: bool):
    cond = model.embed_actions(actions_BN)
    uncond = model.embed_actions(jnp.full_like(actions_BN, -1)) if guided else cond
    return cond, uncond


def _prefill(model, latents_BFHWC, actions_emb_BFA, n_frames_cache: int):
    """Cache holding positions 0..F-1 (start token, then latent p-1 with action p)."""
    b, f = latents_BFHWC.shape[:2]
    cache = model.init_temporal_cache(b, n_frames_cache)
    sos = jnp.broadcast_to(model.sos[...].astype(model.dtype)[None, None], (b, 1) + model.sos.shape)
    parts = [sos]
    if f > 1:
        parts.append(model.frame_tokens(latents_BFHWC[:, :-1], actions_emb_BFA[:, 1:]))
    tokens = jnp.concatenate(parts, axis=1).reshape(b, f * model.n_per, -1)
    _, cache = model.z_tfm.extend(tokens, cache, 0)
    return cache


def rollout(model, table, codes_BCHW, actions_BN, key, *, n_new: int, spec: SamplerSpec,
            fixed_codes=None, fixed_mask=None) -> jax.Array:
    """Imagines `n_new` frames after the context. Returns VQ codes int32 [B, C + n_new, h, w]
    (the context copied through). `fixed_codes`/`fixed_mask` [B, n_new, z_h, z_w] pin TECO
    tokens of future frames (editing); the rest is imagined."""
    _check(model, codes_BCHW, actions_BN, n_new)
    b, c = codes_BCHW.shape[:2]
    total, window, n_cond = c + n_new, model.seq_len, model.n_cond
    zh, zw = model.z_shape
    a_cond, a_uncond = _embedded_actions(model, actions_BN, spec.guided)
    latents = context_latents(model, table, codes_BCHW)
    z_hist = jnp.zeros((b, total) + latents.shape[2:], jnp.float32).at[:, :c].set(latents)
    vq_hist = jnp.zeros((b, total) + codes_BCHW.shape[2:], jnp.int32).at[:, :c].set(codes_BCHW)
    slides = total > window
    # Re-encodings of every frame from its VQ codes, for the slides (quantised; slot 0 of a
    # window is redone unquantised).
    enc_hist = None
    if slides:
        e = jnp.take(table, codes_BCHW.astype(jnp.int32), axis=0)
        enc_ctx = model.codebook(model.encode_continuous(e))["embeddings"].astype(jnp.float32)
        enc_hist = jnp.zeros_like(z_hist).at[:, :c].set(enc_ctx)
    if fixed_codes is None:
        fixed_codes = jnp.zeros((b, n_new, zh, zw), jnp.int32)
        fixed_mask = jnp.zeros((b, n_new, zh, zw), bool)

    def cache_over(z_frames, a_frames):
        return _prefill(model, z_frames, a_frames, window)

    def slide(enc_hist, vq_hist, t):
        """Caches over frames t-W+1 .. t-1, whose first n_cond are re-encoded unquantised."""
        start = t - (window - 1)
        codes_w = jax.lax.dynamic_slice_in_dim(vq_hist, start, window - 1, axis=1)
        z_w = jax.lax.dynamic_slice_in_dim(enc_hist, start, window - 1, axis=1)
        z_w = z_w.at[:, :n_cond].set(context_latents(model, table, codes_w[:, :n_cond]))
        acts = [jax.lax.dynamic_slice_in_dim(a, start, window - 1, axis=1)
                for a in (a_cond, a_uncond)]
        return (cache_over(z_w, acts[0]), cache_over(z_w, acts[1]) if spec.guided else None,
                z_w[:, -1])

    def step(carry, t):
        cache, cache_u, z_hist, enc_hist, vq_hist = carry
        prev = jax.lax.dynamic_index_in_dim(z_hist, t - 1, axis=1, keepdims=False)
        if c >= window:          # every frame is past the window
            cache, cache_u, prev = slide(enc_hist, vq_hist, t)
        elif slides:
            cache, cache_u, prev = jax.lax.cond(
                t >= window, lambda: slide(enc_hist, vq_hist, t), lambda: (cache, cache_u, prev))
        pos = jnp.minimum(t, window - 1)
        act = jax.lax.dynamic_index_in_dim(a_cond, t, axis=1, keepdims=False)
        deter, cache = model.temporal_step(prev, act, cache, pos)
        deter_u, act_u = deter, act
        if spec.guided:
            act_u = jax.lax.dynamic_index_in_dim(a_uncond, t, axis=1, keepdims=False)
            deter_u, cache_u = model.temporal_step(prev, act_u, cache_u, pos)
        i = t - c
        fc = jax.lax.dynamic_index_in_dim(fixed_codes, i, axis=1, keepdims=False)
        fm = jax.lax.dynamic_index_in_dim(fixed_mask, i, axis=1, keepdims=False)
        prev_vq = jax.lax.dynamic_index_in_dim(vq_hist, t - 1, axis=1, keepdims=False)
        recalled, recalled_u = _recalled(model, table, vq_hist, actions_BN, t, spec.guided)
        vq, z = decode_frame(model, table, deter, deter_u, jax.random.fold_in(key, t), spec,
                             fc.reshape(b, -1), fm.reshape(b, -1), prev_vq, act, act_u,
                             recalled, recalled_u)
        z_hist = jax.lax.dynamic_update_index_in_dim(z_hist, z.astype(jnp.float32), t, axis=1)
        if slides:
            enc = encoded_latent(model, table, prev_vq, vq)
            enc_hist = jax.lax.dynamic_update_index_in_dim(enc_hist, enc, t, axis=1)
        vq_hist = jax.lax.dynamic_update_index_in_dim(vq_hist, vq, t, axis=1)
        return (cache, cache_u, z_hist, enc_hist, vq_hist), None

    if c < window:
        cache = cache_over(latents, a_cond[:, :c])
        cache_u = cache_over(latents, a_uncond[:, :c]) if spec.guided else None
    else:
        cache = model.init_temporal_cache(b, window)
        cache_u = cache if spec.guided else None
    (*_, vq_hist), _ = jax.lax.scan(step, (cache, cache_u, z_hist, enc_hist, vq_hist),
                                    jnp.arange(c, total))
    return vq_hist


def rollout_reference(model, table, codes_BCHW, actions_BN, key, *, n_new: int,
                      spec: SamplerSpec) -> jax.Array:
    """The authors' way: the full temporal transformer over the window for every new frame,
    the sampled latents within `seq_len`, a re-encoded window of VQ codes past it."""
    _check(model, codes_BCHW, actions_BN, n_new)
    b, c = codes_BCHW.shape[:2]
    total, window, n_cond = c + n_new, model.seq_len, model.n_cond
    vq = jnp.zeros((b, max(total, window)) + codes_BCHW.shape[2:], jnp.int32).at[:, :c].set(codes_BCHW)
    lat = context_latents(model, table, codes_BCHW)
    z = jnp.zeros((b, max(total, window)) + lat.shape[2:], jnp.float32).at[:, :c].set(lat)
    if total < window:  # the transformer needs exactly seq_len positions: pad the future
        actions_BN = jnp.concatenate(
            [actions_BN, jnp.zeros((b, window - total), actions_BN.dtype)], axis=1)

    def deter_at(latents, actions_win, slot):
        emb = model.embed_actions(actions_win)
        out = model.temporal_transformer(latents[:, n_cond:], emb, latents[:, :n_cond])
        return out[:, slot - n_cond]

    @functools.partial(jax.jit, static_argnames="sliding")
    def frame(vq, z, t, sliding):
        start = t - (window - 1) if sliding else 0
        slot = t - start
        acts = jax.lax.dynamic_slice_in_dim(actions_BN, start, window, axis=1)
        if sliding:  # last window - 1 frames re-encoded, plus a dummy frame of zeros
            codes_win = jax.lax.dynamic_slice_in_dim(vq, start, window, axis=1)
            codes_win = codes_win.at[:, -1].set(0)
            latents = context_latents(model, table, codes_win)
        else:
            latents = z[:, :window]
        deter = deter_at(latents, acts, slot)
        deter_u = deter_at(latents, jnp.full_like(acts, -1), slot) if spec.guided else deter
        prev_vq = jax.lax.dynamic_index_in_dim(vq, t - 1, axis=1, keepdims=False)
        act = model.embed_actions(
            jax.lax.dynamic_index_in_dim(actions_BN, t, axis=1, keepdims=False))
        act_u = model.embed_actions(jnp.full_like(actions_BN[:, 0], -1)) if spec.guided else act
        recalled, recalled_u = _recalled(model, table, vq[:, :total], actions_BN[:, :total], t,
                                         spec.guided)
        new, z_new = decode_frame(model, table, deter, deter_u, jax.random.fold_in(key, t), spec,
                                  prev_codes_BHW=prev_vq, action_emb_BA=act,
                                  action_emb_uncond_BA=act_u, recalled_BHWC=recalled,
                                  recalled_uncond_BHWC=recalled_u)
        return (jax.lax.dynamic_update_index_in_dim(vq, new, t, axis=1),
                jax.lax.dynamic_update_index_in_dim(z, z_new.astype(jnp.float32), t, axis=1))

    for t in range(c, total):
        vq, z = frame(vq, z, t, t >= window)
    return vq[:, :total]
