"""Authors' TECO (Flax Linen, wilson1yan/teco) -> this project's TECO (Flax NNX).

    python -m teco.convert --authors_ckpt=RUN/checkpoints/checkpoint_1000000 \
        --authors_config=dmlab.yaml --out=workdirs/dmlab/teco_authors [--set seq_len=300 ...]

(a) `authors_to_nnx` maps every authors' parameter path to ours (rule tables below), failing with the
    path named on an unknown path, a shape mismatch, or a model parameter left unmapped.
(b) `read_authors_checkpoint` reads a flax msgpack `checkpoint_<step>` (never pickle) and returns its
    `params` as flat 'a/b/c' paths (the optimizer state is ignored).
(c) `read_authors_config` / `config_from_authors` read the authors' YAML (safe_load) with
    `key=value` overrides into our config keys (the authors' names).
(d) `main` writes our parameters plus the config; `save_converted` holds the on-disk format.
The VQ sizes (codes, embedding dim, latent grid) are read off the checkpoint itself (`sos_post`
and the decoder's output layer); flags, when given, are checked against them.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml
from absl import app, flags
from flax import nnx, serialization

# Per module kind: authors' child name (regex, fully matched) -> (our child path, next kind).
# Our path may use {0} for the regex group (list indices); next kind None means a leaf.
_PARAM = {"kernel": ("kernel", None), "bias": ("bias", None), "scale": ("scale", None),
          "embedding": ("embedding", None)}
_RULES: dict[str, dict[str, tuple[str, str | None]]] = {
    "teco": {"sos_post": ("sos_post", None), "sos": ("sos", None), "encoder": ("", "encoder"),
             "codebook": ("codebook", "codebook"), "action_embeds": ("action_embeds", "param"),
             "z_proj": ("z_proj", "param"), "z_unproj": ("z_unproj", "param"),
             "z_tfm": ("z_tfm", "transformer"), "decoder": ("decoder", "decoder"),
             "z_git": ("z_git", "maskgit")},
    # The authors wrap the encoder as a 2-element sequence: ResNetEncoder, then a Dense.
    "encoder": {"layers_0": ("encoder", "resnet_encoder"), "layers_1": ("encoder_out", "param")},
    "resnet_encoder": {"Conv_0": ("conv_in", "param"), r"ResNetBlock_(\d+)": ("blocks/{0}", "block")},
    "decoder": {"Conv_0": ("conv_in", "param"), r"ResNetBlock_(\d+)": ("blocks/{0}", "block"),
                "LayerNorm_0": ("norm_out", "param"), "Dense_0": ("dense_out", "param")},
    "block": {"GroupNorm_0": ("norm_0", "param"), "GroupNorm_1": ("norm_1", "param"),
              "Conv_0": ("conv_0", "param"), "Conv_1": ("conv_1", "param"),
              "AddBias_0": ("add_bias", "param"), "skip": ("skip", "param")},
    "codebook": {"Dense_0": ("proj_in", "param"), "Dense_1": ("proj_out", "param"),
                 "codebook": ("codebook", None)},
    "transformer": {"Dense_0": ("fc_in", "param"), "Dense_1": ("fc_out", "param"),
                    "LayerNorm_0": ("norm_out", "param"),
                    "BroadcastPositionBiases_0": ("pos_bias", "position"),
                    r"TransformerLayer_(\d+)": ("layers/{0}", "layer")},
    "position": {r"d_(\d+)": ("tables/{0}", None)},
    "layer": {"LayerNorm_0": ("norm_attn", "param"), "LayerNorm_1": ("norm_mlp", "param"),
              "MultiHeadAttention_0": ("attn", "attention"), "MlpBlock_0": ("mlp", "mlp")},
    "attention": {n: (n, "param") for n in ("query", "key", "value", "out", "out_bias")},
    "mlp": {n: (n, "param") for n in ("wi", "wo", "wo_bias")},
    "maskgit": {"token_embed": ("token_embed", None), "net": ("net", "transformer"),
                "mlm": ("mlm", "mlm")},
    "mlm": {"Dense_0": ("dense", "param"), "LayerNorm_0": ("norm", "param"),
            "AddBias_0": ("bias", "param")},
    "param": _PARAM,
}


def authors_path_to_ours(path: str) -> str:
    """'z_tfm/TransformerLayer_0/MlpBlock_0/wi/kernel' -> 'z_tfm/layers/0/mlp/wi/kernel'."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "params":
        parts = parts[1:]
    kind, ours = "teco", []
    for i, seg in enumerate(parts):
        if kind is None:
            raise ValueError(f"authors' parameter {path!r}: unexpected '{seg}' after a leaf")
        for pattern, (target, next_kind) in _RULES[kind].items():
            m = re.fullmatch(pattern, seg)
            if m:
                if target:
                    ours.append(target.format(*m.groups()))
                kind = next_kind
                break
        else:
            raise ValueError(f"authors' parameter {path!r}: no mapping for '{seg}' "
                             f"(segment {i}, inside a {kind!r} module)")
    if kind is not None:
        raise ValueError(f"authors' parameter {path!r} ends inside a {kind!r} module, not at an array")
    return "/".join(ours)


def flatten_params(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            flat.update(flatten_params(v, key))
        else:
            flat[key] = np.asarray(v)
    return flat


def authors_to_nnx(authors_params: dict[str, np.ndarray], model: nnx.Module) -> nnx.State:
    """Copies every authors' parameter into `model` (in place) and returns its new Param state.

    Keys are flat 'a/b/c' paths, with or without the leading 'params/'. Raises ValueError naming the
    path when an authors' path has no mapping, a shape disagrees, two paths collide, or a model
    parameter is left without a value.
    """
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    ours = {"/".join(str(k) for k in path): (path, var) for path, var in flat}
    filled: dict[str, str] = {}
    new = []
    for authors_path, value in sorted(authors_params.items()):
        key = authors_path_to_ours(authors_path)
        if key not in ours:
            raise ValueError(f"authors' parameter {authors_path!r} maps to {key!r}, which this "
                             f"model does not have (check the config against the checkpoint)")
        if key in filled:
            raise ValueError(f"authors' parameters {filled[key]!r} and {authors_path!r} both map to {key!r}")
        path, var = ours[key]
        value = np.asarray(value)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"authors' parameter {authors_path!r} has shape {tuple(value.shape)}, "
                             f"the model's {key!r} has {tuple(var.shape)}")
        filled[key] = authors_path
        new.append((path, var.replace(value.astype(var.dtype))))
    missing = sorted(set(ours) - set(filled))
    if missing:
        raise ValueError(f"model parameters without an authors' value: {missing}")
    state = nnx.from_flat_state(new)
    nnx.update(model, state)
    return state


# --- (b) checkpoint ---------------------------------------------------------------------------

def find_checkpoint_file(path: str | Path) -> Path:
    """A `checkpoint_<step>` file, or the highest step inside a directory (or its checkpoints/)."""
    p = Path(path)
    if p.is_file():
        return p
    for d in (p, p / "checkpoints"):
        if d.is_dir():
            steps = [(int(m.group(1)), f) for f in d.iterdir()
                     if (m := re.fullmatch(r"checkpoint_(\d+)", f.name)) and f.is_file()]
            if steps:
                return max(steps)[1]
    raise ValueError(f"no authors' checkpoint at {str(p)!r} (expected a checkpoint_<step> file "
                     f"or a directory holding one)")


def read_authors_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], int | None]:
    """-> (flat params {'a/b/c': array}, step). msgpack only; the optimizer state is ignored."""
    file = find_checkpoint_file(path)
    state = serialization.msgpack_restore(file.read_bytes())
    if not isinstance(state, dict) or "params" not in state:
        keys = list(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"authors' checkpoint {str(file)!r} has no 'params' entry (found {keys})")
    params = state["params"]
    while isinstance(params, dict) and set(params) == {"params"}:  # a variables dict saved whole
        params = params["params"]
    step = state.get("step")
    return flatten_params(params), (int(np.asarray(step)) if step is not None else None)


def infer_vq_sizes(authors_params: dict[str, np.ndarray]) -> dict:
    """VQ codes, embedding dim and latent grid, read off sos_post and the decoder's output layer."""
    p = {k.removeprefix("params/"): v for k, v in authors_params.items()}
    for need in ("sos_post", "decoder/Dense_0/kernel"):
        if need not in p:
            raise ValueError(f"authors' checkpoint lacks {need!r}; is it a TECO checkpoint?")
    h, w, c = p["sos_post"].shape
    return dict(vq_n_codes=int(p["decoder/Dense_0/kernel"].shape[1]), vq_embedding_dim=int(c),
                latent_shape=(int(h), int(w)))


# --- (c) config -------------------------------------------------------------------------------

def _set_nested(d: dict, key: str, value) -> None:
    *head, last = key.split(".")
    for part in head:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a section")
    d[last] = value


def read_authors_config(path: str | Path, overrides=()) -> dict:
    """The authors' YAML (yaml.safe_load) with `key=value` overrides (dotted keys for sections;
    values parsed as YAML, so `drop_loss_rate=0.5` is a float)."""
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"authors' config {str(path)!r} is not a YAML mapping")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        _set_nested(cfg, key.strip(), yaml.safe_load(raw))
    return cfg


def _apply(target, values: dict, prefix: str, ignored: list) -> None:
    for k, v in values.items():
        name = f"{prefix}{k}"
        if k not in target:
            ignored.append(name)
        elif isinstance(v, dict) and hasattr(target[k], "keys"):
            _apply(target[k], v, f"{name}.", ignored)
        else:
            current = target[k]
            target[k] = tuple(v) if isinstance(current, tuple) and isinstance(v, list) else v


def config_from_authors(authors_cfg: dict):
    """Our TECO config (DMLab defaults) updated with every authors' key we also have.

    Returns (config, ignored keys): run/infrastructure keys of the authors (data_path, num_workers,
    cache, ...) have no counterpart here and are listed, not applied.
    """
    from configs import common, teco_model  # the repo's configs package (authors' key names)

    c = teco_model.teco_model_config(common.base_config("teco"))
    ignored: list[str] = []
    _apply(c, authors_cfg, "", ignored)
    return c, ignored


# --- (d) writing and CLI ----------------------------------------------------------------------

def save_converted(out_dir: str | Path, params_state: nnx.State, config, extra: dict) -> Path:
    """Writes `<out>/converted/params` (orbax StandardCheckpointer, the nnx Param state as a pure
    dict) and `<out>/converted/config.json`. Returns the params directory."""
    import orbax.checkpoint as ocp

    root = Path(out_dir).absolute() / "converted"
    root.mkdir(parents=True, exist_ok=True)
    params_dir = root / "params"
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(params_dir, nnx.to_pure_dict(params_state), force=True)
    ckpt.wait_until_finished()
    cfg = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config
    (root / "config.json").write_text(json.dumps(dict(config=cfg, **extra), indent=1, default=str))
    return params_dir


def load_converted_params(params_dir: str | Path, model: nnx.Module) -> None:
    """Restores what `save_converted` wrote into `model` (shapes must agree)."""
    import orbax.checkpoint as ocp

    abstract = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    restored = ocp.StandardCheckpointer().restore(Path(params_dir).absolute(), abstract)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)


def convert(authors_ckpt, authors_config, out_dir, overrides=(), vq_n_codes=None,
            vq_embedding_dim=None, latent_shape=None, vq_table=None):
    """Reads, maps and writes; returns (model, params dir). Given VQ sizes must match the checkpoint."""
    from teco.models.teco import teco_shell

    params, step = read_authors_checkpoint(authors_ckpt)
    vq = infer_vq_sizes(params)
    given = dict(vq_n_codes=vq_n_codes, vq_embedding_dim=vq_embedding_dim,
                 latent_shape=None if latent_shape is None else tuple(int(s) for s in latent_shape))
    for k, v in given.items():
        if v is not None and v != vq[k]:
            raise ValueError(f"--{k}={v} disagrees with the checkpoint, which implies {vq[k]}")
    config, ignored = config_from_authors(read_authors_config(authors_config, overrides))
    model = teco_shell(config, **vq)  # zero-filled; every parameter is overwritten below
    state = authors_to_nnx(params, model)
    extra = dict(vq=dict(vq, latent_shape=list(vq["latent_shape"])), authors_step=step,
                 authors_ckpt=str(find_checkpoint_file(authors_ckpt)), ignored_authors_keys=ignored)
    table = None
    if vq_table is not None:
        # The VQ-GAN's code embeddings [vq_n_codes, vq_embedding_dim]: TECO reads frames
        # through them, so sampling needs them beside the parameters.
        table = np.load(vq_table, allow_pickle=False) if not isinstance(vq_table, np.ndarray) else vq_table
        want = (vq["vq_n_codes"], vq["vq_embedding_dim"])
        if table.shape != want:
            raise ValueError(f"--vq_table has shape {table.shape}, the checkpoint needs {want}")
    params_dir = save_converted(out_dir, state, config, extra)
    if table is not None:
        np.save(params_dir.parent / "vq_table.npy", np.asarray(table, np.float32))
    return model, params_dir


FLAGS = flags.FLAGS
flags.DEFINE_string("authors_ckpt", None, "authors' checkpoint_<step> file or its directory")
flags.DEFINE_string("authors_config", None, "authors' YAML config of that run")
flags.DEFINE_string("out", None, "output directory (writes <out>/converted/)")
flags.DEFINE_multi_string("set", [], "override of the authors' config, key=value (repeatable)")
flags.DEFINE_integer("vq_n_codes", None, "VQ codebook size (checked against the checkpoint)")
flags.DEFINE_integer("vq_embedding_dim", None, "VQ embedding dim (checked against the checkpoint)")
flags.DEFINE_list("latent_shape", None, "VQ latent grid h,w (checked against the checkpoint)")
flags.DEFINE_string("vq_table", None, "the VQ-GAN's code embeddings as .npy [vq_n_codes, "
                    "vq_embedding_dim]; stored beside the parameters, needed for sampling")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    for name in ("authors_ckpt", "authors_config", "out"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    try:
        _, params_dir = convert(FLAGS.authors_ckpt, FLAGS.authors_config, FLAGS.out, FLAGS.set,
                                FLAGS.vq_n_codes, FLAGS.vq_embedding_dim, FLAGS.latent_shape,
                                FLAGS.vq_table)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {params_dir}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
