"""Stopping a training run cleanly: SIGTERM / SIGINT become one agreed step on every process,
after which the trainer writes a checkpoint and raises `Interrupted`."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class Interrupted(RuntimeError):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint of `step`."""

    def __init__(self, signal_name: str, step: int, path: str):
        super().__init__(f"{signal_name} at step {step}: checkpoint written to {path}, exiting "
                         "(rerun the same command to resume)")
        self.signal_name, self.step, self.path = signal_name, step, path


class StopRequests:
    """SIGTERM and SIGINT -> stop after the step in flight, the same step on every process.

    One process: a handler sets a flag read after every step (no collective). Several processes
    with JAX's preemption service (on by default after jax.distributed.initialize): the service
    owns SIGTERM (a Python handler would replace its own), tells every process and picks one
    step where `reached_preemption_sync_point` (a local check, called every step with the steps
    taken so far, so a notice before the first step stops after it) is true everywhere. Several
    processes without it: the flag is combined at log steps, in the all-gather that agrees on
    the checkpoint clock (a stop may take up to log_interval steps). Ctrl-C is handled in
    one-process runs only, and not when SIGINT is ignored (a shell starts background jobs so:
    they keep ignoring it). Handlers live for the loop (main thread only); the first signal
    restores the previous ones, so a second acts at once (a second Ctrl-C: KeyboardInterrupt).
    """

    def __init__(self):
        self.received, self.previous = None, {}
        self.multi = jax.process_count() > 1
        self.service = self.multi and bool(jax.config.jax_enable_preemption_service)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            signums = [] if self.service else [signal.SIGTERM]
            ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            signums += [] if self.multi or ignored else [signal.SIGINT]
            for signum in signums:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.received is None:
            self.received = signal.Signals(signum).name
        self._restore()

    def _restore(self):
        for signum, handler in self.previous.items():
            # None: a handler not installed from Python; the default is the closest we can give.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def __exit__(self, *exc):
        self._restore()

    def local(self, steps_taken: int) -> bool:
        """The check made after every step (never a collective)."""
        if not self.multi:
            return self.received is not None
        if self.service:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(steps_taken):
                self.received = self.received or "SIGTERM"
                return True
        return False

    def shared_flag(self) -> bool:
        """This process's vote at log steps (multi-process runs without the service)."""
        return self.multi and not self.service and self.received is not None


def agree(*flags: bool) -> tuple[bool, ...]:
    """Every process gets True where any process said True (one small all-gather)."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    votes = np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int32)))
    return tuple(bool(v) for v in votes.reshape(-1, len(flags)).max(axis=0))
