"""Stage 1: the VQ-GAN's losses, train step, eval step and pictures (a `teco.tasks.base.Task`).

Generator objective (Esser et al. 2021; TECO section 3):
    L = w_pix * |x - x_hat| + w_lpips * LPIPS(x, x_hat) + L_VQ + disc_weight * lambda * L_GAN
    lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta)   (G_L: decoder's last conv)
The GAN term and the discriminator's updates start at `loss.disc_start` (phase 'gan').

The step runs the generator forward once and splits the backward pass by hand: the loss terms'
cotangents at x_hat give both last-layer gradients for lambda (cheap, one conv's VJP) and then
one backward pass through the whole generator with the weighted sum.

Dead codes (`vqgan.restart_dead_codes`): a running (EMA) usage per code is kept in
`state.extra['code_usage']`; every `restart_interval` steps, while fewer than `restart_usage` of
the codes are alive, codes whose usage is below `restart_threshold` / n_codes are moved onto
random encoder outputs of the current batch.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from teco import optim
from teco.metrics.image import LPIPS, psnr, quantize, ssim
from teco.models.discriminator import (PatchDiscriminator, discriminator_loss,
                                       generator_loss)
from teco.models.vqgan import VQGAN, vqgan_from_config
from teco.tasks.base import ConfigKeyed, TrainState, next_rng


PSNR_CAP = 100.0  # dB, for frames reconstructed exactly


def adaptive_weight(grad_rec, grad_gan, delta: float = 1e-6, max_value: float = 1e4):
    """lambda = ||grad_rec|| / (||grad_gan|| + delta), clipped to [0, max_value], no gradient."""
    norm = lambda g: jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                                  for x in jax.tree.leaves(g)))
    lam = norm(grad_rec) / (norm(grad_gan) + delta)
    return jax.lax.stop_gradient(jnp.clip(lam, 0.0, max_value))


def restart_dead_codes(codebook_KP, usage_K, candidates_NP, key, *, threshold: float):
    """Moves codes whose running usage is below `threshold / K` onto random candidate vectors.

    codebook_KP: the (unnormalised) codebook parameter; usage_K: running fraction of assignments
    per code; candidates_NP: recent (normalised) encoder outputs in the lookup space. New rows
    take the mean norm of the live rows, so restarted codes move at the live codes' pace, and
    their usage is reset to uniform (a grace period). Returns (codebook, usage, n_restarted).
    """
    k, n = codebook_KP.shape[0], candidates_NP.shape[0]
    dead_K = usage_K < threshold / k
    if n >= k:
        pick = jax.random.permutation(key, n)[:k]
    else:
        pick = jax.random.randint(key, (k,), 0, n)
    alive = jnp.maximum(jnp.sum(~dead_K), 1)
    row_norm = jnp.sqrt(jnp.sum(jnp.square(codebook_KP), axis=-1))
    scale = jnp.sum(jnp.where(dead_K, 0.0, row_norm)) / alive
    scale = jnp.where(jnp.all(dead_K), 1.0, scale)
    fresh = jax.lax.stop_gradient(candidates_NP[pick]).astype(codebook_KP.dtype) * scale
    codebook = jnp.where(dead_K[:, None], fresh, codebook_KP)
    usage = jnp.where(dead_K, 1.0 / k, usage_K)
    return codebook, usage, jnp.sum(dead_K)


def _upsample_to(x_NHWC, min_size: int):
    """Nearest-neighbour upsampling by a whole factor to at least `min_size` px, so LPIPS'
    AlexNet (>= 31 px) also works on tiny frames."""
    f = max(1, math.ceil(min_size / x_NHWC.shape[1]))
    return x_NHWC if f == 1 else jnp.repeat(jnp.repeat(x_NHWC, f, axis=1), f, axis=2)


def _frames(batch):
    video = batch["video"]
    if video.ndim != 5:
        raise ValueError(f"vqgan: batch['video'] must be [B, T, H, W, C], got {video.shape}")
    return video.reshape((-1,) + video.shape[2:])


class VQGANTask(ConfigKeyed):
    batch_keys = ("video",)
    best_metric = "lpips"   # eval LPIPS of reconstructions; lower is better

    def __init__(self, config):
        self.config = config
        self.frames_per_example = int(config.seq_len)
        loss = config.loss
        if loss.pixel not in ("l1", "l2"):
            raise ValueError(f"loss.pixel must be 'l1' or 'l2', got {loss.pixel!r}")
        if loss.disc_loss not in ("hinge", "non_saturating"):
            raise ValueError(f"loss.disc_loss must be 'hinge' or 'non_saturating', got {loss.disc_loss!r}")
        # configs saved before loss.lpips_min_side existed upsampled to the net's minimum only
        min_side = int(loss.get("lpips_min_side", 0))
        if min_side < 0:
            raise ValueError(f"loss.lpips_min_side must be >= 0, got {min_side}")
        self.lpips = LPIPS(loss.lpips_net)
        self.lpips_side = max(self.lpips.min_size, min_side)
        self.use_disc = loss.disc_weight > 0 and loss.disc_start < config.total_steps
        self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0))))
        self.tx, self.schedule = optim.make_optimizer(config)
        if self.use_disc:
            self.disc_graphdef, _ = nnx.split(nnx.eval_shape(lambda: self.make_disc(nnx.Rngs(0))))
            self.disc_tx, _ = optim.make_optimizer(config, lr=config.disc_lr)

    # ------------------------------------------------------------------ construction

    def make_model(self, rngs: nnx.Rngs) -> VQGAN:
        return vqgan_from_config(self.config, rngs=rngs)

    def make_disc(self, rngs: nnx.Rngs) -> PatchDiscriminator:
        d = self.config.disc
        dtype = jnp.bfloat16 if self.config.compute_dtype == "bfloat16" else jnp.float32
        return PatchDiscriminator(self.config.channels, d.ch, d.n_layers, dtype=dtype, rngs=rngs)

    def init_state(self, rng) -> TrainState:
        k_model, k_disc, k_state = jax.random.split(rng, 3)
        _, params = nnx.split(self.make_model(nnx.Rngs(params=k_model)))
        extra = {"code_usage": jnp.zeros((self.config.vqgan.n_codes,), jnp.float32)}
        if self.use_disc:
            _, disc_params = nnx.split(self.make_disc(nnx.Rngs(params=k_disc)))
            extra["disc_params"] = disc_params
            extra["disc_opt_state"] = self.disc_tx.init(disc_params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), rng=k_state, extra=extra)

    def constants(self):
        return {"lpips": self.lpips.params}

    def model(self, params) -> VQGAN:
        return nnx.merge(self.graphdef, params)

    def phase(self, step: int) -> str:
        return "gan" if self.use_disc and step >= self.config.loss.disc_start else "rec"

    # ------------------------------------------------------------------ losses

    def rec_loss(self, x_hat, x, lpips_params):
        """w_pix * pixel + w_lpips * LPIPS (means over frames); returns (loss, parts)."""
        loss_cfg = self.config.loss
        diff = x_hat - x
        pixel = jnp.mean(jnp.abs(diff)) if loss_cfg.pixel == "l1" else jnp.mean(jnp.square(diff))
        total = loss_cfg.pixel_weight * pixel
        parts = {"pixel_loss": pixel}
        if loss_cfg.lpips_weight > 0:
            up = lambda v: _upsample_to(v, self.lpips_side)
            perceptual = jnp.mean(self.lpips.apply(lpips_params, up(x_hat), up(x)))
            total = total + loss_cfg.lpips_weight * perceptual
            parts["lpips_loss"] = perceptual
        return total, parts

    # ------------------------------------------------------------------ train step

    def train_step(self, state: TrainState, batch, consts, *, phase: str):
        loss_cfg = self.config.loss
        x = _frames(batch)
        use_gan = phase == "gan"
        key, rng = next_rng(state)

        def forward(params):
            model = self.model(params)
            vq = model.encode(x)
            features = model.decoder.trunk(vq["embeddings"])
            x_hat = model.decoder.head(features)
            return (x_hat, vq["commitment_loss"] + vq["codebook_loss"]), (features, vq)

        (x_hat, vq_loss), forward_vjp, (features, vq) = jax.vjp(forward, state.params, has_aux=True)
        metrics = {}
        if use_gan:
            disc = nnx.merge(self.disc_graphdef, state.extra["disc_params"])

            def terms(xh):
                rec, parts = self.rec_loss(xh, x, consts["lpips"])
                return (rec, generator_loss(disc(xh), loss_cfg.disc_loss)), parts

            (rec, gan), terms_vjp, parts = jax.vjp(terms, x_hat, has_aux=True)
            one, zero = jnp.ones_like(rec), jnp.zeros_like(rec)
            (g_rec,) = terms_vjp((one, zero))
            (g_gan,) = terms_vjp((zero, one))
            decoder = self.model(state.params).decoder
            _, head_vjp = jax.vjp(lambda k: decoder.head(features, k), decoder.conv_out.kernel[...])
            lam = loss_cfg.disc_weight * adaptive_weight(
                head_vjp(g_rec)[0], head_vjp(g_gan)[0], loss_cfg.adaptive_delta)
            g_x_hat = g_rec + lam * g_gan
            loss = rec + vq_loss + lam * gan
            metrics.update(gan_loss=gan, adaptive_weight=lam)
        else:
            rec, rec_vjp, parts = jax.vjp(lambda xh: self.rec_loss(xh, x, consts["lpips"]),
                                          x_hat, has_aux=True)
            (g_x_hat,) = rec_vjp(jnp.ones_like(rec))
            loss = rec + vq_loss
        (grads,) = forward_vjp((g_x_hat, jnp.ones_like(vq_loss)))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        extra = dict(state.extra)
        if use_gan:
            extra, d_metrics = self._disc_update(extra, x, x_hat)
            metrics.update(d_metrics)
        params, extra, code_metrics = self._code_usage(state.step, params, extra, vq, key)
        metrics.update(code_metrics)
        metrics.update(parts)
        metrics.update(loss=loss, rec_loss=rec, vq_loss=vq_loss,
                       commitment_loss=vq["commitment_loss"], codebook_loss=vq["codebook_loss"],
                       perplexity=vq["perplexity"], grad_norm=optax.tree.norm(grads),
                       lr=self.schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  rng=rng, extra=extra)
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    def _disc_update(self, extra, x, x_hat):
        kind = self.config.loss.disc_loss
        x_hat = jax.lax.stop_gradient(x_hat)

        def d_loss(dparams):
            disc = nnx.merge(self.disc_graphdef, dparams)
            real, fake = disc(x), disc(x_hat)
            return discriminator_loss(real, fake, kind), (jnp.mean(real), jnp.mean(fake))

        (loss, (real, fake)), grads = jax.value_and_grad(d_loss, has_aux=True)(extra["disc_params"])
        updates, opt_state = self.disc_tx.update(grads, extra["disc_opt_state"], extra["disc_params"])
        extra["disc_params"] = optax.apply_updates(extra["disc_params"], updates)
        extra["disc_opt_state"] = opt_state
        return extra, {"disc_loss": loss, "logits_real": real, "logits_fake": fake}

    def _code_usage(self, step, params, extra, vq, key):
        v = self.config.vqgan
        k = v.n_codes
        counts = jnp.zeros((k,), jnp.float32).at[vq["codes"].reshape(-1)].add(1.0)
        freq = counts / vq["codes"].size
        usage = v.usage_decay * extra["code_usage"] + (1.0 - v.usage_decay) * freq
        alive = jnp.mean((usage >= v.restart_threshold / k).astype(jnp.float32))
        metrics = {"codes_used_batch": jnp.mean((counts > 0).astype(jnp.float32)),
                   "codes_alive": alive}
        if v.restart_dead_codes:
            codebook = params["quantizer"]["codebook"][...]
            projected = vq["projected"].reshape(-1, vq["projected"].shape[-1])
            new_codebook, new_usage, n = restart_dead_codes(
                codebook, usage, projected, key, threshold=v.restart_threshold)
            due = ((step + 1) % v.restart_interval == 0) & (alive < v.restart_usage)
            model = self.model(params)
            model.quantizer.codebook[...] = jnp.where(due, new_codebook, codebook)
            params = nnx.state(model)
            usage = jnp.where(due, new_usage, usage)
            metrics["codes_restarted"] = jnp.where(due, n, 0)
        extra["code_usage"] = usage
        return params, extra, metrics

    # ------------------------------------------------------------------ evaluation

    def reconstruct(self, params, x_NHWC):
        x_hat, vq = self.model(params)(x_NHWC)
        return jnp.clip(x_hat, -1.0, 1.0), vq

    def eval_step(self, state: TrainState, batch, consts):
        """Per-frame PSNR / SSIM / LPIPS of uint8-quantised reconstructions, plus a code histogram."""
        x = _frames(batch)
        x_hat, vq = self.reconstruct(state.params, x)
        rec, _ = self.rec_loss(x_hat, x, consts["lpips"])
        x_u8, x_hat_u8 = quantize(x), quantize(x_hat)
        to_float = lambda u: u.astype(jnp.float32) / 127.5 - 1.0
        up = lambda v: _upsample_to(to_float(v), self.lpips_side)
        out = {"psnr": psnr(x_u8, x_hat_u8),
               "lpips": self.lpips.apply(consts["lpips"], up(x_u8), up(x_hat_u8)),
               "rec_loss": rec,
               "code_hist": jnp.zeros((self.config.vqgan.n_codes,), jnp.int32)
               .at[vq["codes"].reshape(-1)].add(1)}
        if min(x.shape[1:3]) >= 11:  # SSIM's 11x11 window
            out["ssim"] = ssim(x_u8, x_hat_u8)
        return out

    def eval_summary(self, outputs: Sequence[dict]) -> dict[str, float]:
        if not outputs:
            return {}
        cat = lambda k: np.concatenate([np.ravel(np.asarray(o[k])) for o in outputs])
        summary = {k: float(np.mean(cat(k))) for k in ("ssim", "lpips", "rec_loss")
                   if k in outputs[0]}
        # A perfectly reconstructed frame has infinite PSNR; cap it so the mean stays finite.
        summary["psnr"] = float(np.mean(np.minimum(cat("psnr"), PSNR_CAP)))
        hist = np.sum([np.asarray(o["code_hist"], np.float64) for o in outputs], axis=0)
        freq = hist / max(hist.sum(), 1.0)
        summary["codes_used"] = float(np.mean(hist > 0))
        summary["perplexity"] = float(np.exp(-np.sum(freq * np.log(freq + 1e-10))))
        return summary

    def visualize(self, state: TrainState, batch, consts, max_frames: int = 8):
        """One image: originals (top row) over reconstructions (bottom row), uint8 [1, 2H, nW, 3]."""
        return {"reconstruction": self._picture(state.params, _frames(batch)[:max_frames])}

    @functools.partial(jax.jit, static_argnums=0)
    def _picture(self, params, x_NHWC):
        x_hat, _ = self.reconstruct(params, x_NHWC)
        row = lambda v: jnp.concatenate(list(quantize(v)), axis=1)  # frames side by side
        return jnp.concatenate([row(x_NHWC), row(x_hat)], axis=0)[None]


def make_task(config) -> VQGANTask:
    return VQGANTask(config)
