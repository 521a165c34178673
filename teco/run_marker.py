"""One training run per workdir, and word of the run before it: `<workdir>/running.json`.

Process 0 writes the marker when training starts (host, process id and the kernel's start time of
that process, the command) and removes it however the run ends that Python sees: finished,
SIGTERM / Ctrl-C, an error. Only an end Python cannot see leaves it behind: SIGKILL (the kernel's
out-of-memory killer prints nothing to the run's terminal), a crash of the interpreter, a lost
machine. The next run on the workdir then
- refuses to start while that process still runs on this host: two trainers would write the
  same checkpoints, and the second one's start would delete the first one's unfinished ones;
- otherwise says that the previous run ended without a word, and where to look, before it resumes.
A marker from another host cannot be checked from here: the run says so and goes on.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import jax

from teco.checkpoint import replace_text
from teco.stopping import agree

FILE = "running.json"


class RunInProgress(ValueError):
    """Another process is training into the same workdir."""


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None if
    no such process: with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_ticks": process_start_ticks(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}


def check(workdir: str | os.PathLike) -> str | None:
    """Raises RunInProgress if the marker names a live process on this host; else a note on the
    previous run that left it (None if there is none)."""
    path = Path(workdir) / FILE
    if not path.exists():
        return None
    try:
        prev = json.loads(path.read_text())
        host, pid, ticks = str(prev["host"]), int(prev["pid"]), prev["start_ticks"]
    except (OSError, ValueError, KeyError, TypeError):
        return (f"{path} is unreadable: a previous run in {path.parent} ended without removing "
                "it; resuming from the newest complete checkpoint")
    who = f"process {pid} on {host}, started {prev.get('started', '?')}"
    elsewhere = host != socket.gethostname()
    if elsewhere or ticks is None or process_start_ticks(os.getpid()) is None:
        where = ("another host cannot be checked from here" if elsewhere else
                 "processes cannot be told apart without Linux's /proc")
        return (f"{path}: a previous run ({who}) has not ended cleanly, or still runs; {where}. "
                "If it still runs, stop it: two runs would write the same checkpoints")
    if process_start_ticks(pid) == ticks:
        raise RunInProgress(
            f"{path.parent} is being trained by {who} ({prev.get('command', '')}): stop it first "
            f"(kill -TERM {pid} writes a checkpoint and exits) or train into another --workdir")
    return (f"the previous run in {path.parent} ({who}) ended without a word: killed by SIGKILL "
            "(the kernel's out-of-memory killer among others: see `dmesg` or "
            "`journalctl -k`), a crash, or the machine went down. Resuming from the newest "
            "complete checkpoint")


@contextlib.contextmanager
def claimed(workdir: str | os.PathLike, log=print):
    """Holds the marker for the run inside the block. Every process takes part: process 0
    checks and writes, and a refusal stops every process (one agreed flag)."""
    path = Path(workdir) / FILE
    problem = None
    if jax.process_index() == 0:
        try:
            note = check(workdir)
        except RunInProgress as e:
            problem = e
        else:
            if note:
                log(note)
            replace_text(path, json.dumps(_record(), indent=1))
    (refused,) = agree(problem is not None)
    if refused:
        raise problem or RunInProgress(f"process 0 found {workdir} being trained by another run "
                                       "(see its log)")
    try:
        yield
    finally:
        if jax.process_index() == 0:
            path.unlink(missing_ok=True)
