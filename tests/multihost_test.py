"""Multi-host readiness: `python -m teco.train` as 2 processes (jax.distributed on localhost, 4
CPU devices each, one 8-device mesh whose data axis spans both) trains, is stopped, resumes,
and matches the trainer's step run in one 8-device process (this one) step by step.
With one process's files limited (a full disk on one host), both stop at once with exit 3
and the earlier checkpoint intact. With one process killed (a host lost without notice), the
other stops within the heartbeat timeout, the complete checkpoints intact.

The processes are real subprocesses; each is killed (with its process group) if anything goes
wrong. Every launch shares one persistent compilation cache with the others, so only the
first compiles the train step.
"""
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from multihost_worker import EXIT_PREEMPTED
from xla_flags import xla_flags

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "multihost_worker.py"
TIMEOUT_SECS = 240  # per launch; a healthy one takes well under a minute
LAST_EXIT_GRACE_SECS = 60
TOTAL_STEPS = 4
STOP_AFTER = 2      # the first 2-process run stops after 2 batches, i.e. after its checkpoint at 2

# The tiny VQ-GAN, narrower still; one training phase (no discriminator) and no LPIPS in the
# loss keep each process's compilation short. Eval (with LPIPS) runs at the last step. A
# constant learning rate keeps the train step's program the same whatever total_steps a test
# runs to, so every launch after the first reads it from the shared compilation cache.
OVERRIDES = {"total_steps": TOTAL_STEPS, "save_interval": 2, "log_interval": 1,
             "lr_schedule": "constant",
             "progress_interval_secs": 0.0, "vqgan.ch": 8, "vqgan.n_codes": 16,
             "vqgan.embedding_dim": 8, "vqgan.proj_dim": 4, "loss.disc_start": 10**6,
             "loss.lpips_weight": 0.0, "eval_batches": 1, "mesh.data": -1, "mesh.fsdp": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_flags(workdir: Path, data_dir: Path) -> list[str]:
    flags = [f"--config={REPO}/configs/memory_maze_vqgan.py:tiny", f"--workdir={workdir}",
             "--multihost=on", f"--config.data.data_dir={data_dir}"]
    return flags + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def base_env(cache_dir: Path) -> dict[str, str]:
    """4 CPU devices, nothing inherited that configures JAX (pytest's process has 8)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "TECO_TEST_")) and k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(4),
               TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


@contextlib.contextmanager
def started(commands: list[tuple[list[str], dict[str, str]]], logs: list[Path]):
    """The commands' processes, side by side, each writing its log; whatever still runs on
    leaving is killed with its process group."""
    procs = []
    try:
        for (cmd, env), log in zip(commands, logs):
            with open(log, "w") as f:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def launch(commands: list[tuple[list[str], dict[str, str]]], logs: list[Path],
           expected_rc: int) -> list[str]:
    """Runs the commands side by side; returns their logs. Any process that exits with another
    code than `expected_rc`, or a launch over TIMEOUT_SECS, kills all of them and fails."""
    with started(commands, logs) as procs:
        deadline = time.monotonic() + TIMEOUT_SECS
        while any(p.poll() is None for p in procs):
            # One failed process leaves the others waiting for it: stop them at once, and
            # give them a minute at most once one has finished.
            if any(p.returncode not in (None, expected_rc) for p in procs):
                break
            if any(p.returncode is not None for p in procs):
                deadline = min(deadline, time.monotonic() + LAST_EXIT_GRACE_SECS)
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    texts = [log.read_text(errors="replace") for log in logs]
    codes = [p.returncode for p in procs]
    if codes != [expected_rc] * len(procs):
        tails = "\n".join(f"--- {log.name} (exit {c}):\n" + t[-3000:]
                          for log, c, t in zip(logs, codes, texts))
        pytest.fail(f"exit codes {codes}, expected {expected_rc} (-9: killed after a failure "
                    f"or {TIMEOUT_SECS} s)\n{tails}")
    return texts


# Process 1's files are limited to 40 kB (RLIMIT_FSIZE, SIGXFSZ ignored): a write past it fails
# with EFBIG as a full disk fails with ENOSPC. Its log and the FSDP run's smaller shard files fit;
# its larger shard files of the state do not.
FULL_DISK = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, resource.RLIM_INFINITY)); "
             "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def two_process_commands(cache_dir: Path, workdir: Path, data_dir: Path, *,
                         stop_after: int | None = None, extra_flags: tuple[str, ...] = (),
                         full_disk_on: int | None = None) -> list[tuple[list[str], dict[str, str]]]:
    port = free_port()
    commands = []
    for i in range(2):
        env = base_env(cache_dir)
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i))
        if stop_after is None:
            cmd = [sys.executable, "-m", "teco.train"]
        else:  # the same entry point and flags; the worker only adds the stop
            env["TECO_TEST_STOP_AFTER"] = str(stop_after)
            cmd = [sys.executable, str(WORKER)]
        if i == full_disk_on:
            cmd = [sys.executable, "-c", FULL_DISK] + cmd[1:]
        commands.append((cmd + train_flags(workdir, data_dir) + list(extra_flags), env))
    return commands


def run_two_processes(tmp: Path, name: str, workdir: Path, data_dir: Path, *,
                      cache_dir: Path, stop_after: int | None = None,
                      extra_flags: tuple[str, ...] = (), full_disk_on: int | None = None,
                      expected_rc: int | None = None) -> list[str]:
    commands = two_process_commands(cache_dir, workdir, data_dir, stop_after=stop_after,
                                    extra_flags=extra_flags, full_disk_on=full_disk_on)
    if expected_rc is None:
        expected_rc = EXIT_PREEMPTED if stop_after is not None else 0
    return launch(commands, [tmp / f"{name}.p{i}.log" for i in range(2)], expected_rc)


METRIC_LINE = re.compile(r"\] \[(\d+)\] (.*)$")


def logged_metrics(log: str) -> dict[int, dict[str, float]]:
    """{step: {'train/loss': ..., 'eval/lpips': ...}} from clu's logging writer lines."""
    out: dict[int, dict[str, float]] = {}
    for line in log.splitlines():
        m = METRIC_LINE.search(line)
        if m:
            for item in m.group(2).split(", "):
                key, _, value = item.partition("=")
                if not key.startswith("perf/"):  # timings differ from run to run
                    out.setdefault(int(m.group(1)), {})[key] = float(value)
    return out


def checkpoint_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def single_process_metrics(data_dir: Path) -> dict[int, dict[str, float]]:
    """The same config's first steps in this process (8 devices): the trainer's step function on
    the trainer's input pipeline, {step: {'train/loss': ...}} as the trainer logs them."""
    import jax

    from teco import data, sharding, train
    from teco.config import load_config
    from teco.tasks import get_task

    config = load_config(f"{REPO}/configs/memory_maze_vqgan.py:tiny",
                         {**OVERRIDES, "data.data_dir": str(data_dir)})
    mesh = sharding.make_mesh(config.mesh)
    assert jax.process_count() == 1 and mesh.size == 8
    task = get_task(config)
    state, _, shardings = train.create_train_state(task, config, mesh)
    consts = jax.device_put(task.constants(), sharding.replicated(mesh))
    batches = data.make_iterator(config, mesh, split=config.data.train_split, train=True)
    steps, out = {}, {}
    for step in range(TOTAL_STEPS):
        phase = task.phase(step)
        if phase not in steps:
            steps[phase] = train.make_train_step(task, mesh, shardings, phase,
                                                 on_nonfinite=config.on_nonfinite)
        state, metrics = steps[phase](state, next(batches), consts)
        out[step + 1] = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The stopped and resumed two-process runs, made once per test session: xdist workers
    share them through a lock in the session's directory (the tests only copy the workdir)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    tmp = shared / "multihost"
    data_dir = tmp / "data"   # built by the first run's process 0 while process 1 waits
    workdir = tmp / "two_processes"
    cache_dir = tmp / "jax_cache"  # every launch's, here and in the tests
    with open(shared / "multihost.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = tmp / "runs.json"
        if not record.exists():
            tmp.mkdir(exist_ok=True)
            run_two_processes(tmp, "stopped", workdir, data_dir, cache_dir=cache_dir,
                              stop_after=STOP_AFTER)
            steps_after_stop = checkpoint_steps(workdir)
            run_two_processes(tmp, "resumed", workdir, data_dir, cache_dir=cache_dir)
            record.write_text(json.dumps({"steps_after_stop": steps_after_stop}))
    logs = {name: [(tmp / f"{name}.p{i}.log").read_text(errors="replace") for i in range(2)]
            for name in ("stopped", "resumed")}
    return {**logs, **json.loads(record.read_text()), "workdir": workdir, "data_dir": data_dir,
            "cache_dir": cache_dir}


def test_two_processes_stop_resume_and_match_one_process(runs):
    for log in runs["stopped"] + runs["resumed"]:
        assert re.search(r"jax.distributed: process [01] of 2", log)
        assert "mesh {'data': 8," in log
    # Stopped after 2 batches: the checkpoint of step 2 is complete, nothing later exists.
    assert runs["steps_after_stop"] == [2]
    for log in runs["stopped"]:
        assert "resumed from" not in log
    # The same command again resumes both processes at step 2 and ends at the total.
    for log in runs["resumed"]:
        assert re.search(r"resumed\b.*\bat step 2\b", log)
        assert "eval at step 4" in log or "[4] eval/" in log
    assert checkpoint_steps(runs["workdir"]) == [2, TOTAL_STEPS]
    # Process 0 writes the data position of every process (each resumes from its own).
    meta = runs["workdir"] / "checkpoints" / str(TOTAL_STEPS) / "data" / "metadata"
    position = json.loads(meta.read_text())
    assert position["batches"] == TOTAL_STEPS and position["layout"] == [2, 4]
    assert len(position["processes"]) == 2

    # Steps 1-2 come from the stopped run, 3-4 (and eval) from the resumed one; both processes
    # log the same replicated metrics.
    two = [{**logged_metrics(a), **logged_metrics(b)}
           for a, b in zip(runs["stopped"], runs["resumed"])]
    assert two[0] == two[1]
    assert sorted(two[0]) == list(range(1, TOTAL_STEPS + 1))
    evals = {k: v for k, v in two[0][TOTAL_STEPS].items() if k.startswith("eval/")}
    assert "eval/lpips" in evals and all(np.isfinite(v) for v in evals.values())
    # Each process fed its own rows of every global batch: one 8-device process reading the
    # same global batches agrees on every loss term at every step (processes feeding each
    # other's rows, or the same rows, change the losses at step 1 already).
    one = single_process_metrics(runs["data_dir"])
    for step in one:
        train_two = {k: v for k, v in two[0][step].items() if k.startswith("train/")}
        assert set(train_two) == set(one[step]), step
        for key, want in one[step].items():
            np.testing.assert_allclose(train_two[key], want, rtol=1e-4, atol=1e-6,
                                       err_msg=f"step {step} {key}")
    assert one[TOTAL_STEPS]["train/loss"] < one[1]["train/loss"]  # it did train


def test_full_disk_on_one_process_stops_all(runs, tmp_path):
    """One host's disk fills while the processes write a checkpoint together: both stop at once
    (not after orbax's 20-minute barrier timeout: the launch's guard is 4 minutes) with exit 3,
    the full one naming its error, the other naming the process that failed and why; the earlier
    checkpoint is intact and the same command resumes from it."""
    from teco import checkpoint
    from teco.train import EXIT_CHECKPOINT_FAILED

    workdir = tmp_path / "run"
    shutil.copytree(runs["workdir"], workdir)
    shutil.rmtree(workdir / "checkpoints" / str(TOTAL_STEPS))
    # Parameters sharded over both processes (FSDP), so that process 1 writes shards of its own.
    fsdp = ("--config.mesh.data=1", "--config.mesh.fsdp=-1", "--allow_config_change")
    data_dir = runs["data_dir"]
    logs = run_two_processes(tmp_path, "full", workdir, data_dir, cache_dir=runs["cache_dir"],
                             extra_flags=fsdp, full_disk_on=1,
                             expected_rc=EXIT_CHECKPOINT_FAILED)
    errors = [[line for line in log.splitlines() if "could not write the checkpoint" in line]
              for log in logs]
    assert all(len(e) == 1 for e in errors), logs
    where = f"could not write the checkpoint of step {TOTAL_STEPS} to {workdir}/checkpoints: "
    intact = "the checkpoint of step 2 is intact: free space (or fix the error) and rerun"
    assert where + "File too large (errno 27); " + intact in errors[1][0]
    assert (where + "process 1 could not write its part: File too large (errno 27); " + intact
            in errors[0][0])
    assert all("Traceback" not in log for log in logs)
    assert checkpoint.finalized_steps(workdir) == [2]
    # The same command, the disk freed: resumes at step 2 on both processes and finishes.
    for log in run_two_processes(tmp_path, "freed", workdir, data_dir,
                                 cache_dir=runs["cache_dir"], extra_flags=fsdp):
        assert re.search(r"resumed\b.*\bat step 2\b", log)
    assert checkpoint.finalized_steps(workdir) == [2, TOTAL_STEPS]


KILL_AT_STEP = 5   # process 1 is killed once it has logged this step (checkpoints every 2)
HEARTBEAT_SECS = 10


def test_killed_process_stops_the_other(runs, tmp_path):
    """A host lost without notice (SIGKILL) while the processes train: the other stops soon
    after the heartbeat timeout instead of waiting in a collective forever, either with the
    trainer's message (exit 5, when a collective sees the closed connection first) or with JAX's
    heartbeat abort (SIGABRT); the complete checkpoints are intact."""
    from teco import checkpoint
    from teco.train import EXIT_PEER_FAILED

    workdir = tmp_path / "run"
    shutil.copytree(runs["workdir"], workdir)
    shutil.rmtree(workdir / "checkpoints" / str(TOTAL_STEPS))
    long_run = ("--config.total_steps=1000", f"--heartbeat_timeout_secs={HEARTBEAT_SECS}")
    logs = [tmp_path / f"killed.p{i}.log" for i in range(2)]
    commands = two_process_commands(runs["cache_dir"], workdir, runs["data_dir"],
                                    extra_flags=long_run)
    with started(commands, logs) as procs:
        deadline = time.monotonic() + TIMEOUT_SECS
        while f"step {KILL_AT_STEP}/1000" not in logs[1].read_text(errors="replace"):
            assert all(p.poll() is None for p in procs), "a process ended before the kill"
            assert time.monotonic() < deadline, "no progress before the kill"
            time.sleep(0.05)
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        try:
            procs[0].wait(timeout=HEARTBEAT_SECS + 60)
        except subprocess.TimeoutExpired:
            pytest.fail("process 0 still runs a minute past the heartbeat timeout after process "
                        "1 was killed\n" + logs[0].read_text(errors="replace")[-3000:])
    log = logs[0].read_text(errors="replace")
    if procs[0].returncode == EXIT_PEER_FAILED:
        assert "a computation shared with the other processes failed" in log
        assert "rerun the same command on every host to resume from it" in log
    else:
        assert procs[0].returncode == -signal.SIGABRT, (procs[0].returncode, log[-3000:])
        assert "stopped sending heartbeats" in log or "heartbeat timeout" in log, log[-3000:]
    # Only complete checkpoints count (a half-written one is never restored: reliability_test);
    # the fixture shows the same command resuming from one.
    steps = checkpoint.finalized_steps(workdir)
    assert steps[0] == 2 and steps[-1] <= KILL_AT_STEP + 1, steps


def test_shared_computation_failure_names_the_checkpoint_and_exits_at_once(tmp_path):
    """The trainer's exit for a failed collective in a multi-process run: one line naming the
    newest complete checkpoint (a half-written one does not count) and exit 5, at once."""
    from teco.train import EXIT_PEER_FAILED

    for name in ("2", "4", "6.orbax-checkpoint-tmp-1764800000"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    error = "INTERNAL: Gloo all-reduce failed: Connection closed by peer [127.0.0.1]:4242\nmore"
    code = ("import sys; from teco import train; "
            "train.exit_after_shared_computation_failed(RuntimeError(sys.argv[1]), sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", code, error, str(tmp_path)], cwd=REPO,
                          env=base_env(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == EXIT_PEER_FAILED, done.stderr
    lines = [line for line in done.stderr.splitlines() if "shared with the other" in line]
    assert len(lines) == 1, done.stderr
    assert ("a computation shared with the other processes failed (INTERNAL: Gloo all-reduce "
            "failed: Connection closed by peer [127.0.0.1]:4242); if another host stopped "
            "(killed, preempted or crashed: see its log), the newest complete checkpoint is "
            f"step 4 in {tmp_path}/checkpoints: rerun the same command on every host to resume "
            "from it") in lines[0]
    assert "Traceback" not in done.stderr


def test_data_position_carries_over_to_another_process_layout(tmp_path):
    """A data position written by 2 processes x 4 rows, resumed by 1 process x 8 rows, continues
    with the next global batch (the per-process positions do not apply)."""
    import jax

    from data_test import config_for, write_dmlab_release
    from teco import data, sharding

    write_dmlab_release(tmp_path, n_train=5, n_test=1, length=12)
    cfg = config_for("authors", tmp_path, seq_len=4, batch_size=8)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "model": 1})
    assert jax.process_count() == 1 and sharding.process_batch_rows(mesh, 8) == list(range(8))
    reference = data.make_iterator(cfg, mesh, split="train", train=True)
    want = [np.asarray(next(reference)["video"]) for _ in range(3)]
    it = data.make_iterator(cfg, mesh, split="train", train=True)
    next(it), next(it)
    state = it.get_state()
    assert state["batches"] == 2 and state["layout"] == [1, 8]
    written_by_two = dict(state, layout=[2, 4],
                          processes=[{"grain": {"next_index": 8}, "skipped": 0}] * 2)
    resumed = data.make_iterator(cfg, mesh, split="train", train=True)
    resumed.set_state(written_by_two)
    np.testing.assert_array_equal(np.asarray(next(resumed)["video"]), want[2])


def test_process_count_and_id_from_the_environment(monkeypatch):
    """Several processes on one machine have no cluster launcher for JAX to detect: the rank
    and process count come from JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    import jax

    from teco import train

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    for key in train._MULTIHOST_ENV + ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(key, raising=False)
    assert train.maybe_initialize_distributed("on")  # the rank and count from a launcher
    assert calls == [{"heartbeat_timeout_seconds": 100}]
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert train.maybe_initialize_distributed("auto")
    assert train.maybe_initialize_distributed("auto", heartbeat_timeout_secs=20)
    assert calls[-1] == {"num_processes": 2, "process_id": 1, "heartbeat_timeout_seconds": 20}
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        train.maybe_initialize_distributed("auto")
