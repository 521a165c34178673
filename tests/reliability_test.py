"""Faults and bad input for the trainer: SIGTERM / Ctrl-C, SIGKILL at a random step, half-written
checkpoints, time-based saves, a changed config, a full disk, a non-finite loss.

The in-process tests run the real loop (`train.train_and_evaluate`, real data, checkpoints and
signals) with a one-vector task, so nothing slow compiles. The subprocess tests run
`python -m teco.train` on a tiny VQ-GAN as a user would, share one uninterrupted reference run
and a persistent compilation cache (only the first run compiles).
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import teco  # noqa: F401
from teco import checkpoint, data, run_marker, train
from teco.config import load_config
from teco.tasks.base import ConfigKeyed, TrainState, next_rng
from iterators import Wrapped, wrapping_training
from vqgan_test import CONFIGS, shared_data_dir, small_config
from xla_flags import xla_flags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return shared_data_dir(tmp_path_factory)


# ----------------------------------------------------------------------------- in-process: toy task


class ToyTask(ConfigKeyed):
    """The Task protocol with one weight vector: the trainer's loop without a network."""

    batch_keys = ("video",)
    best_metric = "err"
    frames_per_example = 1

    def __init__(self, config):
        self.config = config

    def _static_key(self):   # nothing depends on the config: every test shares the programs
        return ("ToyTask",)

    def init_state(self, rng):
        return TrainState(step=jnp.zeros((), jnp.int32), opt_state={}, rng=rng, extra={},
                          params={"w": jax.random.normal(jax.random.PRNGKey(1), (4,))})

    def phase(self, step):
        return "only"

    def constants(self):
        return None

    def train_step(self, state, batch, consts, *, phase):
        key, rng = next_rng(state)
        x = jnp.mean(batch["video"])            # depends on the data position
        w = state.params["w"]
        loss = x * jnp.sum(w ** 2)
        w = w - 0.1 * x * w + 0.01 * jax.random.normal(key, w.shape)   # and on the RNG
        metrics = {"loss": loss, "data_term": x, "weight_term": jnp.sum(w ** 2)}
        return state.replace(step=state.step + 1, params={"w": w}, rng=rng), metrics

    def eval_step(self, state, batch, consts):
        return {"err": jnp.mean(batch["video"]) * jnp.sum(state.params["w"])}

    def eval_summary(self, outputs):
        return {"err": float(np.mean([o["err"] for o in outputs]))}


def toy_config(data_dir, **overrides):
    base = {"total_steps": 6, "save_interval": 2, "save_interval_secs": 0.0, "log_interval": 1,
            "log_eval_interval": 1000, "viz_interval": 1000, "keep_checkpoints": 10}
    return small_config(data_dir, **dict(base, **overrides))


def on_batch(monkeypatch, hooks):
    """Runs hooks[n](batch) -> batch when the training loop fetches its n-th batch (1-based)."""

    class Hooked(Wrapped):
        n = 0

        def __next__(self):
            self.n += 1
            batch = next(self.it)
            return hooks[self.n](batch) if self.n in hooks else batch

    monkeypatch.setattr(data, "make_iterator", wrapping_training(data.make_iterator, Hooked))


def send(signum, times=1):
    def hook(batch):
        # Never deliver a signal the trainer is not handling (it would stop pytest itself).
        assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler)
        for _ in range(times):
            os.kill(os.getpid(), signum)
        return batch
    return hook


def toy_state(workdir, step):
    manager = checkpoint.make_manager(workdir, read_only=True)
    task = ToyTask(None)
    abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract)
    return checkpoint.restore(manager, target, step)


def assert_same_state(a, b):
    (state_a, data_a), (state_b, data_b) = a, b
    assert data_a == data_b
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def toy_reference(data_dir, tmp_path_factory):
    """An uninterrupted 6-step toy run: the state every interrupted run must end with."""
    workdir = tmp_path_factory.mktemp("toy_reference")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "get_task", ToyTask)
        train.train_and_evaluate(toy_config(data_dir), str(workdir))
    return toy_state(workdir, 6)


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test: a process a shell starts in the background
    (CI's pytest workers can be) inherits SIGINT ignored, and the trainer keeps it so."""
    left_over = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, left_over)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_checkpoints_stops_and_resumes_exactly(name, tmp_path, data_dir, monkeypatch,
                                                      toy_reference, python_ctrl_c):
    monkeypatch.setattr(train, "get_task", ToyTask)
    signum = getattr(signal, name)
    before = signal.getsignal(signum)
    config = toy_config(data_dir)
    with monkeypatch.context() as m:
        on_batch(m, {3: send(signum)})   # arrives while step 3 is being prepared
        with pytest.raises(train.Interrupted,
                           match=rf"^{name} at step 3: checkpoint written to .*checkpoints/3, exiting"):
            train.train_and_evaluate(config, str(tmp_path))
    assert signal.getsignal(signum) is before          # the handler lives only inside the loop
    assert checkpoint.finalized_steps(tmp_path) == [2, 3]
    resumed = train.train_and_evaluate(config, str(tmp_path))
    assert resumed["start_step"] == 3 and resumed["step"] == 6
    assert_same_state(toy_state(tmp_path, 6), toy_reference)


def test_second_ctrl_c_stops_at_once(tmp_path, data_dir, monkeypatch, python_ctrl_c):
    monkeypatch.setattr(train, "get_task", ToyTask)
    on_batch(monkeypatch, {3: send(signal.SIGINT, times=2)})
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(toy_config(data_dir), str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert checkpoint.finalized_steps(tmp_path) == [2]     # no checkpoint for the step in flight


def test_an_ignored_ctrl_c_stays_ignored():
    """`cmd &` from a script starts cmd with SIGINT ignored; a Ctrl-C meant for the shell's
    foreground job must not stop a training running in the background."""
    from teco.stopping import StopRequests

    left_over = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequests():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopRequests():
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, left_over)


def test_time_based_checkpoint(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(train, "get_task", ToyTask)
    clock = {"t": 1000.0}
    monkeypatch.setattr(train, "_now", lambda: clock["t"])

    def tick(batch):
        clock["t"] += 25.0     # each step takes 25 s
        return batch
    on_batch(monkeypatch, {n: tick for n in range(1, 7)})
    config = toy_config(data_dir, save_interval=10**6, save_interval_secs=60.0)
    train.train_and_evaluate(config, str(tmp_path))
    # 60 s have passed after step 3 (75 s) and again after step 6, the last step.
    assert checkpoint.finalized_steps(tmp_path) == [3, 6]


def test_nonfinite_stop_names_step_terms_and_checkpoint(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(train, "get_task", ToyTask)
    on_batch(monkeypatch, {3: lambda b: dict(b, video=b["video"] * jnp.nan)})
    with pytest.raises(FloatingPointError) as err:
        train.train_and_evaluate(toy_config(data_dir), str(tmp_path))
    message = str(err.value)
    assert "at step 3 " in message and "on_nonfinite='stop'" in message
    assert "non-finite terms: loss=nan, data_term=nan, weight_term=nan" in message, message
    assert f"last good checkpoint is step 2 in {tmp_path}" in message
    assert checkpoint.finalized_steps(tmp_path) == [2]


def test_config_change_refused_unless_allowed(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(train, "get_task", ToyTask)
    train.train_and_evaluate(toy_config(data_dir, total_steps=2), str(tmp_path))
    changed = toy_config(data_dir, total_steps=3, lr=1e-3, seed=5)
    with pytest.raises(checkpoint.ConfigMismatch) as err:   # a ValueError: main exits 2
        train.train_and_evaluate(changed, str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "--allow_config_change" in message
    assert "lr: 0.002 -> 0.001" in message and "seed: 1 -> 5" in message
    assert "total_steps" not in message                       # cadence and length may change
    # Only resumable keys changed: no flag needed (tuples in the config survive the JSON).
    result = train.train_and_evaluate(
        toy_config(data_dir, total_steps=3, log_interval=2, save_interval=1, eval_batches=2),
        str(tmp_path))
    assert result["start_step"] == 2 and result["step"] == 3
    result = train.train_and_evaluate(toy_config(data_dir, total_steps=4, lr=1e-3), str(tmp_path),
                                      allow_config_change=True)
    assert result["start_step"] == 3
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 1e-3
    # What the backward pass recomputes may change too (a run out of memory resumes with it).
    assert checkpoint.check_config(tmp_path, toy_config(data_dir, total_steps=4, lr=1e-3,
                                                        remat=True)) == {"remat": (False, True)}
    # A workdir without checkpoints has nothing to protect.
    fresh = tmp_path / "fresh"
    checkpoint.save_config(fresh, changed)
    assert checkpoint.check_config(fresh, toy_config(data_dir)) == {}


def half_written(workdir, step, name=None):
    """What orbax 0.12.8 leaves when killed mid-save: `<step>.orbax-checkpoint-tmp/` holding
    item directories that are themselves temporary and some of their files."""
    tmp = workdir / "checkpoints" / (name or f"{step}.orbax-checkpoint-tmp")
    item = tmp / "state.orbax-checkpoint-tmp" / "ocdbt.process_0" / "d"
    item.mkdir(parents=True)
    (item / "0123456789abcdef").write_bytes(os.urandom(1000))
    (tmp / "_CHECKPOINT_METADATA").write_text('{"init_timestamp_nsecs": 17')   # cut short
    return tmp


def test_half_written_checkpoint_is_never_restored(tmp_path, data_dir, monkeypatch,
                                                   toy_reference):
    monkeypatch.setattr(train, "get_task", ToyTask)
    config = toy_config(data_dir, save_interval=1)
    train.train_and_evaluate(toy_config(data_dir, save_interval=1, total_steps=2), str(tmp_path))
    debris = [half_written(tmp_path, 3),
              half_written(tmp_path, 4, "4.orbax-checkpoint-tmp-1795333709")]  # older orbax
    assert checkpoint.make_manager(tmp_path, read_only=True).latest_step() == 2
    assert checkpoint.finalized_steps(tmp_path) == [1, 2]
    result = train.train_and_evaluate(config, str(tmp_path), allow_config_change=False)
    assert result["start_step"] == 2 and result["step"] == 6
    assert not any(p.exists() for p in debris)      # the trainer's manager removed them
    assert_same_state(toy_state(tmp_path, 6), toy_reference)


# ----------------------------------------------------------------------------- subprocess: real CLI

# A VQ-GAN small enough that one run is mostly start-up: no GAN, no LPIPS, no eval batches.
TOTAL = 10
TINY = {"total_steps": TOTAL, "save_interval": 1, "keep_checkpoints": 3, "log_interval": 1,
        "log_eval_interval": 1000, "viz_interval": 1000, "eval_batches": 0,
        "progress_interval_secs": 0.0, "loss.disc_start": 10**9, "loss.lpips_weight": 0.0,
        "vqgan.ch": 8, "vqgan.n_codes": 16, "vqgan.embedding_dim": 8, "vqgan.proj_dim": 4}
CONFIG = f"{CONFIGS}/memory_maze_vqgan.py:tiny"


class Cli:
    """`python -m teco.train` on the tiny config, as a user runs it."""

    def __init__(self, data_dir, cache_dir):
        self.overrides = dict(TINY, **{"data.data_dir": str(data_dir)})
        self.env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                        XLA_FLAGS=xla_flags(2),
                        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

    def args(self, workdir, prefix=()):
        return ([sys.executable, *prefix, "-m", "teco.train", f"--config={CONFIG}",
                 f"--workdir={workdir}"]
                + [f"--config.{k}={v}" for k, v in self.overrides.items()])

    def start(self, workdir, log):
        with open(log, "w") as out:
            return subprocess.Popen(self.args(workdir), cwd=ROOT, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT)

    def run(self, workdir, prefix=()):
        return subprocess.run(self.args(workdir, prefix), cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=600)

    def state(self, workdir, step):
        """(state, data position) of a checkpoint, restored through teco.checkpoint."""
        from teco.tasks.vqgan import VQGANTask

        config = load_config(CONFIG, self.overrides)
        abstract = jax.eval_shape(VQGANTask(config).init_state, jax.random.PRNGKey(0))
        sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                              abstract)
        return checkpoint.restore(checkpoint.make_manager(workdir, read_only=True), target, step)


def wait_for_checkpoint(proc, workdir, step, timeout=240):
    """Polls until a complete checkpoint >= `step` exists; returns the latest one."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = checkpoint.finalized_steps(workdir)
        if steps and steps[-1] >= step:
            return steps[-1]
        assert proc.poll() is None, f"the run ended before checkpoint {step}"
        time.sleep(0.02)
    pytest.fail(f"no checkpoint {step} after {timeout} s")


@pytest.fixture(scope="module")
def cli(data_dir, tmp_path_factory):
    return Cli(data_dir, tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory):
    """An uninterrupted run (and the compilation cache every later run reads)."""
    workdir = tmp_path_factory.mktemp("cli_reference")
    done = cli.run(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, cli.state(workdir, TOTAL)


def stop_line(log: str, name: str) -> tuple[int, str]:
    lines = [line for line in log.splitlines() if f"{name} at step" in line]
    assert len(lines) == 1, log[-3000:]
    return int(lines[0].split(f"{name} at step ")[1].split(":")[0]), lines[0]


def test_sigkill_then_sigterm_then_rerun_is_bitwise_exact(cli, reference, tmp_path):
    """One workdir through both faults (three processes rather than four keeps this short):
    SIGKILL after a random checkpoint, a rerun stopped by SIGTERM, a rerun to the end."""
    # 1. SIGKILL: nothing runs after it; a save may be cut anywhere.
    kill_at = random.Random(20261122).randint(2, 4)
    proc = cli.start(tmp_path, tmp_path / "killed.log")
    wait_for_checkpoint(proc, tmp_path, kill_at)
    proc.kill()
    proc.wait()
    proc_killed = proc
    killed = checkpoint.finalized_steps(tmp_path)[-1]
    assert killed < TOTAL, "the run finished before it could be killed"
    half_written(tmp_path, killed + 1, f"{killed + 1}.orbax-checkpoint-tmp-1")

    # 2. The same command again, stopped by SIGTERM once it has written a checkpoint.
    proc = cli.start(tmp_path, tmp_path / "sigterm.log")
    wait_for_checkpoint(proc, tmp_path, killed + 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    log = (tmp_path / "sigterm.log").read_text()
    assert f"the previous run in {tmp_path} (process {proc_killed.pid} on " in log  # named
    assert "ended without a word: killed by SIGKILL" in log
    assert f"resumed from {tmp_path} at step {killed}" in log
    assert not (tmp_path / run_marker.FILE).exists()  # SIGTERM ends the run cleanly
    step, line = stop_line(log, "SIGTERM")
    assert f"SIGTERM at step {step}: checkpoint written to {tmp_path}/checkpoints/{step}, " \
           "exiting" in line
    assert killed < step < TOTAL and checkpoint.finalized_steps(tmp_path)[-1] == step
    assert "Traceback" not in log

    # 3. Once more to the end: the state equals the uninterrupted run's, bit for bit.
    done = cli.run(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {tmp_path} at step {step}" in done.stderr
    assert "ended without a word" not in done.stderr and not (tmp_path / run_marker.FILE).exists()
    assert_same_state(cli.state(tmp_path, TOTAL), reference[1])


def test_a_run_of_one_device_resumes_as_two(cli, reference, tmp_path):
    """A run stopped as one CPU device finishes as two (the pipeline splits a CPU-only host into
    one device per core since 2026-12-06, so a workdir begun before resumes so)."""
    one = subprocess.Popen(cli.args(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT, env=dict(cli.env, XLA_FLAGS=xla_flags(1)))
    wait_for_checkpoint(one, tmp_path, 3)
    one.send_signal(signal.SIGTERM)
    assert one.wait(timeout=300) == 0
    stopped = checkpoint.finalized_steps(tmp_path)[-1]
    assert stopped < TOTAL, "the one-device run finished before it could be stopped"

    done = cli.run(tmp_path)   # cli.env: 2 devices
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {tmp_path} at step {stopped}" in done.stderr
    assert checkpoint.finalized_steps(tmp_path)[-1] == TOTAL
    # the sums ran in another order on two devices: close to the two-device run, not equal
    ours, ref = cli.state(tmp_path, TOTAL), reference[1]
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-2, atol=1e-3)


def test_a_workdir_still_in_training_is_refused_untouched(cli, reference, tmp_path):
    """A second trainer on a workdir whose marker names a live process here: exit 2, one line,
    and the first run's unfinished checkpoint left where it is."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / str(TOTAL))
    half_written(workdir, TOTAL, f"{TOTAL}.orbax-checkpoint-tmp-7")   # the live run's save
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (workdir / run_marker.FILE).write_text(json.dumps(
            {"host": socket.gethostname(), "pid": live.pid, "started": "earlier",
             "start_ticks": run_marker.process_start_ticks(live.pid), "command": "teco.train"}))
        before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
        done = cli.run(workdir)
    finally:
        live.kill()
        live.wait()
    assert done.returncode == train.EXIT_USER_ERROR, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "is being trained by" in line]
    assert len(errors) == 1 and f"kill -TERM {live.pid}" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert json.loads((workdir / run_marker.FILE).read_text())["pid"] == live.pid


# The child lowers its own file-size limit, then becomes `python -m teco.train` (no fork from
# this multithreaded process). SIGXFSZ ignored: a write past the limit fails (EFBIG), like a
# full disk fails with ENOSPC, instead of killing the process.
SMALL_FILES = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY)); "
               "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def test_disk_full_keeps_earlier_checkpoint_and_says_so(cli, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    for step in (TOTAL - 1, TOTAL):       # resume from TOTAL - 2: its next save hits the limit
        shutil.rmtree(workdir / "checkpoints" / str(step))
    done = cli.run(workdir, prefix=["-c", SMALL_FILES])
    assert done.returncode == train.EXIT_CHECKPOINT_FAILED, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "could not write" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert (f"could not write the checkpoint of step {TOTAL - 1} to {workdir}/checkpoints: "
            "File too large" in errors[0])
    assert f"the checkpoint of step {TOTAL - 2} is intact" in errors[0]
    assert "Traceback" not in done.stderr
    assert checkpoint.finalized_steps(workdir) == [TOTAL - 2]
    state, data_state = cli.state(workdir, TOTAL - 2)
    assert data_state and int(state.step) == TOTAL - 2


def test_changed_config_exits_2_with_one_line(cli, reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    cli.overrides = dict(cli.overrides, lr=0.01)
    try:
        done = cli.run(workdir)
    finally:
        cli.overrides.pop("lr")
    assert done.returncode == train.EXIT_USER_ERROR
    errors = [line for line in done.stderr.splitlines() if "different config" in line]
    assert len(errors) == 1 and "lr: 0.0005 -> 0.01" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
