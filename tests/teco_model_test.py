"""TECO network: the authors' fixture reproduced through the converter's mapping, plus structure
tests (shapes, causality, cond not quantised, KV-cache rollout path, pure loss pieces) on a tiny model.
"""
import functools
import json
from pathlib import Path
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import teco  # noqa: F401  (sets flax's sharding mode)
from teco import losses
from teco.convert import authors_to_nnx, config_from_authors
from teco.models.maskgit import mask_ratio, sample_training_mask
from teco.models.quantizer import FactorizedCodebook, quantize
from teco.models.recall import PathMatch
from teco.models.teco import TECO, teco_shell
from teco.models.transformer import Transformer
from teco.sharding import DEFAULT_RULES, make_mesh, state_shardings

# A copy of ../shared/fixtures/authors_teco_tiny.{npz,json}, made with the authors' code.
FIXTURE = str(Path(__file__).parent / "fixtures" / "authors_teco_tiny")
TOL = dict(atol=1e-5, rtol=1e-5)
# Compilation dominates these tests on 2 cores; XLA's cheap CPU pipeline halves it (same float32 math).
FAST = dict(compiler_options={"xla_backend_optimization_level": 0,
                              "xla_llvm_disable_expensive_passes": True})


def jit(fn):
    return jax.jit(fn, **FAST)


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE + ".npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def fixture_model(fx):
    meta = json.load(open(FIXTURE + ".json"))
    config, _ = config_from_authors(meta["config"])
    vq = meta["vq"]
    model = teco_shell(config, vq["n_codes"], vq["embedding_dim"], tuple(vq["latent_shape"]))
    authors_to_nnx({k: v for k, v in fx.items() if k.startswith("params/")}, model)
    return nnx.split(model)


def _close(actual, expected, name, **tol):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=name, **(tol or TOL))


# --- the authors' fixture -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(fixture_model, fx):
    g, st = fixture_model

    def run(state, e):
        m = nnx.merge(g, state)
        return m.encode_continuous(e), m.encode(e)
    with jax.default_matmul_precision("float32"):
        u, (cond, z_emb, z_codes, vq) = jit(run)(st, fx["out/vq_lookup"])
    return u, cond, z_emb, z_codes, vq


def test_fixture_encode(encoded, fx):
    u, cond, z_emb, z_codes, vq = encoded
    np.testing.assert_array_equal(np.asarray(z_codes), fx["out/encode/z_codes"])
    _close(u, fx["out/encode/z_pre_quant_all"], "z_pre_quant_all")
    _close(cond, fx["out/encode/cond"], "cond")
    _close(z_emb, fx["out/encode/z_embeddings"], "z_embeddings")
    for k in ("commitment_loss", "codebook_loss", "perplexity"):
        _close(vq[k], fx[f"out/encode/{k}"], k)
    # cond is the continuous encoder output of the first frame, never quantised.
    np.testing.assert_array_equal(np.asarray(cond), np.asarray(u[:, :1]))


def test_fixture_quantizer_pure_function(fx):
    p = {k: fx[f"params/codebook/{k}"] for k in ("Dense_0/kernel", "Dense_1/kernel", "codebook")}
    out = jit(quantize)(fx["out/encode/z_pre_quant_all"], p["Dense_0/kernel"], p["Dense_1/kernel"],
                        p["codebook"])
    np.testing.assert_array_equal(np.asarray(out["codes"][:, 1:]), fx["out/encode/z_codes"])
    assert out["projected"].shape == (2, 6, 8, 8, 8)
    _close(out["embeddings"][:, 1:], fx["out/encode/z_embeddings"], "embeddings")


@pytest.fixture(scope="module")
def temporal_fn(fixture_model):
    g, _ = fixture_model

    def run(state, z_emb, actions, cond):
        m = nnx.merge(g, state)
        return m.temporal_transformer(z_emb, m.embed_actions(actions), cond, return_raw=True)
    return jit(run)


def test_fixture_temporal(fixture_model, temporal_fn, fx):
    _, st = fixture_model
    with jax.default_matmul_precision("float32"):
        deter, raw = temporal_fn(st, fx["out/encode/z_embeddings"], fx["in/actions"], fx["out/encode/cond"])
        deter_noact, _ = temporal_fn(st, fx["out/encode/z_embeddings"], fx["in/actions_noact"],
                                     fx["out/encode/cond"])
    _close(raw, fx["out/temporal/z_tfm_out"], "z_tfm_out")
    _close(deter, fx["out/temporal/deter"], "deter")
    _close(deter_noact, fx["out/temporal/deter_noact"], "deter_noact")


@pytest.fixture(scope="module")
def decode_and_prior(fixture_model):
    g, _ = fixture_model

    def run(state, deter, z_emb, tokens):
        m = nnx.merge(g, state)
        return m.decode(deter, z_emb), m.maskgit_step(tokens, deter)
    return jit(run)


def test_fixture_decoder_and_maskgit(fixture_model, decode_and_prior, fx):
    _, st = fixture_model
    with jax.default_matmul_precision("float32"):
        logits, git = decode_and_prior(st, fx["out/temporal/deter"], fx["out/encode/z_embeddings"],
                                       fx["in/maskgit_input"])
        call_tokens = np.where(fx["out/call/maskgit_mask"], -1, fx["out/encode/z_codes"])
        _, git_call = decode_and_prior(st, fx["out/temporal/deter"], fx["out/encode/z_embeddings"],
                                       call_tokens)
    _close(logits, fx["out/decoder/logits"], "decoder logits")
    _close(git, fx["out/maskgit/logits"], "maskgit logits")
    _close(git_call, fx["out/call/maskgit_logits"], "call maskgit logits")


def test_fixture_end_to_end_chain(fixture_model, encoded, temporal_fn, decode_and_prior, fx):
    """Every stage fed by our own upstream outputs, starting from the VQ codes."""
    _, st = fixture_model
    _, cond, z_emb, z_codes, _ = encoded
    with jax.default_matmul_precision("float32"):
        deter, _ = temporal_fn(st, z_emb, fx["in/actions"], cond)
        tokens = jnp.where(fx["in/maskgit_mask"], -1, z_codes)
        logits, git = decode_and_prior(st, deter, z_emb, tokens)
    _close(deter, fx["out/temporal/deter"], "deter (chained)")
    _close(logits, fx["out/decoder/logits"], "decoder logits (chained)")
    _close(git, fx["out/maskgit/logits"], "maskgit logits (chained)")


def test_fixture_loss_terms(fixture_model, fx):
    g, st = fixture_model
    loss_fn = jit(lambda s, *a: nnx.merge(g, s).loss(*a[:4], train=True, maskgit_mask=a[4]))
    with jax.default_matmul_precision("float32"):
        total, metrics = loss_fn(st, fx["in/codes"], fx["vq/embeddings"], fx["in/actions"],
                                 jax.random.key(0), fx["out/call/maskgit_mask"])
    for k in ("loss", "recon_loss", "trans_loss", "commitment_loss", "codebook_loss", "perplexity"):
        _close(metrics[k], fx[f"out/call/{k}"], k)
    _close(total, fx["out/call/loss"], "total")
    assert 0.0 <= float(metrics["recon_acc"]) <= 1.0 and 0.0 <= float(metrics["prior_acc"]) <= 1.0


def test_fixture_incremental_temporal_matches(fixture_model, fx):
    """The KV-cached rollout path reproduces the authors' deter frame by frame."""
    g, st = fixture_model
    step = jit(lambda s, prev, a, cache, t: nnx.merge(g, s).temporal_step(prev, a, cache, t))
    m = nnx.merge(g, st)
    s_all = np.concatenate([fx["out/encode/cond"], fx["out/encode/z_embeddings"]], axis=1)
    a_emb = m.embed_actions(jnp.asarray(fx["in/actions"]))
    cache = m.init_temporal_cache(2)
    with jax.default_matmul_precision("float32"):
        for t in range(6):
            prev = s_all[:, max(t - 1, 0)]
            deter_t, cache = step(st, prev, a_emb[:, t], cache, jnp.int32(t))
            if t >= 1:
                _close(deter_t, fx["out/temporal/deter"][:, t - 1], f"deter step {t}")


# --- a tiny random model --------------------------------------------------------------------------

TINY = dict(vq_n_codes=16, vq_embedding_dim=8, latent_shape=(8, 8), seq_len=4, n_cond=1,
            encoder_depths=(32, 32), encoder_blocks=1, decoder_depths=(32, 32), decoder_blocks=1,
            embedding_dim=8, n_codes=16, proj_dim=4, z_ds=2, tfm_embed_dim=16, tfm_mlp_dim=32,
            tfm_num_heads=2, tfm_num_layers=1, git_vocab_dim=8, git_embed_dim=16, git_mlp_dim=32,
            git_num_heads=2, git_num_layers=1, action_dim=3, action_embed_dim=4,
            dropout_actions=True, drop_loss_rate=0.5)


def random_state(state, seed=0):
    """Well-scaled random parameters without running (slow, un-jitted) initialisers."""
    rng = np.random.default_rng(seed)
    out = []
    for path, v in nnx.to_flat_state(state):
        if path[-1] == "scale":
            x = 1 + 0.1 * rng.standard_normal(v.shape)
        elif path[-1] == "bias":
            x = 0.1 * rng.standard_normal(v.shape)
        else:
            x = rng.standard_normal(v.shape) / math.sqrt(math.prod(v.shape[:-1]) or 1)
        out.append((path, v.replace(jnp.asarray(x, v.dtype))))
    return nnx.from_flat_state(out)


@pytest.fixture(scope="module")
def tiny():
    g, st = nnx.split(nnx.eval_shape(lambda: TECO(**TINY, rngs=nnx.Rngs(0))))
    return g, random_state(st)


@pytest.fixture(scope="module")
def tiny_batch():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, (2, 4, 8, 8)).astype(np.int32)
    actions = rng.integers(0, 3, (2, 4)).astype(np.int32)
    table = rng.standard_normal((16, 8)).astype(np.float32)
    return codes, actions, table


@pytest.fixture(scope="module")
def tiny_forward(tiny):
    g, _ = tiny

    def run(state, codes, actions, table):
        m = nnx.merge(g, state)
        e = jnp.take(table, codes, axis=0)
        cond, z_emb, _, _ = m.encode(e)
        u = m.encode_continuous(e)
        deter = m.temporal_transformer(z_emb, m.embed_actions(actions), cond)
        return dict(deter=deter, cond=cond, z_emb=z_emb, u=u,
                    cond_quantised=m.codebook(u[:, :1])["embeddings"])
    return jit(run)


def test_tiny_loss_shapes_and_metrics(tiny, tiny_batch):
    g, st = tiny
    codes, actions, table = tiny_batch
    loss_fn = jit(lambda s, *a: nnx.merge(g, s).loss(*a, train=True))
    total, metrics = loss_fn(st, codes, table, actions, jax.random.key(3))
    assert set(metrics) == {"loss", "recon_loss", "trans_loss", "commitment_loss", "codebook_loss",
                            "perplexity", "recon_acc", "prior_acc"}
    assert all(np.isfinite(float(v)) and np.shape(v) == () for v in metrics.values())
    np.testing.assert_allclose(float(total), float(metrics["recon_loss"] + metrics["trans_loss"]
                                                  + metrics["commitment_loss"]
                                                  + metrics["codebook_loss"]), rtol=1e-6)


@pytest.mark.parametrize("flag", ["decoder_prev_frame", "prior_prev_frame", "decoder_action",
                                  "prior_action", "recall"])
def test_the_heads_read_the_frame_before_and_the_frames_action_in_training(tiny_batch, flag):
    """With decoder_prev_frame (prior_prev_frame) the decoder's (the prior's) term for frame t
    reads the real frame t-1's VQ embeddings (not frame t's: that would be the answer); with
    decoder_action (prior_action) the embedding of action t, the one that moves frame t-1 to t
    (not action t+1's); with recall (the prior's term here) frames before t only."""
    codes, actions, table = tiny_batch
    g, st = nnx.split(nnx.eval_shape(lambda: TECO(**TINY, **{flag: True}, rngs=nnx.Rngs(0))))
    st = random_state(st)
    mask = np.random.default_rng(4).random((2, 4 - TINY.get("n_cond", 1), 4, 4)) < 0.5
    decoder = flag.startswith("decoder")

    def by_hand(s, offset):
        m = nnx.merge(g, s)
        e = jnp.take(table, codes, axis=0)
        cond, z_emb, z_codes, _ = m.encode(e)
        emb = m.embed_actions(actions)
        deter = m.temporal_transformer(z_emb, emb, cond)
        prev = action = recalled = None
        if flag.endswith("prev_frame"):
            prev = e[:, m.n_cond - 1 + offset:e.shape[1] - 1 + offset]
        elif flag == "recall":   # offset 1: frame t itself among what it may recall
            phases = m.recall_match.phases(actions)
            positions = m.n_cond + jnp.arange(deter.shape[1])
            recalled = m.recall_frames(jnp.take(phases, positions, axis=1), phases, e,
                                       m._recall_valid(e.shape[1], positions + offset))
        else:
            action = jnp.roll(emb, -offset, axis=1)[:, m.n_cond:]
        if decoder:
            return losses.recon_loss(m.decode(deter, z_emb, prev, action), codes[:, m.n_cond:],
                                     m.label_smoothing)
        logits = m.maskgit_step(jnp.where(mask, -1, z_codes), deter, prev, action, recalled)
        return losses.trans_loss(logits, z_codes, mask)

    _, metrics = jit(lambda s, *a: nnx.merge(g, s).loss(*a, train=False, maskgit_mask=mask))(
        st, codes, table, actions, jax.random.key(3))
    aligned, shifted = (float(jit(functools.partial(by_hand, offset=k))(st)) for k in (0, 1))
    term = metrics["recon_loss" if decoder else "trans_loss"]
    np.testing.assert_allclose(float(term), aligned, rtol=1e-5)
    assert abs(float(term) - shifted) > 1e-3
    if flag == "recall":      # the match's own loss term joins the total
        rest = sum(float(metrics[k]) for k in ("recon_loss", "trans_loss", "commitment_loss",
                                               "codebook_loss"))
        np.testing.assert_allclose(float(metrics["loss"]), rest + float(metrics["recall_loss"]),
                                   rtol=1e-5)


def test_the_recall_match_learns_from_its_teacher_alone(tiny_batch):
    """The heads' losses do not move the match (it is held still where they read it); its own
    loss does, and reaches every angle and plane weight."""
    codes, actions, table = tiny_batch
    g, st = nnx.split(nnx.eval_shape(lambda: TECO(**TINY, recall=True, rngs=nnx.Rngs(0))))
    st = random_state(st)

    terms = ("recon_loss", "trans_loss", "recall_loss")

    @jax.jit   # one program for the three gradients: op by op they took a minute
    def grads(s):
        def term_loss(term):
            return lambda s: nnx.merge(g, s).loss(codes, table, actions, jax.random.key(3),
                                                  train=False)[1][term]
        return {t: jax.grad(term_loss(t))(s)["recall_match"] for t in terms}
    by_term = grads(st)
    for term in terms[:2]:
        assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(by_term[term]))
    own = by_term["recall_loss"]
    moved = np.any(np.asarray(own["angles"][...]) != 0, axis=-1)
    np.testing.assert_array_equal(moved, np.isin(np.arange(TINY["action_dim"] + 1),
                                                 np.asarray(actions)))   # the actions taken
    assert np.all(np.asarray(own["plane_weights"][...]) != 0)


def test_recall_sharpness_leans_the_read_on_the_best_match():
    """recall_sharpness 1 reads the match's own softmax average; a large one reads the best
    match's frame alone (and is sure of it); the match itself is the same."""
    rng = np.random.default_rng(4)
    frames = jnp.asarray(rng.normal(size=(1, 5, 8, 8, 8)), jnp.float32)
    actions = jnp.asarray(rng.integers(0, 3, (1, 5)), jnp.int32)
    reads = {}
    for sharpness in (1.0, 1e4):
        g, st = nnx.split(nnx.eval_shape(lambda: TECO(**TINY, recall=True,
                                                      recall_sharpness=sharpness,
                                                      rngs=nnx.Rngs(0))))
        m = nnx.merge(g, random_state(st))
        m.recall_match = PathMatch(TINY["action_dim"], rngs=nnx.Rngs(0))   # as initialised
        reads[sharpness] = np.asarray(m.recall_in_clip(actions, frames, np.array([4])))[0, 0]
        logits = np.asarray(m.recall_match.clip_logits(actions))[0, 4, :4]
    folded = np.asarray(m._fold(frames[0]))           # [5, z_h, z_w, F]
    soft = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(reads[1.0][..., :-1], np.einsum("s,shwf->hwf", soft, folded[:4]),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reads[1e4][..., :-1], folded[logits.argmax()], rtol=1e-4, atol=1e-5)
    assert soft.max() < 0.99   # the two reads differ
    with pytest.raises(ValueError, match="recall_sharpness must be > 0"):
        TECO(**TINY, recall=True, recall_sharpness=0.0, rngs=nnx.Rngs(0))


def test_tiny_shapes_and_cond_not_quantised(tiny_forward, tiny, tiny_batch):
    out = tiny_forward(tiny[1], *tiny_batch)
    assert out["deter"].shape == (2, 3, 4, 4, 8) and out["cond"].shape == (2, 1, 4, 4, 8)
    assert out["z_emb"].shape == out["deter"].shape
    np.testing.assert_allclose(np.asarray(out["cond"]), np.asarray(out["u"][:, :1]), atol=1e-6)
    assert not np.allclose(np.asarray(out["cond"]), np.asarray(out["cond_quantised"]), atol=1e-3)


def test_tiny_causality(tiny, tiny_forward, tiny_batch):
    """deter[:, j] is for frame p = n_cond + j, from frames < p and actions <= p. Changing frame k's
    codes (which also changes the posterior of frame k + 1) leaves deter of frames <= k fixed;
    changing frame k's action leaves deter of frames < k fixed."""
    st = tiny[1]
    codes, actions, table = tiny_batch
    base = tiny_forward(st, codes, actions, table)["deter"]
    k = 2
    codes2 = codes.copy()
    codes2[:, k] = (codes2[:, k] + 5) % 16
    actions2 = actions.copy()
    actions2[:, k] = (actions2[:, k] + 1) % 3
    for c, a, n_same in ((codes2, actions, k), (codes, actions2, k - 1)):
        out = tiny_forward(st, c, a, table)["deter"]
        np.testing.assert_allclose(np.asarray(out[:, :n_same]), np.asarray(base[:, :n_same]), atol=1e-6)
        assert not np.allclose(np.asarray(out[:, n_same:]), np.asarray(base[:, n_same:]), atol=1e-4)


def test_tiny_kv_cache_matches_full_pass(tiny, tiny_forward, tiny_batch):
    g, st = tiny
    codes, actions, table = tiny_batch
    out = tiny_forward(st, codes, actions, table)
    m = nnx.merge(g, st)
    step = jit(lambda s, prev, a, cache, t: nnx.merge(g, s).temporal_step(prev, a, cache, t))
    s_all = jnp.concatenate([out["cond"], out["z_emb"]], axis=1)
    a_emb = m.embed_actions(jnp.asarray(actions))
    cache = m.init_temporal_cache(2)
    for t in range(4):
        deter_t, cache = step(st, s_all[:, max(t - 1, 0)], a_emb[:, t], cache, jnp.int32(t))
        if t >= 1:
            np.testing.assert_allclose(np.asarray(deter_t), np.asarray(out["deter"][:, t - 1]),
                                       atol=1e-5)


@pytest.fixture(scope="module")
def small_transformer():
    g, st = nnx.split(nnx.eval_shape(lambda: Transformer(6, 16, 32, 2, 2, block_size=3,
                                                         rngs=nnx.Rngs(0))))
    x = np.random.default_rng(1).standard_normal((2, 5, 3, 6)).astype(np.float32)  # 5 frames x 3
    return nnx.merge(g, random_state(st, seed=2)), x


def test_transformer_extend_in_chunks_matches_full(small_transformer):
    """Several frames per extend call (block-causal within the chunk) equal the full pass."""
    tfm, x = small_transformer
    g, st = nnx.split(tfm)
    full = jit(lambda s, x: nnx.merge(g, s)(x))(st, x).reshape(2, 15, 16)
    ext = jit(lambda s, x, c, start: nnx.merge(g, s).extend(x, c, start))
    cache = tfm.init_cache(2, 15)
    outs = []
    for lo, hi in ((0, 2), (2, 3), (3, 5)):
        y, cache = ext(st, x[:, lo:hi].reshape(2, -1, 6), cache, jnp.int32(lo * 3))
        outs.append(y)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=1e-5)


def test_transformer_remat_and_bf16(small_transformer):
    tfm, x = small_transformer
    g, st = nnx.split(tfm)
    results = {}
    for name, kw in (("base", {}), ("remat", dict(remat=True)), ("bf16", dict(dtype="bfloat16"))):
        g2, _ = nnx.split(nnx.eval_shape(lambda: Transformer(6, 16, 32, 2, 2, block_size=3, **kw,
                                                             rngs=nnx.Rngs(0))))
        loss = lambda s, x, g2=g2: jnp.sum(jnp.square(nnx.merge(g2, s)(x).astype(jnp.float32)))
        # bf16 is checked forward only (one compile fewer).
        results[name] = jit(loss if name == "bf16" else jax.value_and_grad(loss))(st, x)
    (l0, g0), (l1, g1), l2 = results["base"], results["remat"], results["bf16"]
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    # Gradients of size ~1: the recomputed forward pass rounds a little differently (1.6e-6 on
    # one element with the tests' XLA flags).
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(l2), float(l0), rtol=0.05)


@pytest.mark.parametrize("frames_per_chunk", [1, 3])   # 3: T=4 is padded to two chunks
def test_encoder_in_chunks_same_loss_and_grads(tiny, tiny_batch, frames_per_chunk):
    """The encoder run a few time steps at a time (rematerialised) gives the same loss and
    gradients as over the whole clip; one state loads into both."""
    _, st = tiny
    codes, actions, table = tiny_batch
    results = []
    for chunk in (0, frames_per_chunk):
        g, _ = nnx.split(nnx.eval_shape(lambda c=chunk: TECO(**TINY, encoder_frames_per_chunk=c,
                                                             rngs=nnx.Rngs(0))))
        loss = lambda s, g=g: nnx.merge(g, s).loss(codes, table, actions, jax.random.key(3),
                                                   train=True)[0]
        results.append(jit(jax.value_and_grad(loss))(st))
    (l0, g0), (l1, g1) = results
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    encoder_grads = 0
    for (path, a), (_, b) in zip(nnx.to_flat_state(g1), nnx.to_flat_state(g0)):
        # Recomputed convolutions may sum in another order: float32 round-off, no more.
        np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), rtol=1e-4, atol=1e-5,
                                   err_msg=str(path))
        encoder_grads += path[0] in ("encoder", "encoder_out") and bool(np.any(np.asarray(b[...])))
    assert encoder_grads > 0


def test_logical_axis_names_and_shardings(tiny):
    g, st = tiny
    allowed = {None, "embed", "mlp", "heads", "kv", "vocab", "conv_in", "conv_out", "codebook"}
    for path, var in nnx.to_flat_state(nnx.eval_shape(lambda: nnx.state(TECO(**TINY, rngs=nnx.Rngs(0)),
                                                                        nnx.Param))):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), path
        assert set(names) <= allowed, (path, names)
    mesh = make_mesh(dict(data=2, fsdp=2, model=2))
    shardings = state_shardings(nnx.eval_shape(lambda: nnx.state(TECO(**TINY, rngs=nnx.Rngs(0)))),
                                mesh, DEFAULT_RULES)
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(st))


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="encoder_frames_per_chunk"):
        nnx.eval_shape(lambda: TECO(**dict(TINY, encoder_frames_per_chunk=-1), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="z_ds"):
        nnx.eval_shape(lambda: TECO(**dict(TINY, z_ds=3), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="n_cond"):
        nnx.eval_shape(lambda: TECO(**dict(TINY, n_cond=4), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="prev_frame_noise"):
        nnx.eval_shape(lambda: TECO(**dict(TINY, prev_frame_noise=1.5), rngs=nnx.Rngs(0)))


# --- pure loss pieces ---------------------------------------------------------------------------

def test_action_dropout_replaces_whole_sequences():
    actions = jnp.tile(jnp.arange(5, dtype=jnp.int32) % 3, (64, 1))
    out = np.asarray(jit(losses.drop_actions)(jax.random.key(0), actions))
    dropped = (out == -1).all(axis=1)
    kept = (out == np.asarray(actions)).all(axis=1)
    assert (dropped | kept).all() and 10 < dropped.sum() < 54


def test_corrupt_codes_replaces_a_uniform_fraction_per_frame():
    codes = jnp.full((8, 64, 8, 8), 7, jnp.int32)
    out = np.asarray(jit(functools.partial(losses.corrupt_codes, max_rate=0.6, n_codes=1000))(
        jax.random.key(0), codes))
    assert out.dtype == np.int32 and out.min() >= 0 and out.max() < 1000
    changed_per_frame = (out != 7).mean(axis=(2, 3))
    # 64 codes a frame: a frame's fraction is its u ~ U(0, 0.6) within sampling noise
    assert changed_per_frame.max() < 0.6 + 0.2 and changed_per_frame.min() < 0.05
    assert abs(changed_per_frame.mean() - 0.3) < 0.03
    assert len(np.unique(out[out != 7])) > 100     # uniform over the codebook
    np.testing.assert_array_equal(
        np.asarray(losses.corrupt_codes(jax.random.key(0), codes, 0.0, 1000)), np.asarray(codes))


def test_prev_frame_noise_only_in_training(tiny_batch):
    """prev_frame_noise changes the training loss (the previous frame is corrupted) and leaves
    the evaluation loss as without it."""
    codes, actions, table = tiny_batch
    st = None
    out = {}
    for noise in (0.0, 1.0):
        g, s = nnx.split(nnx.eval_shape(lambda: TECO(**TINY, prior_prev_frame=True,
                                                     prev_frame_noise=noise, rngs=nnx.Rngs(0))))
        st = random_state(s) if st is None else st
        for train in (False, True):
            total, _ = jit(lambda s, *a, g=g, train=train: nnx.merge(g, s).loss(*a, train=train))(
                st, codes, table, actions, jax.random.key(3))
            out[noise, train] = float(total)
    assert out[0.0, False] == out[1.0, False]
    assert abs(out[0.0, True] - out[1.0, True]) > 1e-3


@pytest.mark.parametrize("rate,n_frames", [(0.9, 29), (0.5, 7), (0.5, 1), (0.99, 10)])
def test_drop_loss_indices_distinct_valid(rate, n_frames):
    n = max(1, int((1 - rate) * n_frames))
    seen = set()
    draw = jit(jax.vmap(lambda k: losses.drop_loss_indices(k, n_frames, rate)))
    for idx in np.asarray(draw(jax.random.split(jax.random.key(0), 8))):
        assert idx.shape == (n,) and len(set(idx.tolist())) == n
        assert idx.min() >= 0 and idx.max() < n_frames
        seen.add(tuple(idx))
    assert len(seen) > 1 or math.comb(n_frames, n) == 1


def test_drop_loss_rate_zero_all_in_order_and_bad_rate():
    np.testing.assert_array_equal(np.asarray(losses.drop_loss_indices(jax.random.key(0), 5, 0.0)),
                                  np.arange(5))
    with pytest.raises(ValueError, match="drop_loss_rate"):
        losses.drop_loss_indices(jax.random.key(0), 5, 1.0)


def test_training_mask_counts_and_independence():
    key = jax.random.key(7)
    mask, r = jit(lambda k: (sample_training_mask(k, (6, 5), 64),
                             jax.random.uniform(jax.random.split(k)[0], (6, 5))))(key)
    expected = np.maximum(1, np.floor(np.cos(0.5 * np.pi * np.asarray(r)) * 64)).astype(int)
    mask = np.asarray(mask)
    np.testing.assert_array_equal(mask.sum(-1), expected)
    rows = mask.reshape(30, 64)
    assert len({tuple(r) for r in rows}) == 30  # every (batch, time) row has its own mask
    with pytest.raises(ValueError, match="mask_schedule"):
        mask_ratio(0.5, "bogus")


def test_quantizer_module_straight_through_and_lookup():
    g, st = nnx.split(nnx.eval_shape(lambda: FactorizedCodebook(8, 4, 6, rngs=nnx.Rngs(0))))
    st = random_state(st)
    z = np.random.default_rng(0).standard_normal((3, 5, 6)).astype(np.float32)

    def run(s, z):
        cb = nnx.merge(g, s)
        out = cb(z)
        grad = jax.grad(lambda z: jnp.sum(cb(z)["embeddings"]))(z)
        return out, cb.lookup(out["codes"]), grad
    out, looked_up, grad = jit(run)(st, z)
    assert out["codes"].dtype == jnp.int32 and out["codes"].shape == (3, 5)
    assert out["projected"].shape == (3, 5, 4)
    np.testing.assert_allclose(np.asarray(looked_up), np.asarray(out["embeddings"]), atol=1e-6)
    assert float(jnp.abs(grad).sum()) > 0  # straight-through: gradients reach the encoder output


def test_accuracy_counts_the_label_at_the_max_logit():
    logits = jnp.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.4, 0.4, 0.1]])
    labels = jnp.array([1, 2, 1])  # hit, miss, tie with an earlier index (counted as a hit)
    assert float(losses.accuracy(logits, labels)) == pytest.approx(2 / 3)
    assert float(losses.accuracy(logits, labels, mask=jnp.array([1, 1, 0]))) == pytest.approx(0.5)
