"""Per-frame VQ-GAN tokenizer (stage 1): ResNet encoder, factorised l2 codebook, ResNet decoder.

Frames [N, H, W, C] in [-1, 1] -> codes [N, H/f, W/f] with f = patch_size * 2**(len(ch_mult) - 1).
`patch_size` > 1 makes the encoder start from pixel-unshuffled patches and the decoder end in a
sub-pixel (pixel-shuffle) convolution, so no convolution runs at full resolution: on CPUs the
64x64 convolutions cost far more than everything else (see docs / PITFALLS). Upsampling inside
the decoder is sub-pixel too (conv to 4x channels, then depth-to-space), with ICNR initialisation
so it starts as nearest-neighbour upsampling (no checkerboard at init).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from teco.models.layers import rematerialised
from teco.models.quantizer import FactorizedCodebook
from teco.sharding import logical

_CONV_NAMES = (None, None, "conv_in", "conv_out")


def space_to_depth(x_NHWC, p: int):
    """[N, H, W, C] -> [N, H/p, W/p, p*p*C] (channel order: row offset, column offset, channel)."""
    if p == 1:
        return x_NHWC
    n, h, w, c = x_NHWC.shape
    if h % p or w % p:
        raise ValueError(f"space_to_depth: frame {h}x{w} is not divisible by {p}")
    x = x_NHWC.reshape(n, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // p, w // p, p * p * c)


def depth_to_space(x_NHWC, p: int):
    """Inverse of `space_to_depth`: [N, H, W, p*p*C] -> [N, H*p, W*p, C]."""
    if p == 1:
        return x_NHWC
    n, h, w, c = x_NHWC.shape
    x = x_NHWC.reshape(n, h, w, p, p, c // (p * p))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * p, w * p, c // (p * p))


def _groups(channels: int) -> int:
    # 32 groups as in the VQ-GAN papers; narrow test models fall back to a divisor.
    return math.gcd(channels, 32)


def _conv(in_ch, out_ch, kernel, *, dtype, rngs, strides=1, init=None):
    init = init or nnx.initializers.lecun_normal()
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=strides, padding="SAME",
                    kernel_init=logical(init, _CONV_NAMES), dtype=dtype,
                    param_dtype=jnp.float32, rngs=rngs)


def _icnr(p: int):
    """Initialiser for a conv feeding depth_to_space(p): every sub-pixel starts with one kernel."""
    base = nnx.initializers.lecun_normal()

    def init(key, shape, dtype=jnp.float32):
        kh, kw, cin, cout = shape
        k = base(key, (kh, kw, cin, cout // (p * p)), dtype)
        # depth_to_space reads channels as (row offset, column offset, channel).
        return jnp.tile(k, (1, 1, 1, p * p))
    return init


def _norm(ch, dtype, rngs):
    return nnx.GroupNorm(ch, num_groups=_groups(ch), epsilon=1e-6, dtype=dtype,
                         param_dtype=jnp.float32, rngs=rngs)


class ResBlock(nnx.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> conv3x3, plus a (projected) skip."""

    def __init__(self, in_ch: int, out_ch: int, *, dtype, remat: bool = False, rngs: nnx.Rngs):
        self.remat = remat
        self.norm0 = _norm(in_ch, dtype, rngs)
        self.conv0 = _conv(in_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        self.norm1 = _norm(out_ch, dtype, rngs)
        # Zero-initialised last conv: each block starts as the identity, which keeps deep
        # stacks trainable at high learning rates.
        self.conv1 = _conv(out_ch, out_ch, 3, dtype=dtype, rngs=rngs,
                           init=nnx.initializers.zeros_init())
        self.skip = _conv(in_ch, out_ch, 1, dtype=dtype, rngs=rngs) if in_ch != out_ch else None

    def _residual(self, x):
        h = self.conv0(nnx.swish(self.norm0(x)))
        return self.conv1(nnx.swish(self.norm1(h)))

    def __call__(self, x):
        if self.remat:
            # Keep only the block's input for the backward pass: its two full-resolution
            # activations are recomputed, the VQ-GAN's largest memory at high resolution.
            h = rematerialised(self, lambda block, v: block._residual(v), x)
        else:
            h = self._residual(x)
        return (x if self.skip is None else self.skip(x)) + h


class Upsample(nnx.Module):
    """2x sub-pixel upsampling: conv3x3 to 4*C channels, then depth-to-space."""

    def __init__(self, ch: int, *, dtype, rngs: nnx.Rngs):
        self.conv = _conv(ch, 4 * ch, 3, dtype=dtype, rngs=rngs, init=_icnr(2))

    def __call__(self, x):
        return depth_to_space(self.conv(x), 2)


class Encoder(nnx.Module):
    def __init__(self, in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 embedding_dim: int, *, patch_size: int = 1, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self.patch_size = patch_size
        widths = [ch * m for m in ch_mult]
        self.conv_in = _conv(in_channels * patch_size ** 2, widths[0], 3, dtype=dtype, rngs=rngs)
        blocks, downs = [], []
        prev = widths[0]
        for i, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(prev, width, dtype=dtype, remat=remat, rngs=rngs))
                prev = width
            # A stride-2 conv between levels (cheaper than conv + pooling).
            downs.append(_conv(prev, prev, 3, strides=2, dtype=dtype, rngs=rngs)
                         if i < len(widths) - 1 else None)
        self.blocks = nnx.List(blocks)
        self.downs = nnx.List(downs)
        self.num_res_blocks = num_res_blocks
        self.mid = ResBlock(prev, prev, dtype=dtype, remat=remat, rngs=rngs)
        self.norm_out = _norm(prev, dtype, rngs)
        self.conv_out = _conv(prev, embedding_dim, 1, dtype=dtype, rngs=rngs)

    def __call__(self, x_NHWC):
        h = self.conv_in(space_to_depth(x_NHWC, self.patch_size))
        for i, down in enumerate(self.downs):
            for block in self.blocks[i * self.num_res_blocks:(i + 1) * self.num_res_blocks]:
                h = block(h)
            if down is not None:
                h = down(h)
        h = self.mid(h)
        return self.conv_out(nnx.swish(self.norm_out(h)))


class Decoder(nnx.Module):
    """`trunk` (everything up to the last conv) and `head` (the last conv, G_L in the paper)."""

    def __init__(self, embedding_dim: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 out_channels: int, *, patch_size: int = 1, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        self.patch_size = patch_size
        widths = [ch * m for m in ch_mult][::-1]
        self.conv_in = _conv(embedding_dim, widths[0], 3, dtype=dtype, rngs=rngs)
        self.mid = ResBlock(widths[0], widths[0], dtype=dtype, remat=remat, rngs=rngs)
        blocks, ups = [], []
        prev = widths[0]
        for i, width in enumerate(widths):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(prev, width, dtype=dtype, remat=remat, rngs=rngs))
                prev = width
            ups.append(Upsample(prev, dtype=dtype, rngs=rngs) if i < len(widths) - 1 else None)
        self.blocks = nnx.List(blocks)
        self.ups = nnx.List(ups)
        self.num_res_blocks = num_res_blocks
        self.norm_out = _norm(prev, dtype, rngs)
        self.conv_out = _conv(prev, out_channels * patch_size ** 2, 3, dtype=dtype, rngs=rngs,
                              init=_icnr(patch_size))

    def trunk(self, z_NhwD):
        h = self.mid(self.conv_in(z_NhwD))
        for i, up in enumerate(self.ups):
            for block in self.blocks[i * self.num_res_blocks:(i + 1) * self.num_res_blocks]:
                h = block(h)
            if up is not None:
                h = up(h)
        return nnx.swish(self.norm_out(h))

    def head(self, features, kernel=None):
        """The last layer; `kernel` replaces its weight (for gradients w.r.t. G_L alone)."""
        kernel = self.conv_out.kernel[...] if kernel is None else kernel
        dtype = self.conv_out.dtype or jnp.float32
        y = jax.lax.conv_general_dilated(
            features.astype(dtype), kernel.astype(dtype), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y + self.conv_out.bias[...].astype(dtype)
        return depth_to_space(y, self.patch_size).astype(jnp.float32)

    def __call__(self, z_NhwD):
        return self.head(self.trunk(z_NhwD))


class VQGAN(nnx.Module):
    """Encoder -> FactorizedCodebook -> Decoder, applied to single frames."""

    def __init__(self, *, image_size: int, channels: int = 3, ch: int, ch_mult: Sequence[int],
                 num_res_blocks: int, embedding_dim: int, n_codes: int, proj_dim: int,
                 beta: float = 0.25, patch_size: int = 1, dtype=jnp.float32, remat: bool = False,
                 rngs: nnx.Rngs):
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult or min(ch_mult) < 1 or ch < 1 or num_res_blocks < 0 or patch_size < 1:
            raise ValueError(
                f"VQGAN: bad sizes ch={ch}, ch_mult={ch_mult}, num_res_blocks={num_res_blocks}, "
                f"patch_size={patch_size}")
        factor = patch_size * 2 ** (len(ch_mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"VQGAN: image_size {image_size} is not divisible by the downsampling factor "
                f"{factor} (patch_size {patch_size} x 2**(len(ch_mult)-1), ch_mult={ch_mult})")
        self.image_size = image_size
        self.channels = channels
        self.latent_size = image_size // factor
        self.n_codes = n_codes
        self.embedding_dim = embedding_dim
        self.encoder = Encoder(channels, ch, ch_mult, num_res_blocks, embedding_dim,
                               patch_size=patch_size, dtype=dtype, remat=remat, rngs=rngs)
        self.quantizer = FactorizedCodebook(n_codes, proj_dim, embedding_dim, beta=beta, rngs=rngs)
        self.decoder = Decoder(embedding_dim, ch, ch_mult, num_res_blocks, channels,
                               patch_size=patch_size, dtype=dtype, remat=remat, rngs=rngs)

    def _check(self, x_NHWC):
        if x_NHWC.ndim != 4 or x_NHWC.shape[1:] != (self.image_size, self.image_size,
                                                    self.channels):
            raise ValueError(
                f"VQGAN: expected frames [N, {self.image_size}, {self.image_size}, "
                f"{self.channels}], got {tuple(x_NHWC.shape)}")

    def encode(self, x_NHWC):
        """Frames in [-1, 1] -> the quantizer's dict (embeddings, codes [N, h, w], losses, ...)."""
        self._check(x_NHWC)
        return self.quantizer(self.encoder(x_NHWC))

    def decode(self, embeddings_NhwD):
        return self.decoder(embeddings_NhwD)

    def decode_codes(self, codes_Nhw):
        return self.decoder(self.quantizer.lookup(codes_Nhw))

    def __call__(self, x_NHWC):
        """Returns (reconstruction [N, H, W, C] float32, quantizer dict)."""
        vq = self.encode(x_NHWC)
        return self.decode(vq["embeddings"]), vq


def vqgan_from_config(config, *, rngs: nnx.Rngs) -> VQGAN:
    """Builds the network from a stage-1 config's explicit values (the one place reading it)."""
    v = config.vqgan
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(config.compute_dtype)
    if dtype is None:
        raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {config.compute_dtype!r}")
    return VQGAN(image_size=config.image_size, channels=config.channels, ch=v.ch,
                 ch_mult=v.ch_mult, num_res_blocks=v.num_res_blocks,
                 embedding_dim=v.embedding_dim, n_codes=v.n_codes, proj_dim=v.proj_dim,
                 beta=v.beta, patch_size=v.get("patch_size", 1), dtype=dtype,
                 remat=bool(config.get("remat", False)), rngs=rngs)
