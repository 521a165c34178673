"""TECO stage-2 network (authors' layout and numerics; AUTHORS_ARCHITECTURE.md section 2-3).

Shapes: B batch, T = seq_len, T' = T - n_cond; VQ latent h x w with C_vq channels (frozen table passed
in, never a parameter); TECO latent z_h x z_w x D (D = embedding_dim); temporal tokens g_h x g_w x E
per frame (n_per = g_h * g_w).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from teco import losses
from teco.models.layers import (Dense, Embed, ResNetDecoder, ResNetEncoder, as_dtype,
                               over_time_in_chunks, param)
from teco.models.maskgit import MASK_TOKEN, MaskGit, sample_training_mask
from teco.models.quantizer import FactorizedCodebook
from teco.models.recall import PathMatch, masked_log_softmax
from teco.models.transformer import Transformer
from teco.models.vqgan import space_to_depth


class PatchProjection(nnx.Module):
    """Conv with kernel = stride = z_ds, VALID, no bias (authors' `z_proj`): [.., z, z, C] -> [.., g, g, E]."""

    def __init__(self, z_ds: int, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        self.z_ds, self.dtype = z_ds, as_dtype(dtype)
        self.kernel = param(rngs, nnx.initializers.lecun_normal(),
                            (z_ds, z_ds, in_features, out_features), (None, None, "conv_in", "embed"))

    def __call__(self, x_NHWC):
        n, h, w, c = x_NHWC.shape
        s = self.z_ds
        x = x_NHWC.astype(self.dtype).reshape(n, h // s, s, w // s, s, c)
        return jnp.einsum("niajbc,abce->nije", x, self.kernel[...].astype(self.dtype))


class PatchUnprojection(nnx.Module):
    """Transposed conv, kernel = stride = z_ds, VALID, no bias (authors' `z_unproj`). Flax applies the
    stored kernel spatially flipped: out(s*i + a, s*j + b) = token(i, j) . kernel[s-1-a, s-1-b]."""

    def __init__(self, z_ds: int, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        self.z_ds, self.dtype = z_ds, as_dtype(dtype)
        self.kernel = param(rngs, nnx.initializers.lecun_normal(),
                            (z_ds, z_ds, in_features, out_features), (None, None, "embed", "conv_out"))

    def __call__(self, x_NGHE):
        n, gh, gw, _ = x_NGHE.shape
        k = self.kernel[...].astype(self.dtype)[::-1, ::-1]
        y = jnp.einsum("nije,abed->niajbd", x_NGHE.astype(self.dtype), k)
        return y.reshape(n, gh * self.z_ds, gw * self.z_ds, -1)


def _flat_time(fn, *xs):
    """Applies a per-frame fn to [B, T, ...] tensors by folding T into the batch (None passes
    through as None)."""
    b, t = xs[0].shape[:2]
    out = fn(*[None if x is None else x.reshape(b * t, *x.shape[2:]) for x in xs])
    return out.reshape(b, t, *out.shape[1:])


class TECO(nnx.Module):
    """Posterior encoder + codebook, temporal transformer, decoder and MaskGit prior (`z_git`).

    Attribute names follow the authors' modules (sos_post, encoder/encoder_out, codebook,
    action_embeds, z_proj, sos, z_tfm, z_unproj, decoder, z_git); `teco.convert` maps their paths.
    """

    def __init__(self, *, vq_n_codes: int, vq_embedding_dim: int, latent_shape, seq_len: int,
                 n_cond: int = 1, encoder_depths=(256, 512), encoder_blocks: int = 2,
                 decoder_depths=(256, 512), decoder_blocks: int = 4, embedding_dim: int = 64,
                 n_codes: int = 1024, proj_dim: int = 32, z_ds: int = 8,
                 tfm_embed_dim: int = 1024, tfm_mlp_dim: int = 4096, tfm_num_heads: int = 16,
                 tfm_num_layers: int = 8, tfm_dropout: float = 0.0,
                 tfm_attention_dropout: float = 0.0, git_vocab_dim: int = 256,
                 git_embed_dim: int = 512, git_mlp_dim: int = 2048, git_num_heads: int = 8,
                 git_num_layers: int = 8, git_dropout: float = 0.0,
                 git_attention_dropout: float = 0.0, mask_schedule: str = "cosine",
                 use_actions: bool = True, action_dim: int = 6, action_embed_dim: int = 16,
                 dropout_actions: bool = True, drop_loss_rate: float = 0.0,
                 label_smoothing: float = 0.01, dtype=jnp.float32, remat: bool = False,
                 encoder_frames_per_chunk: int = 0, decoder_prev_frame: bool = False,
                 prior_prev_frame: bool = False, prev_frame_noise: float = 0.0,
                 decoder_action: bool = False, prior_action: bool = False,
                 recall: bool = False, recall_reach: int = 0, recall_sharpness: float = 1.0,
                 recall_skip: int = 0, rngs: nnx.Rngs):
        h, w = (int(s) for s in latent_shape)
        down = 2 ** (len(encoder_depths) - 1)
        if h % down or w % down:
            raise ValueError(f"TECO: latent {h}x{w} is not divisible by the encoder's {down}x downsampling")
        z_h, z_w = h // down, w // down
        if z_h % z_ds or z_w % z_ds:
            raise ValueError(f"TECO: TECO latent {z_h}x{z_w} is not divisible by z_ds={z_ds}")
        up = 2 ** (len(decoder_depths) - 1)
        if (z_h * up, z_w * up) != (h, w):
            raise ValueError(f"TECO: decoder upsamples {z_h}x{z_w} by {up} to {z_h * up}x{z_w * up}, "
                             f"not the VQ latent {h}x{w}; decoder depths must have as many levels "
                             f"as encoder depths")
        if not 0 < n_cond < seq_len:
            raise ValueError(f"TECO: need 0 < n_cond < seq_len, got n_cond={n_cond}, seq_len={seq_len}")
        self.latent_shape, self.z_shape = (h, w), (z_h, z_w)
        self.g_shape = (z_h // z_ds, z_w // z_ds)
        self.n_per = self.g_shape[0] * self.g_shape[1]
        self.seq_len, self.n_cond, self.z_ds = seq_len, n_cond, z_ds
        self.vq_n_codes, self.n_codes, self.embedding_dim = vq_n_codes, n_codes, embedding_dim
        self.use_actions, self.dropout_actions = use_actions, dropout_actions
        self.drop_loss_rate, self.label_smoothing = float(drop_loss_rate), float(label_smoothing)
        self.tfm_embed_dim = tfm_embed_dim
        if encoder_frames_per_chunk < 0:
            raise ValueError(f"TECO: encoder_frames_per_chunk must be >= 0 (0: all frames at once), "
                             f"got {encoder_frames_per_chunk}")
        self.encoder_frames_per_chunk = int(encoder_frames_per_chunk)
        self.dtype = as_dtype(dtype)
        if not 0.0 <= self.drop_loss_rate < 1.0:
            raise ValueError(f"TECO: drop_loss_rate must be in [0, 1), got {drop_loss_rate}")

        std02 = nnx.initializers.normal(0.02)
        self.sos_post = param(rngs, std02, (h, w, vq_embedding_dim), (None, None, None))
        self.encoder = ResNetEncoder(2 * vq_embedding_dim, encoder_depths, encoder_blocks,
                                     dtype=dtype, rngs=rngs)
        self.encoder_out = Dense(self.encoder.out_features, embedding_dim, names=("conv_in", None),
                                 dtype=dtype, rngs=rngs)
        self.codebook = FactorizedCodebook(n_codes, proj_dim, embedding_dim, rngs=rngs)
        self.action_embeds = Embed(action_dim + 1, action_embed_dim, rngs=rngs)
        self.z_proj = PatchProjection(z_ds, embedding_dim + action_embed_dim, tfm_embed_dim,
                                      dtype=dtype, rngs=rngs)
        self.sos = param(rngs, std02, (*self.g_shape, tfm_embed_dim), (None, None, "embed"))
        self.z_tfm = Transformer(tfm_embed_dim, tfm_embed_dim, tfm_mlp_dim, tfm_num_heads,
                                 tfm_num_layers, pos_type="sinusoidal", block_size=self.n_per,
                                 dropout=tfm_dropout, attention_dropout=tfm_attention_dropout,
                                 dtype=dtype, remat=remat, rngs=rngs)
        self.z_unproj = PatchUnprojection(z_ds, tfm_embed_dim, embedding_dim, dtype=dtype, rngs=rngs)
        # The previous frame's VQ embeddings enter the decoder and / or the prior on z's grid
        # (z_h x z_w), folded space-to-depth: (h / z_h) * (w / z_w) * C_vq more channels.
        self.decoder_prev_frame = bool(decoder_prev_frame)
        self.prior_prev_frame = bool(prior_prev_frame)
        self.prev_frame_noise = float(prev_frame_noise)
        if not 0.0 <= self.prev_frame_noise <= 1.0:
            raise ValueError(f"TECO: prev_frame_noise must be in [0, 1], got {prev_frame_noise}")
        # Frame t's action embedding, broadcast over z's grid, enters the decoder and / or the
        # prior directly, not only through h_t (a short path for what the action does).
        self.decoder_action, self.prior_action = bool(decoder_action), bool(prior_action)
        prev_features = (h // z_h) * (w // z_w) * vq_embedding_dim
        # Recall: the decoder and the prior also read the window's earlier frames (up to
        # seq_len - 1 back) whose place the actions since say frame t is back at
        # (teco/models/recall.py), their VQ embeddings averaged by the match and folded like the
        # previous frame's, and how sure the match is: a path by which a view seen before can
        # come back whole, past the temporal transformer's one token per frame.
        self.recall = bool(recall)
        # How far back a rollout's frame may recall (0: seq_len - 1, as in training). The match
        # reads only the actions between two frames, so it reaches past the window, to the
        # context's real frames, which training never shows it.
        if recall_reach < 0:
            raise ValueError(f"TECO: recall_reach must be >= 0 (0: seq_len - 1), got {recall_reach}")
        self.recall_reach = int(recall_reach) or seq_len - 1
        # The heads read the earlier frames averaged by softmax(recall_sharpness x the match):
        # above 1 the read leans on the best match more than the match's own softmax, whose
        # largest weight averaged 0.40 on `revisits` (a blurred average of views).
        if recall_sharpness <= 0:
            raise ValueError(f"TECO: recall_sharpness must be > 0, got {recall_sharpness}")
        self.recall_sharpness = float(recall_sharpness)
        # The read skips the recall_skip frames nearest to t: the heads read frame t-1 already
        # (`<head>_prev_frame`), and near frames, the most alike, would otherwise crowd out the
        # revisits that only recall brings back.
        if recall_skip < 0 or recall_skip >= seq_len - 1:
            raise ValueError(f"TECO: recall_skip must be in [0, seq_len - 1), got {recall_skip}")
        self.recall_skip = int(recall_skip)
        if self.recall:
            if not use_actions:
                raise ValueError("TECO: recall integrates the actions; it needs use_actions")
            self.recall_match = PathMatch(action_dim, rngs=rngs)
        recall_features = (prev_features + 1) * self.recall
        self.decoder = ResNetDecoder(2 * embedding_dim + prev_features * decoder_prev_frame
                                     + recall_features + action_embed_dim * self.decoder_action,
                                     decoder_depths, decoder_blocks, vq_n_codes, dtype=dtype,
                                     rngs=rngs)
        self.z_git = MaskGit(n_codes, git_vocab_dim,
                             embedding_dim + prev_features * prior_prev_frame
                             + recall_features + action_embed_dim * self.prior_action,
                             self.z_shape,
                             embed_dim=git_embed_dim, mlp_dim=git_mlp_dim, num_heads=git_num_heads,
                             num_layers=git_num_layers, dropout=git_dropout,
                             attention_dropout=git_attention_dropout, mask_schedule=mask_schedule,
                             dtype=dtype, remat=remat, rngs=rngs)

    # --- 2.1 actions -------------------------------------------------------------------------
    def embed_actions(self, actions_BT):
        """[B, T] ints in [0, action_dim) or -1 (no action, the table's last row) -> [B, T, A]."""
        if not self.use_actions:
            actions_BT = jnp.zeros_like(actions_BT)
        return self.action_embeds(actions_BT)

    # --- 2.3 posterior encoder ---------------------------------------------------------------
    def encode_continuous(self, vq_embeddings_BTHWC):
        """u_t = Enc(concat(e_{t-1}, e_t)) for all T frames (e_{-1} = sos_post) -> [B, T, z_h, z_w, D]."""
        b = vq_embeddings_BTHWC.shape[0]
        e = vq_embeddings_BTHWC.astype(jnp.float32)
        sos = jnp.broadcast_to(self.sos_post[...][None, None], (b, 1) + self.sos_post.shape)
        prev = jnp.concatenate([sos, e[:, :-1]], axis=1)
        x = jnp.concatenate([prev, e], axis=-1)
        modules = (self.encoder, self.encoder_out)
        per_frame = lambda m, f: m[1](m[0](f))  # noqa: E731
        if self.encoder_frames_per_chunk and x.shape[1] > self.encoder_frames_per_chunk:
            return over_time_in_chunks(modules, per_frame, x, self.encoder_frames_per_chunk)
        return _flat_time(lambda f: per_frame(modules, f), x)

    def encode(self, vq_embeddings_BTHWC):
        """-> cond [B, n_cond, z_h, z_w, D] (continuous, never quantised), z_embeddings and z_codes of
        frames n_cond.. ([B, T', ...]), and the codebook losses/perplexity over all T frames."""
        u = self.encode_continuous(vq_embeddings_BTHWC)
        vq = self.codebook(u)
        extra = dict(commitment_loss=vq["commitment_loss"], codebook_loss=vq["codebook_loss"],
                     perplexity=vq["perplexity"])
        n = self.n_cond
        return u[:, :n], vq["embeddings"][:, n:], vq["codes"][:, n:], extra

    # --- 2.4 temporal transformer ------------------------------------------------------------
    def frame_tokens(self, latent_BTHWC, actions_emb_BTA):
        """z_proj(concat(latent, action broadcast over the grid)) -> [B, T, g_h, g_w, E]."""
        a = actions_emb_BTA[:, :, None, None, :]
        a = jnp.broadcast_to(a, latent_BTHWC.shape[:-1] + (a.shape[-1],))
        x = jnp.concatenate([latent_BTHWC.astype(self.dtype), a.astype(self.dtype)], axis=-1)
        return _flat_time(self.z_proj, x)


    def temporal_transformer(self, z_embeddings, actions_emb, cond, *, deterministic: bool = True,
                             dropout_key=None, return_raw: bool = False):
        """deter [B, T', z_h, z_w, D]: deter[:, j] summarises frames < n_cond + j (and actions up to
        frame n_cond + j). With return_raw also the z_tfm output [B, T, g_h, g_w, E]."""
        s = jnp.concatenate([cond.astype(self.dtype), z_embeddings.astype(self.dtype)], axis=1)
        if s.shape[1] != self.seq_len:
            raise ValueError(f"TECO: temporal transformer needs {self.seq_len} frames, got {s.shape[1]}")
        tokens = self.frame_tokens(s[:, :-1], actions_emb[:, 1:])
        sos = jnp.broadcast_to(self.sos[...].astype(self.dtype)[None, None],
                               (s.shape[0], 1) + self.sos.shape)
        raw = self.z_tfm(jnp.concatenate([sos, tokens], axis=1), deterministic=deterministic,
                         dropout_key=dropout_key)
        deter = _flat_time(self.z_unproj, raw[:, self.n_cond:])
        return (deter, raw) if return_raw else deter

    def init_temporal_cache(self, batch_size: int, max_frames: int | None = None):
        """Empty key/value cache of the temporal transformer for `max_frames` (default seq_len)."""
        return self.z_tfm.init_cache(batch_size, (max_frames or self.seq_len) * self.n_per)

    def temporal_step(self, prev_latent_BHWC, action_emb_BA, cache, t):
        """Time position t (traced ok) from the latent of frame t-1 and the action of frame t (both
        ignored at t = 0, where the start token is used). -> (deter for frame t [B, z_h, z_w, D],
        updated cache). Positions are absolute within the cache; feed t = 0, 1, ... in order."""
        b = prev_latent_BHWC.shape[0]
        tok = self.frame_tokens(prev_latent_BHWC[:, None], action_emb_BA[:, None])[:, 0]
        tok = jnp.where(jnp.asarray(t) == 0, self.sos[...].astype(self.dtype)[None], tok)
        out, cache = self.z_tfm.extend(tok.reshape(b, self.n_per, -1), cache, t * self.n_per)
        deter = self.z_unproj(out.reshape(b, *self.g_shape, -1))
        return deter, cache

    # --- 2.5 decoder, 2.6 prior --------------------------------------------------------------
    @property
    def reads_prev_frame(self) -> bool:
        return self.decoder_prev_frame or self.prior_prev_frame

    @property
    def heads_read_action(self) -> bool:
        return self.decoder_action or self.prior_action

    def _fold(self, vq_embeddings_NhwC):
        """VQ embeddings onto z's grid, space-to-depth (the encoder shrinks both sides alike)."""
        return space_to_depth(vq_embeddings_NhwC, vq_embeddings_NhwC.shape[1] // self.z_shape[0])

    def _head_input(self, x_NHWC, prev_vq_embeddings_NhwC, action_emb_NA, head: str,
                    recalled_NHWC=None):
        """concat(x, the previous frame's VQ embeddings folded onto z's grid, the recalled ones,
        frame t's action embedding broadcast over it), each part only when `<head>_prev_frame` /
        `recall` / `<head>_action` is on (head: 'decoder' or 'prior')."""
        parts = [x_NHWC]
        if getattr(self, f"{head}_prev_frame"):
            if prev_vq_embeddings_NhwC is None:
                raise ValueError(f"TECO: {head}_prev_frame needs the previous frame's VQ "
                                 f"embeddings")
            parts.append(self._fold(prev_vq_embeddings_NhwC))
        if self.recall:
            if recalled_NHWC is None:
                raise ValueError("TECO: recall needs the recalled frames (recall_frames)")
            parts.append(recalled_NHWC)
        if getattr(self, f"{head}_action"):
            if action_emb_NA is None:
                raise ValueError(f"TECO: {head}_action needs the frame's action embedding")
            a = action_emb_NA[:, None, None, :]
            parts.append(jnp.broadcast_to(a, x_NHWC.shape[:-1] + (a.shape[-1],)))
        if len(parts) == 1:
            return x_NHWC
        return jnp.concatenate([p.astype(x_NHWC.dtype) for p in parts], axis=-1)

    def decoder_input(self, z_embeddings_NHWC, prev_vq_embeddings_NhwC=None, action_emb_NA=None,
                      recalled_NHWC=None):
        """What the decoder reads beside deter: z, and with `decoder_prev_frame` the previous
        frame's VQ embeddings, with `recall` the recalled ones, with `decoder_action` the
        frame's action embedding."""
        return self._head_input(z_embeddings_NHWC, prev_vq_embeddings_NhwC, action_emb_NA,
                                "decoder", recalled_NHWC)

    def prior_condition(self, deter_NHWC, prev_vq_embeddings_NhwC=None, action_emb_NA=None,
                        recalled_NHWC=None):
        """What the MaskGit prior is conditioned on: deter, and with `prior_prev_frame` the
        previous frame's VQ embeddings, with `recall` the recalled ones, with `prior_action` the
        frame's action embedding."""
        return self._head_input(deter_NHWC, prev_vq_embeddings_NhwC, action_emb_NA, "prior",
                                recalled_NHWC)

    def recall_frames(self, phases_BQK, past_phases_BSK, past_vq_embeddings_BShwC, valid_BQS):
        """With `recall`: for each of Q frames (its phases, `PathMatch.phases`), the S earlier
        frames' VQ embeddings folded onto z's grid and averaged by the match over the frames
        `valid_BQS` allows, and one channel more, how sure the match is (its expected logit
        over the largest it can reach, in [-1, 1]):
        [B, Q, z_h, z_w, (h / z_h) * (w / z_w) * C_vq + 1] float32. The match learns from
        `recall_loss` alone (held still here): the heads' losses would outweigh it and, alone,
        they left an earlier match uniform (docs/demo_experiments.md, 2026-12-05 evening)."""
        logits = jax.lax.stop_gradient(self.recall_match.logits(phases_BQK, past_phases_BSK))
        weights = jnp.exp(masked_log_softmax(logits * self.recall_sharpness, valid_BQS)) * valid_BQS
        sure = (jnp.sum(weights * logits, axis=-1)
                / jax.lax.stop_gradient(jnp.sum(self.recall_match.weights())))
        folded = _flat_time(self._fold, past_vq_embeddings_BShwC.astype(jnp.float32))
        recalled = jnp.einsum("bqs,bshwf->bqhwf", weights, folded)
        sure = jnp.broadcast_to(sure[:, :, None, None, None], recalled.shape[:-1] + (1,))
        return jnp.concatenate([recalled, sure], axis=-1)

    def _recall_valid(self, t: int, positions_Q):
        """[1, Q, t]: frame s of a clip may be recalled by the frame at position p if
        s < p - recall_skip."""
        return (jnp.arange(t)[None, None, :]
                < jnp.asarray(positions_Q)[None, :, None] - self.recall_skip)

    def recall_in_clip(self, actions_BT, vq_embeddings_BTHWC, positions_Q):
        """recall_frames for the clip's frames at `positions_Q`, each from the clip's frames
        before it (training and the likelihood probe; a clip is one seq_len window)."""
        phases = self.recall_match.phases(actions_BT)
        valid = self._recall_valid(vq_embeddings_BTHWC.shape[1], positions_Q)
        return self.recall_frames(jnp.take(phases, jnp.asarray(positions_Q), axis=1), phases,
                                  vq_embeddings_BTHWC, valid)

    def recall_loss(self, actions_BT, vq_embeddings_BTHWC):
        """The match's distillation loss over the clip (`PathMatch.loss`)."""
        return self.recall_match.loss(actions_BT, vq_embeddings_BTHWC)

    def decode(self, deter_BTHWC, z_embeddings_BTHWC, prev_vq_embeddings_BThwC=None,
               action_emb_BTA=None, recalled_BTHWC=None):
        """Logits over the VQ codes [B, T, h, w, V_vq] (float32), each frame independently (with
        `decoder_prev_frame`, given its predecessor's VQ embeddings; with `recall`, the recalled
        ones; with `decoder_action`, its action embedding)."""
        def decode(d, z, p, a, r):
            return self.decoder(d, self.decoder_input(z, p, a, r))
        return _flat_time(decode, deter_BTHWC, z_embeddings_BTHWC,
                          prev_vq_embeddings_BThwC if self.decoder_prev_frame else None,
                          action_emb_BTA if self.decoder_action else None,
                          recalled_BTHWC if self.recall else None).astype(jnp.float32)

    def maskgit_step(self, tokens_BTHW, deter_BTHWC, prev_vq_embeddings_BThwC=None,
                     action_emb_BTA=None, recalled_BTHWC=None, *, deterministic: bool = True,
                     dropout_key=None):
        """MaskGit logits [B, T, z_h, z_w, n_codes] for codes (-1 = MASK) given deter (and with
        `prior_prev_frame` the previous frame's VQ embeddings, with `recall` the recalled ones,
        with `prior_action` the frame's action embedding), per frame."""
        def step(y, c, p, a, r):
            return self.z_git.step(y, self.prior_condition(c, p, a, r),
                                   deterministic=deterministic, dropout_key=dropout_key)
        return _flat_time(step, tokens_BTHW, deter_BTHWC,
                          prev_vq_embeddings_BThwC if self.prior_prev_frame else None,
                          action_emb_BTA if self.prior_action else None,
                          recalled_BTHWC if self.recall else None)

    def lookup(self, codes):
        """TECO codes -> z embeddings (codebook lookup mode, used when sampling)."""
        return self.codebook.lookup(codes)

    # --- 3 training loss ----------------------------------------------------------------------
    def loss(self, vq_codes_BTHW, vq_embedding_table, actions_BT, key, *, train: bool,
             maskgit_mask=None):
        """(loss, metrics). `key` drives action dropout, DropLoss, the MaskGit mask and dropout.

        DropLoss and action dropout apply only when train; `maskgit_mask` (bool [B, n_sel, z_h,
        z_w]) replaces the sampled MaskGit mask (tests, analysis).
        """
        b, t = vq_codes_BTHW.shape[:2]
        if t != self.seq_len:
            raise ValueError(f"TECO.loss: expected {self.seq_len} frames, got {t}")
        k_act, k_drop, k_mask, k_dropout = jax.random.split(key, 4)
        k_tfm, k_git = jax.random.split(k_dropout)
        if not train:
            k_tfm = k_git = None
        codes = vq_codes_BTHW.astype(jnp.int32)
        actions = actions_BT.astype(jnp.int32)
        if train and self.dropout_actions and self.use_actions:
            actions = losses.drop_actions(k_act, actions)
        actions_emb = self.embed_actions(actions)
        table = jax.lax.stop_gradient(jnp.asarray(vq_embedding_table, jnp.float32))
        vq_emb = jnp.take(table, codes, axis=0)
        cond, z_emb, z_codes, vq = self.encode(vq_emb)
        deter = self.temporal_transformer(z_emb, actions_emb, cond, deterministic=not train,
                                          dropout_key=k_tfm)
        labels = codes[:, self.n_cond:]
        prev_emb = vq_emb[:, self.n_cond - 1:-1] if self.reads_prev_frame else None
        if prev_emb is not None and train and self.prev_frame_noise > 0.0:
            # A rollout's previous frame is the model's own, never as clean as the real one read
            # here; a model that can trust it fully leans on it rather than on h_t and drifts
            # with its own errors. (fold_in: the other keys stay as without noise.)
            prev_codes = losses.corrupt_codes(jax.random.fold_in(key, 5),
                                              codes[:, self.n_cond - 1:-1],
                                              self.prev_frame_noise, self.vq_n_codes)
            prev_emb = jnp.take(table, prev_codes, axis=0)
        # frame t's own action (the one that moves t-1 to t), for decoder_action / prior_action
        head_actions = actions_emb[:, self.n_cond:] if self.heads_read_action else None
        idx = jnp.arange(t - self.n_cond)
        if train and self.drop_loss_rate > 0.0:
            idx = losses.drop_loss_indices(k_drop, t - self.n_cond, self.drop_loss_rate)
            deter, z_emb, z_codes, labels = (jnp.take(x, idx, axis=1)
                                             for x in (deter, z_emb, z_codes, labels))
            if prev_emb is not None:
                prev_emb = jnp.take(prev_emb, idx, axis=1)
            if head_actions is not None:
                head_actions = jnp.take(head_actions, idx, axis=1)
        recalled = recall_loss = None
        if self.recall:
            recalled = self.recall_in_clip(actions, vq_emb, self.n_cond + idx)
            recall_loss = self.recall_loss(actions, vq_emb)
        n_sel = deter.shape[1]
        if maskgit_mask is None:
            mask = sample_training_mask(k_mask, (b, n_sel), self.z_shape[0] * self.z_shape[1],
                                        self.z_git.mask_schedule).reshape(z_codes.shape)
        else:
            if tuple(maskgit_mask.shape) != tuple(z_codes.shape):
                raise ValueError(f"TECO.loss: maskgit_mask shape {maskgit_mask.shape} != {z_codes.shape}")
            mask = maskgit_mask.astype(bool)
        git_logits = self.maskgit_step(jnp.where(mask, MASK_TOKEN, z_codes), deter, prev_emb,
                                       head_actions, recalled, deterministic=not train,
                                       dropout_key=k_git)
        recon_logits = self.decode(deter, z_emb, prev_emb, head_actions, recalled)
        recon = losses.recon_loss(recon_logits, labels, self.label_smoothing)
        trans = losses.trans_loss(git_logits, z_codes, mask)
        total = recon + trans + vq["commitment_loss"] + vq["codebook_loss"]
        if recall_loss is not None:
            total = total + recall_loss
        metrics = dict(loss=total, recon_loss=recon, trans_loss=trans,
                       commitment_loss=vq["commitment_loss"], codebook_loss=vq["codebook_loss"],
                       perplexity=vq["perplexity"],
                       recon_acc=losses.accuracy(recon_logits, labels),
                       prior_acc=losses.accuracy(git_logits, z_codes, mask))
        if recall_loss is not None:
            metrics["recall_loss"] = recall_loss
        return total, metrics


def teco_from_config(config, vq_n_codes: int, vq_embedding_dim: int, latent_shape, *,
                     rngs: nnx.Rngs) -> TECO:
    """Builds TECO from a config with the keys of configs/teco_model.py (read here, not in the net)."""
    tfm, git = config.z_tfm_kwargs, config.z_git
    return TECO(
        vq_n_codes=vq_n_codes, vq_embedding_dim=vq_embedding_dim, latent_shape=tuple(latent_shape),
        seq_len=config.seq_len, n_cond=config.n_cond,
        encoder_depths=tuple(config.encoder.depths), encoder_blocks=config.encoder.blocks,
        decoder_depths=tuple(config.decoder.depths), decoder_blocks=config.decoder.blocks,
        embedding_dim=config.embedding_dim, n_codes=config.codebook.n_codes,
        proj_dim=config.codebook.proj_dim, z_ds=config.z_ds,
        tfm_embed_dim=tfm.embed_dim, tfm_mlp_dim=tfm.mlp_dim, tfm_num_heads=tfm.num_heads,
        tfm_num_layers=tfm.num_layers, tfm_dropout=tfm.dropout,
        tfm_attention_dropout=tfm.attention_dropout,
        git_vocab_dim=git.vocab_dim, git_embed_dim=git.tfm_kwargs.embed_dim,
        git_mlp_dim=git.tfm_kwargs.mlp_dim, git_num_heads=git.tfm_kwargs.num_heads,
        git_num_layers=git.tfm_kwargs.num_layers, git_dropout=git.tfm_kwargs.dropout,
        git_attention_dropout=git.tfm_kwargs.attention_dropout, mask_schedule=git.mask_schedule,
        use_actions=config.use_actions, action_dim=config.action_dim,
        action_embed_dim=config.action_embed_dim, dropout_actions=config.dropout_actions,
        drop_loss_rate=config.drop_loss_rate, label_smoothing=config.get("label_smoothing", 0.01),
        dtype=config.get("compute_dtype", "float32"), remat=config.get("remat", False),
        encoder_frames_per_chunk=config.get("encoder_frames_per_chunk", 0),
        decoder_prev_frame=config.get("decoder_prev_frame", False),
        prior_prev_frame=config.get("prior_prev_frame", False),
        prev_frame_noise=config.get("prev_frame_noise", 0.0),
        decoder_action=config.get("decoder_action", False),
        prior_action=config.get("prior_action", False), recall=config.get("recall", False),
        recall_reach=config.get("recall_reach", 0),
        recall_sharpness=config.get("recall_sharpness", 1.0),
        recall_skip=config.get("recall_skip", 0), rngs=rngs)


def teco_shell(config, vq_n_codes: int, vq_embedding_dim: int, latent_shape) -> TECO:
    """A TECO of the config's shapes with zero-filled parameters and no random initialisation:
    the cheap starting point for loading converted or saved parameters into it."""
    abstract = nnx.eval_shape(lambda: teco_from_config(
        config, vq_n_codes, vq_embedding_dim, latent_shape, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), state))
