"""TECO (stage 2) model and sampling keys, with the authors' names and the published DMLab values.

Where this framework improves on the authors' network the improvement is an option here, and the
authors' behaviour is the default (see docs and ../shared/reference/AUTHORS_ARCHITECTURE.md).
"""
import ml_collections


def _tfm(embed_dim, mlp_dim, num_heads, num_layers):
    return ml_collections.ConfigDict(dict(
        embed_dim=embed_dim, mlp_dim=mlp_dim, num_heads=num_heads, num_layers=num_layers,
        dropout=0.0, attention_dropout=0.0))


def teco_model_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the TECO keys to `c` (published DMLab sizes)."""
    # Stage-1 model this one is trained on: a `teco.train` VQ-GAN workdir (authors' name).
    c.vqvae_ckpt = ""
    c.seq_len = 300
    c.eval_seq_len = 300
    c.image_size = 64
    c.channels = 3

    # Conditional encoder E(x_t, x_{t-1}) and decoder (decoder depths are used reversed).
    c.encoder = ml_collections.ConfigDict(dict(depths=(256, 512), blocks=2))  # 16x16 -> 8x8
    c.decoder = ml_collections.ConfigDict(dict(depths=(256, 512), blocks=4))
    # Not in the paper: the decoder / the MaskGit prior also read the previous frame's VQ
    # embeddings (the real frame in training, the model's own last frame when sampling).
    c.decoder_prev_frame = False
    c.prior_prev_frame = False
    # Training only, with either of the two: the largest fraction of the previous frame's codes
    # replaced by random ones (each frame draws its fraction uniformly below it).
    c.prev_frame_noise = 0.0
    # Not in the paper: the decoder / the MaskGit prior also read frame t's action embedding
    # directly, not only through h_t (what the action does to the view, on a short path).
    c.decoder_action = False
    c.prior_action = False
    # Not in the paper: the decoder and the prior also read the window's earlier frames whose
    # place the actions since say frame t is back at (a learnt integration of the actions,
    # taught by how alike the frames look): a view seen before can come back whole.
    c.recall = False
    # With recall: how far back a rollout's frame may recall (0: seq_len - 1, training's reach).
    c.recall_reach = 0
    # With recall: the heads read softmax(recall_sharpness x the match) of the earlier frames
    # (1: the match's own softmax; larger: closer to the single best match).
    c.recall_sharpness = 1.0
    # With recall: the read skips the frames this near to t (frame t-1 the heads read anyway).
    c.recall_skip = 0
    c.embedding_dim = 64
    # The encoder runs on every frame of the clip: >0 runs it on this many time steps at a time,
    # recomputed in the backward pass (less activation memory at the same result, more compute).
    c.encoder_frames_per_chunk = 0
    c.codebook = ml_collections.ConfigDict(dict(n_codes=1024, proj_dim=32))
    c.n_cond = 1

    # Temporal transformer: strided conv kernel = stride = z_ds (8x8 -> 1x1 for DMLab).
    c.z_ds = 8
    c.z_tfm_kwargs = _tfm(1024, 4096, 16, 8)

    # Per-frame MaskGit prior.
    c.z_git = ml_collections.ConfigDict(dict(
        vocab_dim=256, mask_schedule="cosine", tfm_kwargs=_tfm(512, 2048, 8, 8)))

    # Loss.
    c.drop_loss_rate = 0.9      # DropLoss: losses on (1 - rate) of the predicted frames
    c.label_smoothing = 0.01    # decoder (reconstruction) cross-entropy

    # Actions.
    c.use_actions = True
    c.action_dim = 6
    c.action_embed_dim = 16
    c.dropout_actions = True    # whole sequences -> "no action" with probability 0.5

    # Sampling.
    c.T_draft = 8
    c.T_revise = 8
    c.M = 2
    c.open_loop_ctx = 36
    c.sampler = "draft_revise"  # or 'confidence' (MaskGIT's confidence-ordered cosine schedule)
    c.temperature = 1.0
    c.top_k = 0                 # 0 = no top-k
    c.guidance_scale = 1.0      # 1 = action-conditioned logits, 0 = unconditioned
    return c


def tiny_teco(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a TECO config for unit tests and smoke runs (seconds per step on a CPU)."""
    c.seq_len = 8
    c.eval_seq_len = 8
    c.image_size = 16           # tiny VQ-GAN: 16x16 frames -> 8x8 codes
    c.z_ds = 2                  # 4x4 latent -> 2x2 temporal tokens
    c.batch_size = 8
    c.encoder.depths = (32, 64)
    c.encoder.blocks = 1
    c.decoder.depths = (32, 64)
    c.decoder.blocks = 1
    c.embedding_dim = 16
    c.codebook.n_codes = 32
    c.codebook.proj_dim = 8
    c.z_tfm_kwargs = _tfm(32, 64, 2, 1)
    c.z_git = ml_collections.ConfigDict(dict(
        vocab_dim=16, mask_schedule="cosine", tfm_kwargs=_tfm(32, 64, 2, 1)))
    c.open_loop_ctx = 2
    c.drop_loss_rate = 0.5
    c.T_draft = 2
    c.T_revise = 2
    c.M = 1
    return c
