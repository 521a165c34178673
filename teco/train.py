"""Trainer for both stages (the stage is `config.model`, see `teco.tasks`).

    python -m teco.train --config=configs/memory_maze_vqgan.py --workdir=workdirs/memory_maze/vqgan
    python -m teco.train --config=configs/dmlab_vqgan.py:tiny --workdir=/tmp/vq --config.total_steps=50

`main` only parses flags; the loop is `train_and_evaluate(config, workdir)`. A workdir that holds
checkpoints is resumed (state, optimizer, RNG and the data position), so re-running the same
command after an interruption continues where it stopped, bit for bit. A workdir resumes only
with the config that wrote it (cadence and run-length keys aside; `--allow_config_change`).

SIGTERM (what TPU VMs and SLURM send before taking a machine) and Ctrl-C finish the step in
flight, write a checkpoint and exit 0; a second one acts at once. Exit codes of `main`:
    0  finished, or stopped by SIGTERM / Ctrl-C after writing a checkpoint
    2  bad config, data or workdir (one line naming what is wrong), or another process still
       training into the same workdir (`teco/run_marker.py`)
    3  a checkpoint could not be written (disk full, I/O); the earlier ones are intact
    4  non-finite loss with config.on_nonfinite='stop' (the message names the step, the loss
       terms and the last good checkpoint)
    5  multi-process runs: a computation shared with the other processes failed, most often
       because another host died (the message names the checkpoint to resume from). When the
       dead host is noticed by its missing heartbeats instead (--heartbeat_timeout_secs), JAX
       aborts the process (SIGABRT) with "Terminating process because the JAX distributed
       service detected fatal errors"; the checkpoints are intact either way.
"""
from __future__ import annotations

import collections
import logging as std_logging
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from teco import checkpoint, run_marker, sharding
from teco.stopping import Interrupted, StopRequests, agree  # noqa: F401 (Interrupted: API)
from teco.tasks import get_task

EXIT_USER_ERROR, EXIT_CHECKPOINT_FAILED, EXIT_NONFINITE, EXIT_PEER_FAILED = 2, 3, 4, 5

# Environment variables that mean "one process of a multi-process job".
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                  "TPU_WORKER_HOSTNAMES", "MEGASCALE_NUM_SLICES")


def maybe_initialize_distributed(mode: str = "auto", heartbeat_timeout_secs: int = 100) -> bool:
    """Calls `jax.distributed.initialize()` for multi-process runs; never for a plain single run.

    mode 'on' / 'off' force it; 'auto' looks for a cluster launcher's variables (SLURM with more
    than one task, Open MPI, a coordinator address, a multi-host TPU slice). Returns whether it ran.
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set everything by hand.
    A process that sends no heartbeat for `heartbeat_timeout_secs` counts as dead: JAX then
    stops every other process (a host killed mid-collective would otherwise hold them forever).
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--multihost must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False
    env = os.environ

    def more_than_one(key):
        value = env.get(key, "")
        if key == "TPU_WORKER_HOSTNAMES":
            return "," in value
        if key == "JAX_COORDINATOR_ADDRESS":
            return bool(value)
        return value.isdigit() and int(value) > 1

    if mode == "on" or any(more_than_one(k) for k in _MULTIHOST_ENV):
        # Without a cluster launcher JAX cannot detect the rank and process count (several
        # processes on one machine): JAX_NUM_PROCESSES / JAX_PROCESS_ID give them.
        kwargs = {"heartbeat_timeout_seconds": int(heartbeat_timeout_secs)}
        for arg, key in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if env.get(key, "").strip():
                if not env[key].strip().isdigit():
                    raise ValueError(f"{key} must be a non-negative integer, got {env[key]!r}")
                kwargs[arg] = int(env[key])
        jax.distributed.initialize(**kwargs)
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
        return True
    return False


# ----------------------------------------------------------------------------- building blocks


# The task is a static argument of the jitted functions below: tasks hash and compare by their
# config, so a second run with the same config in one process (a resumed test run, the sampler
# after training) reuses the compiled programs instead of compiling them again.


def _init(rng, task):
    return task.init_state(rng)


def init_sharded(task, rng, shardings):
    """Runs `task.init_state` under jit straight into its shardings (nothing unsharded).

    It runs once, so on CPUs it is compiled without XLA's backend optimisations: with one random
    initialiser per parameter that cuts the compile from ~15 s to ~3 s for the tiny models and
    changes no value that matters.
    """
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    init = jax.jit(_init, static_argnums=1, out_shardings=shardings, compiler_options=options)
    return init(rng, task)


def create_train_state(task, config, mesh):
    """(state, abstract_state, shardings): parameters and optimizer state are created sharded."""
    rng = jax.random.PRNGKey(int(config.seed))
    abstract = jax.eval_shape(task.init_state, rng)
    shardings = sharding.state_shardings(abstract, mesh, config.logical_axis_rules)
    return init_sharded(task, rng, shardings), abstract, shardings


def _train_step(state, batch, consts, task, phase, on_nonfinite):
    new_state, metrics = task.train_step(state, batch, consts, phase=phase)
    if on_nonfinite == "skip":
        ok = jnp.isfinite(metrics["loss"])
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
        new_state = kept.replace(step=new_state.step, rng=new_state.rng)
        metrics = dict(metrics, skipped=(~ok).astype(jnp.float32))
    return new_state, metrics


def make_train_step(task, mesh, state_shardings, phase, *, on_nonfinite: str = "stop"):
    """The jitted step `(state, batch, consts) -> (state, metrics)` for one phase: state donated,
    batch on the data axes, constants replicated.

    With on_nonfinite='skip' a step whose loss is not finite leaves the state as it was (only
    the step counter and RNG advance) and reports `skipped`=1.
    """
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    rep = sharding.replicated(mesh)
    step = jax.jit(_train_step, static_argnums=(3, 4, 5),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh), rep),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,))
    run = lambda state, batch, consts: step(state, batch, consts, task, phase, on_nonfinite)
    # For ahead-of-time compilation (memory and cost analysis in benchmarks/).
    run.lower = lambda state, batch, consts: step.lower(state, batch, consts, task, phase,
                                                        on_nonfinite)
    return run


def _eval_step(state, batch, consts, task):
    return task.eval_step(state, batch, consts)


def make_eval_step(task, mesh, state_shardings):
    rep = sharding.replicated(mesh)
    step = jax.jit(_eval_step, static_argnums=3,
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh), rep))
    return lambda state, batch, consts: step(state, batch, consts, task)


def check_loss(step: int, loss: float, on_nonfinite: str, context: str = "",
               terms: dict[str, float] | None = None) -> None:
    """Raises FloatingPointError naming `step` and the non-finite `terms` (the step's metrics)
    if `loss` is not finite and the mode is 'stop'."""
    if not np.isfinite(loss) and on_nonfinite == "stop":
        terms = sorted((terms or {}).items(), key=lambda kv: kv[0] != "loss")  # loss first
        bad = [f"{k}={v}" for k, v in terms if not np.isfinite(v)]
        raise FloatingPointError(
            f"non-finite loss ({loss}) at step {step} (config.on_nonfinite='stop')"
            + (f"; non-finite terms: {', '.join(bad)}" if bad else "")
            + (f"; {context}" if context else ""))


def to_host(tree):
    """Global arrays -> numpy on every process (gathers across hosts when there are several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def evaluate(task, eval_step, state, consts, config, mesh, *, n_batches: int | None = None):
    """(summary, first batch): the task's eval summary over `eval_batches` batches of held-out
    data, the same batches at every evaluation. n_batches=0 only fetches the first batch."""
    from teco import data

    # Random crops from a fixed seed: the same held-out frames at every evaluation.
    it = data.make_iterator(config, mesh, split=config.data.eval_split, train=True,
                            seed=int(config.seed) + 7919)
    n_batches = int(config.eval_batches) if n_batches is None else n_batches
    first = batch = next(it)
    outputs = []
    for i in range(n_batches):
        batch = next(it) if i else batch
        outputs.append(to_host(eval_step(state, batch, consts)))
    return (task.eval_summary(outputs) if outputs else {}), first


class _Progress:
    """A terminal line every `interval` seconds: step, loss, steps/s, frames/s and ETA."""

    def __init__(self, total: int, interval: float, frames_per_step: int):
        self.total, self.interval, self.frames_per_step = total, interval, frames_per_step
        self.last_t, self.last_step, self.rate = None, None, None

    def update(self, step: int, loss: float) -> None:
        now = time.time()
        if self.last_t is None:  # the first step includes compilation: start timing after it
            self.last_t, self.last_step = now, step
            return
        if now - self.last_t < self.interval and step < self.total:
            return
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        self.rate = rate if self.rate is None else 0.7 * rate + 0.3 * self.rate
        eta = (self.total - step) / max(self.rate, 1e-9)
        logging.info("step %d/%d (%.0f%%)  loss %.4f  %.2f steps/s  %.1f frames/s  ETA %s",
                     step, self.total, 100.0 * step / self.total, loss, self.rate,
                     self.rate * self.frames_per_step, time.strftime("%H:%M:%S", time.gmtime(eta)))
        self.last_t, self.last_step = now, step


def _now() -> float:
    return time.monotonic()


# ----------------------------------------------------------------------------- the loop


def warn_if_slow_here(config, backend: str) -> bool:
    """Logs (and returns True) when the config asks for what only pays off on accelerators."""
    chunk = int(config.get("encoder_frames_per_chunk", 0) or 0)
    if chunk and backend == "cpu":
        logging.warning("encoder_frames_per_chunk=%d on the CPU: XLA:CPU computes the encoder's "
                        "weight gradients inside the chunk loop ~50x slower (python "
                        "benchmarks/teco_train.py encoder); the key is for accelerators short "
                        "of memory, and 0 trains the same model", chunk)
        return True
    return False


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Trains `config.model` into `workdir` (resuming if it holds checkpoints).

    Returns {'start_step' (where this call began), 'step', 'train': last logged train averages,
    'eval': last eval summary}. Raises `checkpoint.ConfigMismatch` (a ValueError) if the
    workdir's checkpoints come from another config and `allow_config_change` is False,
    `Interrupted` after a SIGTERM / SIGINT checkpoint, `checkpoint.WriteError` if a checkpoint
    cannot be written, FloatingPointError on a non-finite loss with on_nonfinite='stop'.
    """
    try:
        from teco.config import validate
    except ImportError:
        validate = None
    if validate is not None:
        validate(config, jax.device_count())
    warn_if_slow_here(config, jax.default_backend())
    workdir = Path(workdir)
    checkpoint.check_config(workdir, config, allow_change=allow_config_change)
    workdir.mkdir(parents=True, exist_ok=True)
    # Before the checkpoint manager, whose start deletes unfinished checkpoints: a run still
    # training here is refused, a previous one killed without a word is named.
    with run_marker.claimed(workdir, log=lambda note: logging.warning("%s", note)):
        return _train(config, workdir)


def _train(config, workdir: Path) -> dict:
    """train_and_evaluate's run, in a checked workdir that this run holds."""
    from clu import metric_writers

    from teco import data

    mesh = sharding.make_mesh(config.mesh)
    task = get_task(config)
    if hasattr(task, "check_inputs"):  # a task may check its data before anything compiles
        task.check_inputs()
    total = int(config.total_steps)
    frames_per_step = int(config.batch_size) * int(task.frames_per_example)

    # Resume order: (1) the train state, (2) the data iterator's position, both from the latest
    # checkpoint; (3) the loop continues at state.step. Nothing is initialised when resuming.
    manager = checkpoint.make_manager(
        workdir, keep=config.keep_checkpoints, best_metric=task.best_metric, cleanup_tmp=True,
        timeout_secs=int(config.checkpoint_timeout_secs))
    train_iter = data.make_iterator(config, mesh, split=config.data.train_split, train=True)
    rng = jax.random.PRNGKey(int(config.seed))
    abstract = jax.eval_shape(task.init_state, rng)
    state_sh = sharding.state_shardings(abstract, mesh, config.logical_axis_rules)
    latest = manager.latest_step()
    if latest is not None:
        state, data_state = checkpoint.restore(
            manager, checkpoint.abstract_with_shardings(abstract, state_sh), latest)
        if data_state:
            train_iter.set_state(data_state)
        logging.info("resumed from %s at step %d", workdir, int(state.step))
    else:
        state = init_sharded(task, rng, state_sh)
    checkpoint.save_config(workdir, config)
    consts = jax.device_put(task.constants(), sharding.replicated(mesh))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    logging.info("model '%s': %.2fM parameters; mesh %s", config.model, n_params / 1e6,
                 dict(mesh.shape))

    writer = metric_writers.create_default_writer(str(workdir),
                                                  just_logging=jax.process_index() > 0)
    steps = {}
    eval_step = make_eval_step(task, mesh, state_sh)
    progress = _Progress(total, float(config.get("progress_interval_secs", 10.0)), frames_per_step)
    window = collections.defaultdict(list)
    result = {"start_step": int(state.step), "step": int(state.step), "train": {}, "eval": {}}
    timer = {"t": None, "step": None, "saved": _now()}
    saver = checkpoint.Saver(manager)
    n_skipped = 0

    def absorb(step: int, metrics) -> None:
        """Host side of step `step` (1-based count of updates): NaN check, averages, progress."""
        nonlocal n_skipped
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["loss"]):
            last = saver.latest()
            check_loss(step, m["loss"], config.on_nonfinite,
                       f"the last good checkpoint is step {last} in {manager.directory}"
                       if last is not None else "no checkpoint written yet", terms=m)
        if m.get("skipped", 0.0) > 0:
            n_skipped += 1
            logging.warning("step %d: non-finite loss, update skipped (%d so far)", step, n_skipped)
        for k, v in m.items():
            window[k].append(v)
        progress.update(step, m["loss"])
        now = time.time()
        if timer["t"] is None:
            timer["t"], timer["step"] = now, step
        if step % int(config.log_interval) == 0 or step == total:
            summary = {f"train/{k}": float(np.mean(v)) for k, v in window.items()}
            if step > timer["step"]:
                rate = (step - timer["step"]) / max(now - timer["t"], 1e-9)
                summary.update({"perf/steps_per_sec": rate,
                                "perf/frames_per_sec": rate * frames_per_step})
            timer["t"], timer["step"] = now, step
            writer.write_scalars(step, summary)
            result["train"] = summary
            window.clear()

    pending = None
    step = start = int(state.step)
    try:
        with StopRequests() as stop_requests:
            while step < total:
                phase = task.phase(step)
                if phase not in steps:
                    steps[phase] = make_train_step(task, mesh, state_sh, phase,
                                                   on_nonfinite=config.on_nonfinite)
                batch = next(train_iter)
                state, metrics = steps[phase](state, batch, consts)
                step += 1
                # Async dispatch: step `step` is queued; now read the previous step's metrics.
                if pending is not None:
                    absorb(*pending)
                pending = (step, metrics)

                do_eval = step % int(config.log_eval_interval) == 0 or step == total
                do_viz = step % int(config.viz_interval) == 0
                stop = stop_requests.local(step - start)
                time_due = False
                # The checkpoint clock (and, without JAX's preemption service, the stop flag)
                # is read on log steps only: one all-gather there on multi-process runs.
                if step % int(config.log_interval) == 0:
                    secs = float(config.save_interval_secs)
                    time_due, shared_stop = agree(
                        bool(secs) and _now() - timer["saved"] >= secs,
                        stop_requests.shared_flag())
                    stop = stop or shared_stop
                stop = stop and step < total   # the last step ends the run anyway
                do_save = (step % int(config.save_interval) == 0 or step == total or do_eval
                           or time_due or stop)
                if not (do_eval or do_viz or do_save):
                    continue
                absorb(*pending)  # never evaluate or save a state whose loss was not checked
                pending = None
                eval_summary, eval_batch = None, None
                if do_eval or do_viz:
                    eval_summary, eval_batch = evaluate(task, eval_step, state, consts, config,
                                                        mesh, n_batches=None if do_eval else 0)
                if do_eval:
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_summary.items()})
                    result["eval"] = eval_summary
                    logging.info("eval at step %d: %s", step,
                                 "  ".join(f"{k} {v:.4g}" for k, v in eval_summary.items()))
                if do_viz:
                    images = to_host(task.visualize(state, eval_batch, consts))
                    writer.write_images(step, {k: np.asarray(v) for k, v in images.items()})
                if do_save:
                    saver.save(step, state, train_iter.get_state(),
                               metrics=eval_summary if do_eval and eval_summary else None)
                    timer["saved"] = _now()
                if stop:
                    saver.wait()
                    raise Interrupted(stop_requests.received or "SIGTERM", step,
                                      f"{manager.directory}/{step}")
            if pending is not None:
                absorb(*pending)
            saver.wait()   # the last checkpoint is complete on disk before returning
    except BaseException:
        saver.abandon()
        raise
    finally:
        writer.flush()
        writer.close()
    result["step"] = step
    return result


# ----------------------------------------------------------------------------- command line


def _define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dmlab_vqgan.py[:tiny].",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and config.json.")
    flags.DEFINE_enum("multihost", "auto", ["auto", "on", "off"],
                      "jax.distributed.initialize(): auto-detected from the launcher's environment.")
    flags.DEFINE_integer("heartbeat_timeout_secs", 100, "Multi-process runs: a process silent this "
                         "long counts as dead and the others stop (JAX's default is 100).",
                         lower_bound=1)
    flags.DEFINE_bool("allow_config_change", False,
                      "Resume a workdir whose checkpoints were written with a different config.")
    flags.mark_flags_as_required(["config", "workdir"])


def quiet_library_logs() -> None:
    """Keeps the terminal readable: orbax and tfds log every save/read at INFO level, and a
    failed checkpoint would print a traceback per array."""
    noisy = ("/orbax/", "/tensorflow_datasets/")

    def keep(record) -> bool:
        message = str(record.msg)
        if "Requested `tracked_metric`" in message:  # saves between evaluations
            return False
        if "read_only=True" in message or "directory is read only" in message:
            return False  # sample/eval open checkpoints read-only on purpose
        library = any(n in record.pathname for n in noisy)
        if library and record.exc_info:
            # Orbax logs a failed write with its traceback from every thread it passed through;
            # the trainer reports the failure itself (checkpoint.WriteError): one line each.
            text = record.getMessage().splitlines()[0]
            record.msg, record.args = text if len(text) <= 160 else text[:160] + "...", None
            record.exc_info, record.exc_text = None, None
        return record.levelno >= std_logging.WARNING or not library

    logging.get_absl_logger().addFilter(keep)
    checkpoint.quiet_abandoned_writes()


def exit_after_shared_computation_failed(error: Exception, workdir: str) -> None:
    """A multi-process run whose step, or any computation spanning the processes, failed: most
    often another host died (killed, preempted without notice, crashed), which the collectives
    see as a closed connection. Says where to resume and exits at once: a normal exit would wait
    in jax.distributed's shutdown barrier for the dead host until its heartbeat times out, then
    abort with a C++ stack."""
    steps = checkpoint.finalized_steps(workdir)
    resume = (f"the newest complete checkpoint is step {steps[-1]} in "
              f"{Path(workdir) / checkpoint.CHECKPOINT_DIR}: rerun the same command on every host "
              "to resume from it" if steps else
              "no checkpoint is complete yet: rerunning the same command on every host starts over")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    logging.error("process %d of %d: a computation shared with the other processes failed (%s); "
                  "if another host stopped (killed, preempted or crashed: see its log), %s",
                  jax.process_index(), jax.process_count(), first_line, resume)
    for handler in std_logging.getLogger().handlers + logging.get_absl_logger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PEER_FAILED)


def main(argv):
    del argv
    flags_ = flags.FLAGS
    quiet_library_logs()
    # Every outcome is one line, without a traceback; the exit codes are listed at the top.
    codes = ((ValueError, EXIT_USER_ERROR), (checkpoint.WriteError, EXIT_CHECKPOINT_FAILED),
             (FloatingPointError, EXIT_NONFINITE))
    try:
        maybe_initialize_distributed(flags_.multihost, flags_.heartbeat_timeout_secs)
        if not flags_.allow_config_change:  # a refused workdir fails before the slow imports
            checkpoint.check_config(flags_.workdir, flags_.config)
        # clu's writers import TensorFlow: keep it off any accelerator JAX uses.
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
        train_and_evaluate(flags_.config, flags_.workdir,
                           allow_config_change=flags_.allow_config_change)
    except Interrupted as e:
        logging.warning("%s", e)
    except tuple(kind for kind, _ in codes) as e:
        logging.error("%s", e)
        sys.exit(next(code for kind, code in codes if isinstance(e, kind)))
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        exit_after_shared_computation_failed(e, flags_.workdir)
    except KeyboardInterrupt:  # a second Ctrl-C
        logging.error("interrupted: the step in flight was not saved; rerunning the same command "
                      "resumes from the latest checkpoint")
        sys.exit(130)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
