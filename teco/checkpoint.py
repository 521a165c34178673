"""Checkpoints of a `teco.train` workdir, and loading a frozen stage-1 VQ-GAN from one.

Workdir layout:
    <workdir>/config.json            the run's config (JSON, never pickled)
    <workdir>/checkpoints/<step>/    orbax: item 'state' (TrainState: params, optimizer state,
                                     step, RNG, task extras) and item 'data' (the data iterator's
                                     position, JSON)
The last `keep` checkpoints are kept, plus the one with the best eval metric (the task's
`best_metric`, lower is better). Resuming restores the latest.

Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp/` and renames it to `<step>/` once
every file is complete, so a process killed mid-save leaves only a temporary directory, which
`latest_step` never lists and the trainer's manager deletes when it starts.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from teco import checkpoint_barrier

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


# ----------------------------------------------------------------------------- config


def save_config(workdir: str | Path, config) -> None:
    if jax.process_index() == 0:
        path = Path(workdir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_text(path, config.to_json_best_effort(indent=1, sort_keys=True))


def replace_text(path: str | Path, text: str) -> None:
    """Written beside and renamed: an earlier file is replaced whole or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# Keys that only set how often the trainer logs, evaluates and saves, how long it runs, what
# the backward pass recomputes (a run that ran out of memory resumes with remat on) or how much
# decoded data stays in memory: a resumed
# run may change them without --allow_config_change. (total_steps also moves the end of the
# cosine schedule: extending a finished run raises the learning rate again. The data
# pipeline's worker_count is not here: the saved data position depends on it.)
RESUMABLE_KEYS = frozenset({
    "total_steps", "log_interval", "log_eval_interval", "viz_interval", "save_interval",
    "save_interval_secs", "keep_checkpoints", "progress_interval_secs", "eval_batches",
    "remat", "encoder_frames_per_chunk", "checkpoint_timeout_secs", "data.cache_mb"})


# Keys added to the configs since runs were saved without them, with the value that does what
# those runs did: a saved config lacking one resumes as if it held that value.
ADDED_KEYS = {"loss.lpips_min_side": 0}


class ConfigMismatch(ValueError):
    """A workdir's checkpoints were written by a config that differs from the given one."""


def _flat(tree, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: dict, new) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} over every key of either config, compared as JSON (tuples and
    lists are equal); a key missing on one side is shown as '(absent)' (in `old`, keys of
    `ADDED_KEYS` read as their value there)."""
    if not isinstance(new, dict):
        new = json.loads(new.to_json_best_effort(sort_keys=True))
    old, new = _flat(json.loads(json.dumps(old))), _flat(json.loads(json.dumps(new)))
    old.update({k: v for k, v in ADDED_KEYS.items() if k in new and k not in old})
    absent = "(absent)"
    return {k: (old.get(k, absent), new.get(k, absent)) for k in sorted(set(old) | set(new))
            if old.get(k, absent) != new.get(k, absent)}


def check_config(workdir: str | Path, config, *, allow_change: bool = False) -> dict:
    """Refuses (ConfigMismatch, one line listing `key: old -> new`) to resume a workdir whose
    checkpoints were written with a different config, apart from `RESUMABLE_KEYS`.

    allow_change=True resumes anyway (a warning lists the changes). A workdir without
    checkpoints has nothing to resume: its config.json is simply replaced. Returns the changes.
    """
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    if not path.is_file() or not finalized_steps(workdir):
        return {}
    changes = config_changes(json.loads(path.read_text()), config)
    strict = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS}
    listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in strict.items())
    if strict and not allow_change:
        raise ConfigMismatch(
            f"{workdir} holds checkpoints of a different config ({path.name}); changed: {listed}. "
            "Use another --workdir, or pass --allow_config_change to resume with the new values")
    if strict:
        logging.warning("resuming %s with a changed config (--allow_config_change): %s",
                        workdir, listed)
    return changes


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{workdir} is not a teco.train workdir: {CONFIG_FILE} is missing")
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    # JSON turns tuples into lists; the networks take either.
    return config


# ----------------------------------------------------------------------------- manager


def finalized_steps(workdir: str | Path) -> list[int]:
    """Steps of the complete checkpoints on disk (orbax's temporary directories excluded)."""
    root = Path(workdir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


# Orbax saves a replicated array by having each replica write one slice of it, and every
# distinct slice is an XLA program compiled at the first save (benchmarks/checkpoint_save.py:
# 244 programs, 10.8 s for the tiny TECO's state on 8 CPU devices). That pays only for
# slices big enough to make the writes the bottleneck; smaller arrays are written whole by
# their first replica, as orbax does on GPUs.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _write_small_arrays_whole() -> None:
    default = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(default, "_min_slice_bytes_for_replica_parallel", None) == MIN_REPLICA_SLICE_BYTES:
        return
    handler = ocp.type_handlers.ArrayHandler(
        array_metadata_store=getattr(default, "_array_metadata_store", None),
        min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
    # Orbax warns on every override; this one is deliberate, so a run's log stays quiet.
    def quiet(record) -> bool:
        return "overriding" not in record.getMessage()

    absl_logger = logging.get_absl_logger()
    absl_logger.addFilter(quiet)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.removeFilter(quiet)


def make_manager(workdir: str | Path, *, keep: int = 3, best_metric: str | None = None,
                 read_only: bool = False, cleanup_tmp: bool = False,
                 timeout_secs: int = 1200) -> ocp.CheckpointManager:
    """Keeps the latest `keep` checkpoints plus the best one by `best_metric` (minimum).

    cleanup_tmp=True deletes the temporary directories of saves that never finished (only the
    workdir's one writer, the trainer, may ask: another writer's save may be in flight).
    In a multi-process run the processes wait for each other's writes at most `timeout_secs`,
    and a failed write on one stops the others' waits at once (teco/checkpoint_barrier.py)."""
    _write_small_arrays_whole()
    pp = ocp.checkpoint_managers
    policies = [pp.LatestN(n=max(1, int(keep)))]
    best_fn = None
    if best_metric:
        best_fn = lambda metrics: float(metrics[best_metric])
        policies.append(pp.BestN(get_metric_fn=best_fn, reverse=True, n=1,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else pp.AnyPreservationPolicy(policies),
        best_fn=best_fn, best_mode="min", read_only=read_only, create=not read_only,
        cleanup_tmp_directories=cleanup_tmp and not read_only,
        async_options=ocp.AsyncOptions(
            timeout_secs=int(timeout_secs),
            barrier_sync_fn=None if read_only else checkpoint_barrier.for_this_run()))
    return ocp.CheckpointManager(
        Path(workdir).absolute() / CHECKPOINT_DIR, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict | None,
         metrics: dict[str, float] | None = None) -> None:
    """Asynchronous save of the train state and the data position after `step` updates."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}))
    manager.save(step, args=args, metrics=metrics, force=True)


class WriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, permissions, I/O); the message names
    the step, the directory and the latest complete checkpoint."""


def failure_reason(error: BaseException) -> str:
    """One short line for an orbax / tensorstore / OS failure (tensorstore reports errno in text)."""
    if isinstance(error, OSError) and error.errno:
        return f"{os.strerror(error.errno)} (errno {error.errno})"
    text = str(error)
    found = re.search(r"os_error_code='?(\d+)", text)
    if found:
        code = int(found.group(1))
        return f"{os.strerror(code)} (errno {code})"
    line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return line if len(line) <= 200 else line[:200] + "..."


class Saver:
    """Asynchronous saves through `manager` whose failures name their step.

    Orbax writes in background threads and reports a failed write only when it next waits
    (before the following save, or at the end): `save` waits for the previous save first, so
    every failure surfaces as one WriteError naming the step that failed.
    """

    # OSError from Python writes, ValueError from tensorstore (errno in its text), RuntimeError
    # from orbax's own threads; anything else is a bug and keeps its traceback.
    _WRITE_ERRORS = (OSError, ValueError, RuntimeError)

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager, self.pending = manager, None

    def save(self, step: int, state, data_state: dict | None, metrics=None) -> None:
        self.wait()
        try:
            save(self.manager, step, state, data_state, metrics=metrics)
        except self._WRITE_ERRORS as e:
            raise self._error(step, e) from e
        self.pending = step

    def wait(self) -> None:
        """Blocks until the save in flight is complete on disk; WriteError if it failed."""
        step, self.pending = self.pending, None
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
        except self._WRITE_ERRORS as e:
            raise self._error(step, e) from e

    def abandon(self) -> None:
        """While another error propagates: lets a save in flight finish, ignoring its failure
        (the first error is the one to report)."""
        if self.pending is not None:
            self.pending = None
            try:
                self.manager.wait_until_finished()
            except Exception:  # noqa: BLE001 - reported by the error already propagating
                pass

    def latest(self) -> int | None:
        """The latest checkpoint saved or being saved."""
        return self.manager.latest_step()

    def _error(self, step: int, error: BaseException) -> WriteError:
        directory = Path(self.manager.directory)
        intact = [s for s in finalized_steps(directory.parent) if s < step]
        if intact:
            what = (f"the checkpoint of step {intact[-1]} is intact: free space (or fix the "
                    "error) and rerun the same command to resume from it")
        else:
            what = "no earlier checkpoint exists: a rerun starts from step 0"
        return WriteError(f"could not write the checkpoint of step {step} to {directory}: "
                          f"{failure_reason(error)}; {what}")


def quiet_abandoned_writes() -> None:
    """Silences what orbax's abandoned per-array writes print after a failed save (the trainer
    reports the failure once, as a WriteError): "Future exception was never retrieved" (asyncio's
    log), "Event loop is closed" (unraisable, from tensorstore callbacks), and an un-awaited
    coroutine warning, each with a traceback. Nothing else is silenced."""
    import logging as std_logging
    import sys
    import warnings

    std_logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in str(record.msg))
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                            category=RuntimeWarning)
    previous = sys.unraisablehook

    def unraisable(info) -> None:
        leftover = str(info.exc_value) in ("Event loop is closed",
                                           "cannot schedule new futures after shutdown")
        if not (isinstance(info.exc_value, RuntimeError) and leftover):
            previous(info)

    sys.unraisablehook = unraisable


def abstract_with_shardings(abstract_tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_tree, shardings)


def _path_str(path) -> str:
    parts = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        if name != "value":  # nnx.Variable's own leaf
            parts.append(str(name))
    return "/".join(parts)


def check_shapes(manager: ocp.CheckpointManager, step: int, abstract_tree, *, prefix: str = "",
                 what: str = "the config") -> None:
    """Raises ValueError naming the first array whose stored shape differs from `abstract_tree`.

    `prefix` selects a subtree of the stored state (e.g. 'params')."""
    stored = manager.item_metadata(step)["state"]
    stored = getattr(stored, "tree", stored)
    if prefix:
        stored = stored[prefix]
    have = {_path_str(p): tuple(getattr(v, "shape", ()))
            for p, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
    want = {_path_str(p): tuple(v.shape)
            for p, v in jax.tree_util.tree_flatten_with_path(abstract_tree)[0]}
    where = f"checkpoint {manager.directory}/{step}"
    for name, shape in want.items():
        full = f"{prefix}/{name}" if prefix else name
        if name not in have:
            raise ValueError(f"{where} has no array '{full}' that {what} needs: it was written by "
                             "a different model or config")
        if have[name] != shape:
            raise ValueError(f"{where}: '{full}' has shape {have[name]} in the checkpoint but "
                             f"{shape} from {what}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise ValueError(f"{where} holds arrays {what} does not know, e.g. "
                         f"'{(prefix + '/') if prefix else ''}{extra[0]}': it was written by a "
                         "different model or config")


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """(state, data_state) at `step` (default: latest); `abstract_state` carries shardings."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise ValueError(f"no checkpoint in {manager.directory}")
    check_shapes(manager, step, abstract_state, what="the current config")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"] or {})


# ----------------------------------------------------------------------------- stage 1 for stage 2


def load_vqgan(workdir: str | Path, *, step: int | None = None, sharding=None):
    """A trained VQ-GAN and its config from a `teco.train` workdir: `(model, config)`.

    Restores only the parameters, from the checkpoint with the best eval metric if there is one,
    else the latest (or the given `step`). `sharding` places them (default: replicated on the
    first local device). Missing paths, another stage's workdir and checkpoints whose arrays do
    not match the saved config raise ValueError saying which.
    """
    from teco.models.vqgan import vqgan_from_config
    from teco.tasks.vqgan import VQGANTask

    if not workdir:
        raise ValueError("no VQ-GAN workdir given (config.vqvae_ckpt is empty)")
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ValueError(f"VQ-GAN workdir '{workdir}' does not exist (config.vqvae_ckpt)")
    config = load_config(workdir)
    if config.get("model") != "vqgan":
        raise ValueError(f"{workdir} holds a '{config.get('model')}' run, not a VQ-GAN "
                         "(config.vqvae_ckpt must point at a stage-1 workdir)")
    if not (workdir / CHECKPOINT_DIR).is_dir():
        raise ValueError(f"VQ-GAN workdir {workdir} has no checkpoints yet")
    manager = make_manager(workdir, read_only=True, best_metric=VQGANTask.best_metric)
    if step is None:
        step = manager.best_step()
    if step is None:  # no checkpoint carries eval metrics
        step = manager.latest_step()
    if step is None:
        raise ValueError(f"VQ-GAN workdir {workdir} has no checkpoints yet")
    if step not in manager.all_steps():
        raise ValueError(f"VQ-GAN workdir {workdir} has no checkpoint of step {step} "
                         f"(have {list(manager.all_steps())})")
    abstract = nnx.eval_shape(lambda: vqgan_from_config(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract)
    check_shapes(manager, step, abstract_params, prefix="params",
                 what=f"the VQ-GAN config in {workdir / CONFIG_FILE}")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          abstract_params)
    reader = ocp.CheckpointManager(
        (workdir / CHECKPOINT_DIR).absolute(), options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    restored = reader.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": target}, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}))))
    return nnx.merge(graphdef, restored["state"]["params"]), config


def check_stage2_config(vq_config, config) -> None:
    """Stage 2 and the VQ-GAN it reads must agree on the frames; raises ValueError naming the key."""
    for key in ("image_size", "channels"):
        if key in config and config[key] != vq_config[key]:
            raise ValueError(
                f"config.{key}={config[key]} does not match the VQ-GAN's {key}={vq_config[key]} "
                f"(config.vqvae_ckpt={config.get('vqvae_ckpt', '')!r})")


def vqgan_facts(vq_config) -> dict[str, Any]:
    """What stage 2 needs to know about the tokenizer: code grid, vocabulary, embedding width."""
    v = vq_config.vqgan
    factor = int(v.get("patch_size", 1)) * 2 ** (len(v.ch_mult) - 1)
    return {"latent_size": int(vq_config.image_size) // factor, "n_codes": int(v.n_codes),
            "embedding_dim": int(v.embedding_dim), "image_size": int(vq_config.image_size)}
