"""Stage 2: TECO on the frozen VQ-GAN's codes (a `teco.tasks.base.Task`).

    L = L_VQ + L_recon + L_prior   (each logged; DropLoss and action dropout inside the model)

The stage-1 model comes from `config.vqvae_ckpt` (a `teco.train` VQ-GAN workdir). TECO reads
the VQ-GAN's code embeddings (its frozen table) and, when trained on pixels instead of encoded
codes, the VQ-GAN encodes each batch inside the step. Evaluation is teacher-forced: per-frame
decoder (reconstruction) accuracy and prior accuracy/loss on held-out clips; the picture is a
short rollout from the context frames, real over generated.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from teco import checkpoint, optim, rollout
from teco.config import latent_checks
from teco.metrics.image import quantize
from teco.models.teco import teco_from_config
from teco.tasks.base import TrainState, next_rng


class TecoTask:
    best_metric = "trans_loss"   # held-out teacher-forced prior loss; lower is better

    def check_inputs(self) -> None:
        """Called by the trainer before reading data: codes of another tokenizer would
        otherwise fail deep inside the compiled step."""
        if self.on_codes:
            from teco.generate import check_code_dir
            check_code_dir(self.config.data.data_dir, self._facts["n_codes"],
                           self._facts["latent_size"])

    def __init__(self, config, *, vqgan=None, vq_config=None):
        self.config = config
        if vqgan is None:
            vqgan, vq_config = checkpoint.load_vqgan(config.vqvae_ckpt)
        checkpoint.check_stage2_config(vq_config, config)
        facts = checkpoint.vqgan_facts(vq_config)
        self.latent_shape = (facts["latent_size"], facts["latent_size"])
        latent_checks(config, self.latent_shape)
        self.vq_n_codes = facts["n_codes"]
        self.vqgan_graphdef, self.vqgan_params = nnx.split(vqgan)
        # The frozen table TECO reads: the VQ-GAN's embedding of every code.
        self.vq_table = np.asarray(vqgan.quantizer.lookup(jnp.arange(self.vq_n_codes)))
        self.on_codes = config.data.source == "codes"
        self._facts = facts
        self.batch_keys = ("codes" if self.on_codes else "video", "actions")
        self.frames_per_example = int(config.seq_len)
        self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0))))
        self.tx, self.schedule = optim.make_optimizer(config)
        self.sampler = rollout.SamplerSpec.from_config(config)
        self._pictures = {}

    # ------------------------------------------------------------------ construction

    def make_model(self, rngs: nnx.Rngs):
        return teco_from_config(self.config, self.vq_n_codes, self.vq_table.shape[-1],
                                self.latent_shape, rngs=rngs)

    def model(self, params):
        return nnx.merge(self.graphdef, params)

    def init_state(self, rng) -> TrainState:
        k_model, k_state = jax.random.split(rng)
        _, params = nnx.split(self.make_model(nnx.Rngs(params=k_model)))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), rng=k_state, extra={})

    def constants(self):
        consts = {"table": jnp.asarray(self.vq_table)}
        consts["vqgan"] = self.vqgan_params  # pixel batches are encoded; pictures are decoded
        return consts

    def phase(self, step: int) -> str:
        return "train"

    def codes(self, batch, consts):
        """VQ codes [B, T, h, w]: given, or encoded from pixels by the frozen VQ-GAN."""
        if "codes" in batch:
            return batch["codes"].astype(jnp.int32)
        video = batch["video"]
        vqgan = nnx.merge(self.vqgan_graphdef, consts["vqgan"])
        codes = vqgan.encode(video.reshape((-1,) + video.shape[2:]))["codes"]
        return jax.lax.stop_gradient(codes.reshape(video.shape[:2] + codes.shape[1:]))

    # ------------------------------------------------------------------ steps

    def train_step(self, state: TrainState, batch, consts, *, phase: str = "train"):
        key, rng = next_rng(state)
        codes = self.codes(batch, consts)

        def loss_fn(params):
            return self.model(params).loss(codes, consts["table"], batch["actions"], key, train=True)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=self.schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    def eval_step(self, state: TrainState, batch, consts):
        """Teacher-forced losses and accuracies on all predicted frames (no DropLoss)."""
        codes = self.codes(batch, consts)
        _, metrics = self.model(state.params).loss(codes, consts["table"], batch["actions"],
                                                   jax.random.key(0), train=False)
        return metrics

    def eval_summary(self, outputs: Sequence[dict]) -> dict[str, float]:
        if not outputs:
            return {}
        return {k: float(np.mean([np.asarray(o[k]) for o in outputs])) for k in outputs[0]}

    # ------------------------------------------------------------------ pictures

    def visualize(self, state: TrainState, batch, consts, max_videos: int = 2,
                  max_new: int = 8):
        """A short rollout from the context frames: real (top) over generated (bottom) rows per
        video, context frames outlined in green. uint8 [n_videos, 2H, T*W, 3]."""
        n_ctx = max(int(self.config.n_cond), min(int(self.config.open_loop_ctx),
                                                 int(self.config.seq_len) // 2))
        n_new = min(max_new, int(self.config.seq_len) - n_ctx)
        codes = self.codes(batch, consts)[:max_videos, :n_ctx + n_new]
        actions = batch["actions"][:max_videos, :n_ctx + n_new]
        run = self._pictures.get((n_ctx, n_new))
        if run is None:  # compiled once per shape, reused at every visualisation
            run = self._pictures[(n_ctx, n_new)] = self._rollout_picture(n_ctx, n_new)
        return {"rollout": np.asarray(run(state.params, consts, codes, actions))}

    def _rollout_picture(self, n_ctx: int, n_new: int):
        @jax.jit
        def run(params, consts, codes, actions):
            model = self.model(params)
            out = rollout.rollout(model, consts["table"], codes[:, :n_ctx], actions,
                                  jax.random.key(0), n_new=n_new, spec=self.sampler)
            vqgan = nnx.merge(self.vqgan_graphdef, consts["vqgan"])
            decode = lambda c: vqgan.decode_codes(c.reshape((-1,) + c.shape[2:]))
            real, fake = quantize(decode(codes)), quantize(decode(out))
            b, t = codes.shape[:2]
            real = real.reshape(b, t, *real.shape[1:])
            fake = fake.reshape(b, t, *fake.shape[1:])
            return video_grid(real, fake, n_ctx)

        return run


def video_grid(real_BTHWC, fake_BTHWC, n_context: int):
    """uint8 [B, 2H, T*W, 3]: real frames over generated ones, context frames outlined green."""
    b, t, h, w, c = real_BTHWC.shape
    edge = jnp.zeros((h, w), bool).at[0].set(True).at[-1].set(True).at[:, 0].set(True) \
        .at[:, -1].set(True)
    is_ctx = (jnp.arange(t) < n_context)[None, :, None, None]
    green = jnp.array([0, 255, 0], jnp.uint8)

    def mark(v):
        return jnp.where((is_ctx & edge[None, None])[..., None], green, v)

    rows = [mark(v).transpose(0, 2, 1, 3, 4).reshape(b, h, t * w, c) for v in (real_BTHWC, fake_BTHWC)]
    return jnp.concatenate(rows, axis=1)


def make_task(config) -> TecoTask:
    return TecoTask(config)
