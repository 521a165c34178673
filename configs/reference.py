"""What every config key does, in one place, and the generator of docs/configs.md.

    python -m configs.reference           # writes docs/configs.md
    python -m configs.reference --check   # exits 1 if docs/configs.md is out of date

`KEY_DOCS` maps each dotted key of the configs (`configs/<data set>_vqgan.py` for stage 1,
`configs/<data set>.py` for stage 2) to one line: its effect, the paper's name or value where
there is one, and the code that reads it. A key whose effect differs between the stages maps to
{'vqgan': ..., 'teco': ...}. tests/configs_test.py keeps KEY_DOCS, the configs and the generated
page in step: a new key needs a line here, then a rerun of this module.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import ml_collections

from teco.sharding import DEFAULT_RULES

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "configs.md"
DATASETS = ("dmlab", "minecraft", "habitat", "kinetics600", "memory_maze")
# (stage name = config.model, title, config module suffix)
STAGES = (("vqgan", "Stage 1: VQ-GAN", "_vqgan"), ("teco", "Stage 2: TECO", ""))
# Modules of configs/ that are building blocks or this file, not configs.
NOT_CONFIGS = ("__init__", "common", "teco_model", "vqgan_model", "reference")

_TFM = "teco/models/transformer.py"

# (section title, {key: description}); the page lists the sections in this order.
SECTIONS: tuple[tuple[str, dict], ...] = (
    ("Run", {
        "model": "Which stage `teco.train` runs: 'vqgan' (stage 1) or 'teco' (stage 2) "
                 "(teco/tasks/__init__.py).",
        "seed": "Seed of parameter initialisation, data shuffling and crops; evaluation crops use "
                "seed + 7919 (teco/train.py, teco/data.py).",
    }),
    ("Frames and clips", {
        "image_size": {
            "vqgan": "Frame height = width in pixels the VQ-GAN is built for; code grid = "
                     "image_size / (patch_size * 2^(len(ch_mult) - 1)), 16x16 in the paper; copied "
                     "to data.image_size (teco/models/vqgan.py, configs/common.py).",
            "teco": "Frame size; must equal the VQ-GAN's image_size (checked at start-up by "
                    "teco/checkpoint.py check_stage2_config); copied to data.image_size.",
        },
        "channels": {
            "vqgan": "Colour channels of the frames: VQ-GAN input and output, discriminator input "
                     "(teco/models/vqgan.py, teco/tasks/vqgan.py).",
            "teco": "Colour channels; only checked against the VQ-GAN's at start-up "
                    "(teco/checkpoint.py check_stage2_config).",
        },
        "seq_len": {
            "vqgan": "Consecutive frames cut from each video per example (1 = one random frame); "
                     "a step trains on batch_size * seq_len frames (teco/data.py, "
                     "teco/tasks/vqgan.py).",
            "teco": "Training clip length T in frames (paper: 300, Kinetics 100); also the "
                    "temporal transformer's window when rollouts run past it, and teco.sample "
                    "makes seq_len - n_context new frames by default (teco/models/teco.py, "
                    "teco/rollout.py).",
        },
        "eval_seq_len": "Length of the videos teco.sample makes by default, context "
                        "included (--n_new defaults to eval_seq_len - open_loop_ctx; "
                        "teco/sample.py); teco.eval's lengths come from --protocol.",
    }),
    ("VQ-GAN network and codebook", {
        "vqgan.ch": "Base channel width of the ResNet encoder and decoder; level i has "
                    "ch * ch_mult[i] channels (teco/models/vqgan.py).",
        "vqgan.ch_mult": "One encoder/decoder level per entry (its width multiplier), with a "
                         "stride-2 conv down / sub-pixel 2x up between consecutive levels "
                         "(teco/models/vqgan.py).",
        "vqgan.num_res_blocks": "ResNet blocks per encoder and decoder level (teco/models/vqgan.py).",
        "vqgan.patch_size": "Frames enter as patch_size x patch_size pixel-unshuffled patches and "
                            "leave through a sub-pixel conv; multiplies the downsampling "
                            "(teco/models/vqgan.py).",
        "vqgan.embedding_dim": "Channels of the encoder output and of the code embeddings, the "
                               "frozen table TECO reads (teco/models/vqgan.py, "
                               "teco/models/quantizer.py).",
        "vqgan.n_codes": "Codebook size K of the VQ-GAN, the vocabulary TECO's decoder predicts "
                         "over (teco/models/quantizer.py).",
        "vqgan.proj_dim": "Dimension of the factorised, l2-normalised code lookup (ViT-VQGAN); "
                          "encoder outputs are projected into it and back "
                          "(teco/models/quantizer.py).",
        "vqgan.beta": "beta, the commitment weight in L_VQ (paper: 0.25) "
                      "(teco/models/quantizer.py).",
        "vqgan.restart_dead_codes": "Move dead codes onto random encoder outputs of the batch "
                                    "(not in the paper; keeps the codebook in use) "
                                    "(teco/tasks/vqgan.py).",
        "vqgan.restart_interval": "Steps between dead-code restarts (teco/tasks/vqgan.py).",
        "vqgan.restart_usage": "Restarts happen only while fewer than this fraction of the codes "
                               "are alive (teco/tasks/vqgan.py).",
        "vqgan.restart_threshold": "A code is dead while its running usage is below this fraction "
                                   "of uniform usage (threshold / n_codes); also defines the "
                                   "logged codes_alive (teco/tasks/vqgan.py).",
        "vqgan.usage_decay": "EMA decay of the per-code usage that restarts and codes_alive read "
                             "(teco/tasks/vqgan.py).",
    }),
    ("VQ-GAN loss and discriminator", {
        "loss.pixel": "Pixel reconstruction term: 'l1' (mean absolute error) or 'l2' (mean "
                      "squared error) (teco/tasks/vqgan.py).",
        "loss.pixel_weight": "Weight of the pixel term in the generator loss (teco/tasks/vqgan.py).",
        "loss.lpips_weight": "Weight of L_LPIPS in the generator loss; 0 skips computing it "
                             "(teco/tasks/vqgan.py).",
        "loss.lpips_net": "LPIPS backbone, 'alexnet' (the paper's metric) or 'vgg16', of the loss "
                          "and of the eval lpips that picks the best checkpoint "
                          "(teco/tasks/vqgan.py).",
        "loss.lpips_min_side": "Frames narrower than this many pixels (or than the LPIPS net's "
                               "minimum, AlexNet 31) are upsampled by a whole factor before "
                               "LPIPS, in the loss and in eval; 0: up to the net's minimum only "
                               "(teco/tasks/vqgan.py).",
        "loss.disc_weight": "Multiplies the adaptive weight lambda of L_GAN; 0 turns the GAN and "
                            "the discriminator off (teco/tasks/vqgan.py).",
        "loss.disc_start": "Step at which the GAN term and the discriminator's updates start; "
                           "at or past total_steps no discriminator is built "
                           "(teco/tasks/vqgan.py).",
        "loss.disc_loss": "GAN objective of discriminator and generator: 'hinge' or "
                          "'non_saturating' (teco/models/discriminator.py).",
        "loss.adaptive_delta": "delta in lambda = norm(grad_GL L_rec) / (norm(grad_GL L_GAN) + "
                               "delta), G_L the decoder's last conv, L_rec = pixel + LPIPS terms "
                               "(paper: 1e-6) (teco/tasks/vqgan.py).",
        "disc.ch": "Base width of the PatchGAN discriminator; layer i has ch * min(2^i, 8) "
                   "channels (teco/models/discriminator.py).",
        "disc.n_layers": "Stride-2 conv layers of the discriminator: one real/fake logit per cell "
                         "of an (H / 2^n_layers)^2 grid (teco/models/discriminator.py).",
        "disc_lr": "Peak learning rate of the discriminator's AdamW (same schedule, betas, weight "
                   "decay and clipping as the generator) (teco/tasks/vqgan.py, teco/optim.py).",
    }),
    ("TECO network", {
        "vqvae_ckpt": "The stage-1 teco.train workdir: its VQ-GAN (best eval checkpoint, else the "
                      "latest) gives the frozen code table, encodes pixel batches and decodes "
                      "pictures; empty = pass --config.vqvae_ckpt (teco/tasks/teco.py, "
                      "teco/checkpoint.py).",
        "encoder.depths": "Channel widths of the levels of the conditional encoder "
                          "E(x_t, x_t-1), 2x average pooling between levels (16x16 VQ latent -> "
                          "8x8) (paper: [256, 512]) (teco/models/layers.py ResNetEncoder).",
        "encoder.blocks": "ResNet blocks in each encoder level after the first, which has one as "
                          "in the authors' code (paper: 2) (teco/models/layers.py ResNetEncoder).",
        "decoder.depths": "Channel widths of the decoder p(x_t | z_t, h_t-1), used in reverse "
                          "with nearest 2x upsampling between levels; as many levels as "
                          "encoder.depths (paper: [256, 512]) (teco/models/layers.py ResNetDecoder).",
        "decoder.blocks": "ResNet blocks per decoder level (paper: 4) "
                          "(teco/models/layers.py ResNetDecoder).",
        "decoder_prev_frame": "Not in the paper: the decoder also reads the previous frame's VQ "
                              "embeddings, folded onto z_t's grid (the real frame in training, "
                              "its own last frame in rollouts), a short path for what stays in "
                              "view; models with it cannot load the authors' checkpoints "
                              "(default False) (teco/models/teco.py decoder_input).",
        "prior_prev_frame": "Not in the paper: the MaskGit prior is conditioned on the previous "
                            "frame's VQ embeddings as well as on h_t, folded onto z_t's grid (the "
                            "real frame in training, the model's own last frame in rollouts); "
                            "models with it cannot load the authors' checkpoints (default False) "
                            "(teco/models/teco.py prior_condition).",
        "prev_frame_noise": "Not in the paper, with decoder_prev_frame or prior_prev_frame: in "
                            "training each previous frame has a fraction u ~ U(0, this) of its "
                            "VQ codes replaced by random ones, so the model does not trust it "
                            "more than a rollout's own frames deserve (default 0: the real frame "
                            "as it is) (teco/losses.py corrupt_codes).",
        "decoder_action": "Not in the paper: the decoder also reads frame t's action embedding "
                          "(the action that moves frame t-1 to t, the no-action one when it is "
                          "dropped), broadcast over z_t's grid, beside h_t, which holds it only "
                          "through the temporal transformer; models with it cannot load the "
                          "authors' checkpoints (default False) (teco/models/teco.py "
                          "decoder_input).",
        "prior_action": "Not in the paper: the MaskGit prior is conditioned on frame t's action "
                        "embedding as well as on h_t, broadcast over z_t's grid (the no-action "
                        "one when it is dropped, and for guidance's unconditioned logits); "
                        "models with it cannot load the authors' checkpoints (default False) "
                        "(teco/models/teco.py prior_condition).",
        "recall": "Not in the paper: the decoder and the MaskGit prior also read the VQ "
                  "embeddings of the window's earlier frames (up to seq_len - 1 back: the real "
                  "frames in training, the rollout's own in rollouts), folded onto z_t's grid and "
                  "averaged by a match of frame t with each of them computed from the actions "
                  "between them alone (each action turns 32 planes by learnt angles; taught by "
                  "how alike the frames' coarse looks are), and how sure that match is: a path by "
                  "which a view seen before comes back whole; needs use_actions; models with it "
                  "cannot load the authors' checkpoints (default False) (teco/models/recall.py).",
        "recall_reach": "With recall: how many frames back a rollout's frame may recall; 0 means "
                        "seq_len - 1, the reach training has. The match reads only the actions "
                        "between two frames, so a longer reach lets late frames recall the "
                        "context's real frames (default 0) (teco/rollout.py recall_window).",
        "recall_sharpness": "With recall: the heads read the earlier frames averaged by "
                            "softmax(recall_sharpness x the match's logits); 1 is the match's own "
                            "softmax, larger leans on its best pick (default 1.0) "
                            "(teco/models/teco.py recall_frames).",
        "recall_skip": "With recall: the read skips the frames this near to frame t (it may "
                       "recall frames up to t - 1 - recall_skip); the heads read frame t-1 anyway "
                       "(default 0) (teco/models/teco.py _recall_valid, teco/rollout.py "
                       "recall_window).",
        "embedding_dim": "Channels D of TECO's latent z_t and of h_t after the temporal "
                         "transformer (paper: 64) (teco/models/teco.py).",
        "codebook.n_codes": "Size of TECO's own codebook, also MaskGit's vocabulary (paper: 1024) "
                            "(teco/models/quantizer.py, teco/models/maskgit.py).",
        "codebook.proj_dim": "Dimension of TECO's factorised, l2-normalised code lookup "
                             "(paper: 32) (teco/models/quantizer.py).",
        "n_cond": "First frames of a clip, encoded without quantisation, that only condition (no "
                  "decoder or prior loss); rollouts need at least this many context frames "
                  "(paper: 1) (teco/models/teco.py, teco/rollout.py).",
        "z_ds": "Kernel = stride of the conv before (and transposed conv after) the temporal "
                "transformer: a frame gives (latent side / z_ds)^2 tokens (DMLab 8x8 -> 1) "
                "(paper: 8) (teco/models/teco.py).",
        "z_tfm_kwargs.embed_dim": f"Width of the temporal transformer H (paper: 1024) ({_TFM}).",
        "z_tfm_kwargs.mlp_dim": f"MLP hidden width of the temporal transformer (paper: 4096) ({_TFM}).",
        "z_tfm_kwargs.num_heads": "Attention heads of the temporal transformer; must divide "
                                  f"embed_dim (paper: 16) ({_TFM}).",
        "z_tfm_kwargs.num_layers": f"Layers of the temporal transformer (paper: 8) ({_TFM}).",
        "z_tfm_kwargs.dropout": "Dropout rate of the temporal transformer's input, residual "
                                f"branches and MLP hidden units, training only ({_TFM}).",
        "z_tfm_kwargs.attention_dropout": "Dropout rate of the temporal transformer's attention "
                                          f"weights, training only ({_TFM}).",
        "z_git.vocab_dim": "Width of MaskGit's token embedding, tied with its output layer "
                           "(paper: 256) (teco/models/maskgit.py).",
        "z_git.mask_schedule": "Training mask ratio of MaskGit as a function of r ~ U[0, 1): "
                               "'cosine' (paper), 'linear', 'square' or 'cubic'; sampling does "
                               "not read it (teco/models/maskgit.py).",
        "z_git.tfm_kwargs.embed_dim": f"Width of the MaskGit prior's transformer (paper: 512) ({_TFM}).",
        "z_git.tfm_kwargs.mlp_dim": f"MLP hidden width of the MaskGit transformer (paper: 2048) ({_TFM}).",
        "z_git.tfm_kwargs.num_heads": "Attention heads of the MaskGit transformer; must divide "
                                      f"embed_dim (paper: 8) ({_TFM}).",
        "z_git.tfm_kwargs.num_layers": f"Layers of the MaskGit transformer (paper: 8) ({_TFM}).",
        "z_git.tfm_kwargs.dropout": "Dropout rate of the MaskGit transformer's input, residual "
                                    f"branches and MLP hidden units, training only ({_TFM}).",
        "z_git.tfm_kwargs.attention_dropout": "Dropout rate of the MaskGit transformer's "
                                              f"attention weights, training only ({_TFM}).",
    }),
    ("TECO loss and actions", {
        "drop_loss_rate": "DropLoss: fraction of the predicted frames without decoder and prior "
                          "losses, a fresh subset each step (paper: 0.9) "
                          "(teco/losses.py drop_loss_indices).",
        "label_smoothing": "Label smoothing of the decoder's cross-entropy over VQ codes, L_recon "
                           "(paper: 0.01) (teco/losses.py recon_loss).",
        "use_actions": "False: every action becomes index 0 before the embedding, so the model "
                       "cannot see actions (Kinetics) (teco/models/teco.py).",
        "action_dim": "Number of discrete actions; the embedding has action_dim + 1 rows, the last "
                      "meaning 'no action' (paper: 6 for DMLab) (teco/models/teco.py).",
        "action_embed_dim": "Width of the action embedding, tiled over space and concatenated to "
                            "the temporal transformer's input (paper: 16) (teco/models/teco.py).",
        "dropout_actions": "Action dropout (with use_actions): in training each video's actions "
                           "all become 'no action' with probability 0.5 (paper: on) "
                           "(teco/losses.py drop_actions).",
    }),
    ("TECO sampling", {
        "sampler": "How MaskGit fills a frame: 'draft_revise' (paper) or 'confidence' (MaskGIT's "
                   "confidence-ordered cosine schedule); for teco.sample, teco.eval and training "
                   "pictures (teco/rollout.py).",
        "T_draft": "Draft-and-revise: the frame is drafted in T_draft groups of random positions, "
                   "one MaskGit pass each (paper: 8) (teco/sampling.py).",
        "T_revise": "Groups per revision round (paper: 8) (teco/sampling.py).",
        "M": "Revision rounds; a frame costs T_draft + M * T_revise MaskGit passes, which is also "
             "the step count of the 'confidence' sampler (paper: 2) (teco/sampling.py).",
        "temperature": "Softmax temperature of MaskGit sampling; 0 = argmax (teco/sampling.py).",
        "top_k": "Sample among the top_k most likely codes; 0 = all (teco/sampling.py).",
        "guidance_scale": "Classifier-free guidance over actions: logits = uncond + s * (cond - "
                          "uncond), uncond from 'no action'; 1 = plain conditioned "
                          "(teco/rollout.py).",
        "open_loop_ctx": "Context frames when sampling: teco.sample's default --n_context and the "
                         "training pictures' context (at most seq_len / 2); must be <= seq_len "
                         "(paper: 36, Kinetics 20) (teco/sample.py, teco/tasks/teco.py).",
    }),
    ("Optimisation", {
        "batch_size": "Global batch in examples (clips of seq_len frames) over all devices and "
                      "hosts; must divide by the mesh's data * fsdp size (paper: 32 for TECO) "
                      "(teco/data.py, teco/config.py).",
        "lr": "Peak learning rate of AdamW (paper: 1e-4 for TECO); the VQ-GAN's discriminator "
              "uses disc_lr (teco/optim.py).",
        "lr_schedule": "'cosine': linear warm-up, then cosine decay to 0 at total_steps (paper); "
                       "'constant': warm-up, then lr (teco/optim.py).",
        "warmup_steps": "Steps of linear warm-up from 0 to lr (paper: 5,000) (teco/optim.py).",
        "total_steps": "Training steps; the cosine decay ends here (paper: 1M for TECO) "
                       "(teco/train.py, teco/optim.py).",
        "weight_decay": "AdamW's decoupled weight decay, on all parameters (paper: 1e-5 for TECO) "
                        "(teco/optim.py).",
        "b1": "AdamW beta1 (teco/optim.py).",
        "b2": "AdamW beta2 (0.95 in the authors' code) (teco/optim.py).",
        "clip_grad_norm": "Gradients are clipped to this global norm before AdamW; 0 disables "
                          "(teco/optim.py).",
    }),
    ("Numerics and parallelism", {
        "compute_dtype": "Compute dtype of the networks' matmuls and convolutions, 'float32' or "
                         "'bfloat16'; parameters stay float32, quantizers and losses compute in "
                         "float32 (teco/models/layers.py, teco/models/vqgan.py).",
        "remat": {
            "vqgan": "Rematerialise the encoder's and decoder's residual blocks in the backward "
                     "pass: less activation memory at high resolution, more compute "
                     "(teco/models/vqgan.py).",
            "teco": "Rematerialise the transformer layers (temporal and MaskGit) in the backward "
                    f"pass: less memory, more compute ({_TFM}).",
        },
        "encoder_frames_per_chunk": "0 runs TECO's conditional encoder on all frames of the "
                                    "clip at once; N > 0 runs it on N time steps at a time, "
                                    "recomputed in the backward pass: the same loss and "
                                    "gradients, the encoder's activation memory divided by "
                                    "about T / N, its forward pass run twice (on the CPU its "
                                    "weight gradients run ~50x slower inside the chunk loop: "
                                    "for accelerators; the published "
                                    "DMLab config at batch 32 on 8 devices: 17.6 -> 9.3 GiB per "
                                    "device with N = 75; launch/README.md) "
                                    "(teco/models/layers.py over_time_in_chunks).",
        "mesh.data": "Size of the mesh's data-parallel axis; -1 takes the devices left "
                     "(teco/sharding.py).",
        "mesh.fsdp": "Size of the fully sharded data-parallel axis: the batch and the embed and "
                     "conv_out parameter axes are split over it (teco/sharding.py).",
        "mesh.model": "Size of the tensor-parallel axis: mlp and heads parameter axes are split "
                      "over it (teco/sharding.py).",
        "logical_axis_rules": "Logical axis name -> mesh axes, for parameters and activations; "
                              "DEFAULT_RULES is teco.sharding's (teco/train.py, teco/sharding.py).",
    }),
    ("Data", {
        "data.source": {
            "vqgan": "'tfds' (a built TFDS set) or 'authors' (the authors' release as is: "
                     ".npz / .mp4 under data_dir/{train,test}) (teco/data.py).",
            "teco": "'codes' (VQ codes written by teco.encode), or 'tfds' / 'authors' pixels that "
                    "the frozen VQ-GAN encodes in every step (teco/data.py, teco/tasks/teco.py).",
        },
        "data.name": {
            "vqgan": "TFDS builder (a directory under data_dir, e.g. 'memory_maze/default'), read "
                     "with data.source='tfds'; teco.encode reads the pixels to encode through "
                     "this data config (teco/data.py, teco/encode.py).",
            "teco": "TFDS builder, read only with data.source='tfds'; with 'codes', teco.eval "
                    "reads real frames through the VQ-GAN config's data keys (teco/data.py, "
                    "teco/eval.py).",
        },
        "data.data_dir": "Root of the source: the TFDS data dir, the authors' release, or "
                         "teco.encode's output (teco/data.py).",
        "data.train_split": "Split the trainer reads (teco/train.py).",
        "data.eval_split": "Held-out split of the trainer's evaluations and pictures, and the "
                           "default of teco.sample and teco.eval (teco/train.py).",
        "data.image_size": "Frame size pixel sources are checked against (set from image_size by "
                           "configs/common.py; not read with data.source='codes') (teco/data.py).",
        "data.has_actions": "With data.source='authors': an .npz without 'actions' is an error "
                            "(True) or gets zero actions (False); other sources ignore it "
                            "(teco/video_io.py).",
        "data.on_bad_file": "'error': a corrupt, short or mis-sized video stops the run naming the "
                            "file; 'skip': it is dropped and counted (teco/data.py).",
        "data.worker_count": "grain worker processes that read and crop; 0 = the main process "
                             "(teco/data.py).",
        "data.prefetch": "Read-ahead of the input pipeline in batches, at least 2 (teco/data.py).",
        "data.cache_mb": "MiB of decoded episodes each input pipeline (each grain worker) keeps in "
                         "memory, first read first kept: a data set that fits is decoded once, "
                         "not at every read; the batches are the same; 0 = off (teco/data.py).",
    }),
    ("Logging, evaluation and checkpoints", {
        "log_interval": "Steps between train-metric averages written to TensorBoard; "
                        "save_interval_secs is checked on these steps (teco/train.py).",
        "progress_interval_secs": "Seconds between terminal progress lines (step, loss, steps/s, "
                                  "ETA) (teco/train.py).",
        "log_eval_interval": "Steps between evaluations (and one at the end); each also saves a "
                             "checkpoint scored by the stage's best metric (teco/train.py).",
        "eval_batches": "Held-out batches per evaluation, the same ones every time "
                        "(teco/train.py).",
        "viz_interval": "Steps between pictures written to TensorBoard: VQ-GAN reconstructions, "
                        "TECO rollouts (teco/train.py).",
        "save_interval": "Steps between checkpoints; also saved at the end and at every "
                         "evaluation (teco/train.py).",
        "save_interval_secs": "Also checkpoint once this many seconds have passed since the last "
                              "save, for preemptible machines; 0 disables (teco/train.py).",
        "keep_checkpoints": "Latest checkpoints kept, besides the best by eval metric "
                            "(teco/checkpoint.py).",
        "checkpoint_timeout_secs": "Multi-process runs: how long the processes wait for each "
                                   "other to finish writing a checkpoint; a process whose write "
                                   "fails stops them all at once instead "
                                   "(teco/checkpoint_barrier.py).",
        "on_nonfinite": "'stop': a NaN or inf loss stops the run naming the step; 'skip': that "
                        "update is dropped and counted (teco/train.py).",
    }),
)

KEY_DOCS: dict[str, str | dict[str, str]] = {k: v for _, d in SECTIONS for k, v in d.items()}


# ----------------------------------------------------------------------------- configs


def config_module(dataset: str, stage: str) -> str:
    suffix = dict((s, x) for s, _, x in STAGES)[stage]
    return f"configs.{dataset}{suffix}"


def load(dataset: str, stage: str, variant: str | None = None) -> ml_collections.ConfigDict:
    return importlib.import_module(config_module(dataset, stage)).get_config(variant)


def flatten(config, prefix: str = "") -> dict:
    """{dotted key: value} of every leaf of a ConfigDict."""
    out = {}
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_files() -> list[str]:
    """Module names of configs/ that are configs (define get_config), e.g. 'dmlab_vqgan'."""
    names = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in NOT_CONFIGS)
    return [n for n in names if hasattr(importlib.import_module(f"configs.{n}"), "get_config")]


def stage_values(stage: str) -> dict[str, dict[str, object]]:
    """{key: {data set: value}} over the stage's configs, keys in first-seen order."""
    values: dict[str, dict[str, object]] = {}
    for dataset in DATASETS:
        for key, value in flatten(load(dataset, stage)).items():
            values.setdefault(key, {})[dataset] = value
    return values


def doc(key: str, stage: str) -> str:
    d = KEY_DOCS[key]
    return d[stage] if isinstance(d, dict) else d


# ----------------------------------------------------------------------------- the page


def format_value(v) -> str:
    """Compact cell text: 1M / 300k for round step counts, 1e-4 for small floats, `str`."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        if v >= 10**9 and str(v).rstrip("0") == "1":
            return f"1e{len(str(v)) - 1}"
        if v >= 10**6 and v % 10**6 == 0:
            return f"{v // 10**6}M"
        if v >= 10**4 and v % 1000 == 0:
            return f"{v // 1000}k"
        return str(v)
    if isinstance(v, float):
        if v != 0 and abs(v) < 1e-2:
            mantissa, exponent = f"{v:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(v) if v.is_integer() else f"{v:g}"
    if isinstance(v, str):
        return f"`{v}`" if v else "`''`"
    if isinstance(v, (tuple, list)):
        if tuple(v) == DEFAULT_RULES:
            return "DEFAULT_RULES"
        return "(" + ", ".join(format_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


HEADER = """\
# Configuration reference

<!-- Generated by `python -m configs.reference` from configs/*.py and the descriptions in
configs/reference.py. Do not edit: tests/configs_test.py fails when this page is out of date. -->

Every hyper-parameter of a run is a key of its config file, and this page lists all of them:
what each one changes, its name or value in the TECO paper where it has one, the code that
reads it, and its value in each data set's config. Stage 1 trains the VQ-GAN tokenizer
(`configs/<data set>_vqgan.py`), stage 2 trains TECO on its codes (`configs/<data set>.py`):

    python -m teco.train --config=configs/dmlab_vqgan.py --workdir=workdirs/dmlab/vqgan
    python -m teco.train --config=configs/dmlab.py --workdir=workdirs/dmlab/teco \\
        --config.vqvae_ckpt=workdirs/dmlab/vqgan --config.z_git.tfm_kwargs.num_layers=4

Any key can be overridden with `--config.<key>=<value>`; the configs are locked, so a misspelt
key stops the run at start-up. The dmlab, minecraft, habitat and kinetics600 columns follow the
paper's published settings; memory_maze is this project's locally generated set, sized to train
on a 2-core CPU. Every config also has a `:tiny` variant (e.g. `configs/dmlab.py:tiny`), a test
preset with the same keys that shrinks the networks, reads a synthetic 16x16 set and runs 20
steps; it is not listed here.

Values: `k` = thousand, `M` = million; DEFAULT_RULES = `teco.sharding.DEFAULT_RULES`.
"""


def render() -> str:
    """The text of docs/configs.md."""
    lines = [HEADER]
    for stage, title, suffix in STAGES:
        values = stage_values(stage)
        missing = sorted(k for k in values if k not in KEY_DOCS)
        if missing:
            raise ValueError(f"configs/*{suffix}.py keys without a description in KEY_DOCS "
                             f"(configs/reference.py): {missing}")
        lines.append(f"## {title} (`configs/<data set>{suffix}.py`)\n")
        for section, docs in SECTIONS:
            keys = [k for k in docs if k in values]
            if not keys:
                continue
            lines.append(f"### {section}\n")
            lines.append("| key | effect | " + " | ".join(DATASETS) + " |")
            lines.append("|---|---|" + "---|" * len(DATASETS))
            for key in keys:
                cells = [f"`{key}`", _cell(doc(key, stage))]
                cells += [_cell(format_value(values[key][d])) if d in values[key] else "-"
                          for d in DATASETS]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Writes docs/configs.md from the configs.")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/configs.md differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC_PATH.is_file() or DOC_PATH.read_text() != text:
            print(f"{DOC_PATH.relative_to(ROOT)} is out of date: run python -m configs.reference",
                  file=sys.stderr)
            return 1
        print(f"{DOC_PATH.relative_to(ROOT)} is up to date")
        return 0
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text)
    print(f"wrote {DOC_PATH.relative_to(ROOT)} ({len(KEY_DOCS)} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
