"""Factorised, l2-normalised codebook (ViT-VQGAN style) with the authors' exact math.

z (any leading shape, last axis embedding_dim) -> p = normalize(z @ proj_in) -> nearest code c_k of
normalize(codebook) by 2 - 2 p.c (first index on ties) -> embeddings = proj_out(p + sg(c_k - p)).
commitment_loss = 0.25 * mean(0.5 (p - sg(q))^2), codebook_loss = mean(0.5 (sg(p) - q)^2): the 0.5
factors and the 0.25 inside commitment_loss are the authors'. Always computed in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from teco.first_index import first_argmin
from teco.sharding import logical

_NORM_EPS = 1e-6
_PERPLEXITY_EPS = 1e-10


def l2_normalize(x, eps: float = _NORM_EPS):
    """x / max(||x||_2, eps) over the last axis."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def perplexity_of(codes, n_codes: int):
    """exp(entropy) of the code histogram over every position of `codes` (any shape)."""
    one_hot = jax.nn.one_hot(codes.reshape(-1), n_codes, dtype=jnp.float32)
    freq = jnp.mean(one_hot, axis=0)
    return jnp.exp(-jnp.sum(freq * jnp.log(freq + _PERPLEXITY_EPS)))


def quantize(z, proj_in_kernel, proj_out_kernel, codebook, *, beta: float = 0.25):
    """Pure quantiser. z [..., D]; proj_in [D, P]; proj_out [P, D]; codebook [K, P].

    Returns dict(embeddings [..., D] (straight-through), codes int32 [...], commitment_loss,
    codebook_loss, perplexity, projected [..., P] (normalised encoder outputs p)).
    """
    if z.shape[-1] != proj_in_kernel.shape[0]:
        raise ValueError(
            f"quantize: z has {z.shape[-1]} channels, proj_in expects {proj_in_kernel.shape[0]}")
    z = z.astype(jnp.float32)
    proj_in_kernel = jnp.asarray(proj_in_kernel, jnp.float32)
    proj_out_kernel = jnp.asarray(proj_out_kernel, jnp.float32)
    codes_KP = l2_normalize(jnp.asarray(codebook, jnp.float32))
    p = l2_normalize(jnp.einsum("...d,dp->...p", z, proj_in_kernel))
    distances = 2.0 - 2.0 * jnp.einsum("...p,kp->...k", p, codes_KP)
    codes = first_argmin(distances)
    q = jnp.take(codes_KP, codes, axis=0)
    commitment_loss = beta * jnp.mean(0.5 * jnp.square(p - jax.lax.stop_gradient(q)))
    codebook_loss = jnp.mean(0.5 * jnp.square(jax.lax.stop_gradient(p) - q))
    straight_through = p + jax.lax.stop_gradient(q - p)
    embeddings = jnp.einsum("...p,pd->...d", straight_through, proj_out_kernel)
    return dict(
        embeddings=embeddings,
        codes=codes,
        commitment_loss=commitment_loss,
        codebook_loss=codebook_loss,
        perplexity=perplexity_of(codes, codebook.shape[0]),
        projected=p,
    )


def lookup(codes, proj_out_kernel, codebook):
    """Embeddings of given code indices: proj_out(normalize(codebook)[codes])."""
    codes_KP = l2_normalize(jnp.asarray(codebook, jnp.float32))
    q = jnp.take(codes_KP, codes, axis=0)
    return jnp.einsum("...p,pd->...d", q, jnp.asarray(proj_out_kernel, jnp.float32))


class _Projection(nnx.Module):
    """A bias-free linear map holding `kernel` (authors' Dense without bias)."""

    def __init__(self, in_features: int, out_features: int, names, *, rngs: nnx.Rngs):
        init = logical(nnx.initializers.lecun_normal(), names)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32))


class FactorizedCodebook(nnx.Module):
    """Authors' `Codebook`: codebook/Dense_0 -> proj_in, Dense_1 -> proj_out, codebook -> codebook."""

    def __init__(self, n_codes: int, proj_dim: int, embedding_dim: int, *, beta: float = 0.25,
                 rngs: nnx.Rngs):
        if min(n_codes, proj_dim, embedding_dim) < 1:
            raise ValueError(
                f"FactorizedCodebook: sizes must be positive, got n_codes={n_codes}, "
                f"proj_dim={proj_dim}, embedding_dim={embedding_dim}")
        self.n_codes = n_codes
        self.proj_dim = proj_dim
        self.embedding_dim = embedding_dim
        self.beta = beta
        self.proj_in = _Projection(embedding_dim, proj_dim, ("embed", None), rngs=rngs)
        self.proj_out = _Projection(proj_dim, embedding_dim, (None, "embed"), rngs=rngs)
        init = logical(nnx.initializers.normal(0.02), ("codebook", None))
        self.codebook = nnx.Param(init(rngs.params(), (n_codes, proj_dim), jnp.float32))

    def __call__(self, z):
        return quantize(z, self.proj_in.kernel[...], self.proj_out.kernel[...],
                        self.codebook[...], beta=self.beta)

    def lookup(self, codes):
        return lookup(codes, self.proj_out.kernel[...], self.codebook[...])
