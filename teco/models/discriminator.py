"""Patch discriminator (PatchGAN, Isola et al. 2017, as in the VQ-GAN of Esser et al. 2021).

Frames [N, H, W, C] -> real/fake logits [N, H/2**n_layers, W/2**n_layers, 1], one per patch.
GroupNorm replaces the original BatchNorm: no batch statistics to carry, and the result does not
depend on how the batch is split over devices.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from teco.sharding import logical

_CONV_NAMES = (None, None, "conv_in", "conv_out")


class PatchDiscriminator(nnx.Module):
    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if ch < 1 or n_layers < 1:
            raise ValueError(f"PatchDiscriminator: need ch >= 1 and n_layers >= 1, got {ch}, {n_layers}")
        init = logical(nnx.initializers.normal(0.02), _CONV_NAMES)

        def conv(cin, cout, stride):
            return nnx.Conv(cin, cout, (4, 4), strides=stride, padding="SAME", kernel_init=init,
                            dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

        widths = [ch * min(2 ** i, 8) for i in range(n_layers + 1)]
        # Stride-2 layers halve the frame n_layers times; the last two layers keep the size.
        self.convs = nnx.List(
            [conv(in_channels, widths[0], 2)]
            + [conv(widths[i - 1], widths[i], 2 if i < n_layers else 1)
               for i in range(1, n_layers + 1)])
        self.norms = nnx.List(
            [nnx.GroupNorm(w, num_groups=math.gcd(w, 32), epsilon=1e-6, dtype=dtype,
                           param_dtype=jnp.float32, rngs=rngs) for w in widths[1:]])
        self.conv_out = conv(widths[-1], 1, 1)

    def __call__(self, x_NHWC):
        h = nnx.leaky_relu(self.convs[0](x_NHWC), 0.2)
        for conv, norm in zip(self.convs[1:], self.norms):
            h = nnx.leaky_relu(norm(conv(h)), 0.2)
        return self.conv_out(h).astype(jnp.float32)


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (jnp.mean(nnx.relu(1.0 - logits_real)) + jnp.mean(nnx.relu(1.0 + logits_fake)))


def non_saturating_d_loss(logits_real, logits_fake):
    # -log D(x) - log(1 - D(x_hat)) with D = sigmoid(logits).
    return 0.5 * (jnp.mean(nnx.softplus(-logits_real)) + jnp.mean(nnx.softplus(logits_fake)))


def generator_loss(logits_fake, kind: str):
    """The generator's GAN term: hinge -> -E[D(x_hat)], non_saturating -> -log sigmoid(D(x_hat))."""
    if kind == "hinge":
        return -jnp.mean(logits_fake)
    if kind == "non_saturating":
        return jnp.mean(nnx.softplus(-logits_fake))
    raise ValueError(f"loss.disc_loss must be 'hinge' or 'non_saturating', got {kind!r}")


def discriminator_loss(logits_real, logits_fake, kind: str):
    if kind == "hinge":
        return hinge_d_loss(logits_real, logits_fake)
    if kind == "non_saturating":
        return non_saturating_d_loss(logits_real, logits_fake)
    raise ValueError(f"loss.disc_loss must be 'hinge' or 'non_saturating', got {kind!r}")
