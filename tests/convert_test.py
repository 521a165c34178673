"""Converter from the authors' TECO: path mapping, its errors, and a full checkpoint round trip
(msgpack `checkpoint_<step>` + YAML -> `python -m teco.convert` in-process -> our params)."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx, serialization

import teco  # noqa: F401
from teco import convert
from teco.models.teco import teco_shell

# A copy of ../shared/fixtures/authors_teco_tiny.{npz,json}, made with the authors' code.
FIXTURE = str(Path(__file__).parent / "fixtures" / "authors_teco_tiny")


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE + ".npz") as z:
        return {k: z[k] for k in z.files if k.startswith("params/")}


@pytest.fixture(scope="module")
def meta():
    return json.load(open(FIXTURE + ".json"))


def _shell(meta):
    config, _ = convert.config_from_authors(meta["config"])
    vq = meta["vq"]
    return teco_shell(config, vq["n_codes"], vq["embedding_dim"], tuple(vq["latent_shape"]))


def _ours(model):
    return {"/".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _nest(flat):
    tree = {}
    for key, value in flat.items():
        *head, last = key.split("/")
        d = tree
        for h in head:
            d = d.setdefault(h, {})
        d[last] = value
    return tree


def test_every_authors_path_maps_one_to_one(fx, meta):
    mapped = {convert.authors_path_to_ours(k): k for k in fx}
    assert len(mapped) == len(fx) == meta["n_param_arrays"]
    assert set(mapped) == set(_ours(_shell(meta)))
    assert convert.authors_path_to_ours(
        "params/z_tfm/TransformerLayer_1/MultiHeadAttention_0/out_bias/bias") == \
        "z_tfm/layers/1/attn/out_bias/bias"
    assert convert.authors_path_to_ours("encoder/layers_1/kernel") == "encoder_out/kernel"


def test_authors_to_nnx_fills_every_value(fx, meta):
    model = _shell(meta)
    convert.authors_to_nnx(fx, model)
    ours = _ours(model)
    for k, v in fx.items():
        np.testing.assert_array_equal(ours[convert.authors_path_to_ours(k)], v, err_msg=k)


@pytest.mark.parametrize("bad", ["params/z_tfm/Foo_0/kernel", "params/decoder/ResNetBlock_0/Conv_9/kernel",
                                 "params/sos/extra", "params/z_tfm/TransformerLayer_0"])
def test_unknown_path_is_named(bad, meta):
    with pytest.raises(ValueError, match=bad.split("/")[1]) as e:
        convert.authors_to_nnx({bad: np.zeros(3)}, _shell(meta))
    assert bad in str(e.value)


def test_unmapped_model_layer_is_named(fx, meta):
    params = dict(fx)
    params["params/z_tfm/TransformerLayer_7/LayerNorm_0/scale"] = np.ones(32, np.float32)
    with pytest.raises(ValueError, match="TransformerLayer_7"):
        convert.authors_to_nnx(params, _shell(meta))


def test_shape_mismatch_and_missing_are_named(fx, meta):
    params = dict(fx)
    params["params/z_git/token_embed"] = np.zeros((5, 16), np.float32)
    with pytest.raises(ValueError, match=r"z_git/token_embed.*\(5, 16\).*\(33, 16\)"):
        convert.authors_to_nnx(params, _shell(meta))
    params = dict(fx)
    del params["params/z_git/mlm/AddBias_0/bias"]
    with pytest.raises(ValueError, match="z_git/mlm/bias/bias"):
        convert.authors_to_nnx(params, _shell(meta))


def test_read_authors_config_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"seq_len": 6, "z_tfm_kwargs": {"num_layers": 2}, "cache": True}))
    cfg = convert.read_authors_config(path, ["z_tfm_kwargs.num_layers=3", "drop_loss_rate=0.5"])
    assert cfg["z_tfm_kwargs"]["num_layers"] == 3 and cfg["drop_loss_rate"] == 0.5
    config, ignored = convert.config_from_authors(cfg)
    assert config.z_tfm_kwargs.num_layers == 3 and config.seq_len == 6 and ignored == ["cache"]
    with pytest.raises(ValueError, match="key=value"):
        convert.read_authors_config(path, ["seq_len"])


def _write_authors_run(tmp_path, fx, meta):
    run = tmp_path / "authors_run"
    (run / "checkpoints").mkdir(parents=True)
    params = _nest({k.removeprefix("params/"): v for k, v in fx.items()})
    opt_state = {"mu": jax.tree.map(np.zeros_like, params), "count": np.int32(7)}
    blob = serialization.msgpack_serialize(
        {"step": np.int32(1), "params": params, "opt_state": opt_state, "model_state": {}})
    (run / "checkpoints" / "checkpoint_1").write_bytes(blob)
    cfg = run / "config.yaml"
    cfg.write_text(yaml.safe_dump(meta["config"]))
    return run, cfg


def test_checkpoint_round_trip_through_cli(tmp_path, fx, meta):
    run, cfg = _write_authors_run(tmp_path, fx, meta)
    flat, step = convert.read_authors_checkpoint(run)  # a run directory finds checkpoints/
    assert step == 1 and set(flat) == {k.removeprefix("params/") for k in fx}
    out = tmp_path / "out"
    argv = ["convert", f"--authors_ckpt={run / 'checkpoints' / 'checkpoint_1'}",
            f"--authors_config={cfg}", f"--out={out}", "--vq_n_codes=64", "--latent_shape=16,16",
            "--set=drop_loss_rate=0.5"]
    try:
        convert.FLAGS(argv)
        convert.main(argv[:1])
    finally:
        convert.FLAGS.unparse_flags()
    written = json.loads((out / "converted" / "config.json").read_text())
    assert written["config"]["seq_len"] == 6 and written["config"]["drop_loss_rate"] == 0.5
    assert written["vq"] == {"vq_n_codes": 64, "vq_embedding_dim": 16, "latent_shape": [16, 16]}
    assert "data_path" in written["ignored_authors_keys"] and written["authors_step"] == 1
    model = _shell(meta)
    convert.load_converted_params(out / "converted" / "params", model)
    ours = _ours(model)
    for k, v in fx.items():
        np.testing.assert_array_equal(ours[convert.authors_path_to_ours(k)], v, err_msg=k)


def test_convert_rejects_wrong_vq_flag_and_bad_checkpoints(tmp_path, fx, meta):
    run, cfg = _write_authors_run(tmp_path, fx, meta)
    with pytest.raises(ValueError, match="vq_n_codes=128"):
        convert.convert(run, cfg, tmp_path / "o", vq_n_codes=128)
    with pytest.raises(ValueError, match="no authors' checkpoint"):
        convert.read_authors_checkpoint(tmp_path / "nowhere")
    bad = tmp_path / "checkpoint_5"
    bad.write_bytes(serialization.msgpack_serialize({"step": 5, "opt_state": {}}))
    with pytest.raises(ValueError, match="no 'params'"):
        convert.read_authors_checkpoint(bad)


def test_converted_checkpoint_samples_with_teco_sample(tmp_path, fx, meta):
    """Authors' msgpack checkpoint -> `teco.convert` -> `teco.sample`: finite videos."""
    from teco import sample

    run, cfg = _write_authors_run(tmp_path, fx, meta)
    with np.load(FIXTURE + ".npz") as z:
        table, codes, actions = z["vq/embeddings"], z["in/codes"], z["in/actions"]
    np.save(tmp_path / "vq_table.npy", table)
    out = tmp_path / "out"
    argv = ["convert", f"--authors_ckpt={run}", f"--authors_config={cfg}", f"--out={out}",
            f"--vq_table={tmp_path / 'vq_table.npy'}"]
    try:
        convert.FLAGS(argv)
        convert.main(argv[:1])
    finally:
        convert.FLAGS.unparse_flags()
    np.savez(tmp_path / "ctx.npz", codes=codes[:, :2], actions=actions)
    rc = sample.main([f"--workdir={out}", f"--context_npz={tmp_path / 'ctx.npz'}",
                      "--n_context=2", "--n_new=4", "--num_videos=2", "--batch_size=2",
                      f"--out={tmp_path / 'samples'}"])
    assert rc == 0
    codes_in = codes
    with np.load(tmp_path / "samples" / "samples.npz") as f:
        video = f["video"]
        assert f["codes"].shape == (2, 6, 16, 16) and video.shape == (2, 6, 16, 16, 3)
        np.testing.assert_array_equal(f["codes"][:, :2], codes_in[:, :2])
        assert ((f["codes"] >= 0) & (f["codes"] < 64)).all() and np.isfinite(video.astype(float)).all()
    assert (tmp_path / "samples" / "videos" / "grid.mp4").stat().st_size > 0
    # Without the VQ table there is nothing to read frames through: one clear error.
    (out / "converted" / "vq_table.npy").unlink()
    assert sample.main([f"--workdir={out}", f"--context_npz={tmp_path / 'ctx.npz'}",
                        "--n_context=2", "--n_new=4"]) == 2
