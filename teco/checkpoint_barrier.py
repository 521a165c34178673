"""Cross-process barriers for orbax's checkpoint writes that give up when a process's part fails.

In a multi-process run every process writes its own shards of a checkpoint, then orbax's
background threads meet at barriers (every write done; the commit done; no save in progress).
A process whose write fails (its disk full, its quota, an I/O error) never reaches the first of
them, and with orbax's own barriers (JAX's coordination service) every other process waits there
for the whole timeout (20 minutes by default), after which each reports a timeout, not the cause.

These barriers live in JAX's distributed key-value store instead. A process that enters one
while its own write's exception is propagating (orbax's finalize thread meets its last barrier
in a `finally`) publishes the failure and does not wait; a process waiting at any barrier polls
for published failures and raises `PeerWriteError` naming the process and its reason. All
processes stop within a poll or two, and each says where the write failed.
"""
from __future__ import annotations

import collections
import sys
import threading
import time

FAILED_DIR = "teco/checkpoint_write_failed/"
ARRIVED_DIR = "teco/checkpoint_barrier/"


class PeerWriteError(RuntimeError):
    """Another process could not write its part of a checkpoint."""

    def __init__(self, failures: dict[int, str]):
        self.failures = dict(sorted(failures.items()))
        parts = "; ".join(f"process {p} could not write its part: {reason}"
                          for p, reason in self.failures.items())
        super().__init__(parts)


class AbortableBarrier:
    """An orbax `BarrierSyncFn` (`barrier(key=..., timeout_ms=...)`) over a JAX distributed
    client's key-value store. Orbax reuses a key for every save (its barriers are reusable), so
    each key's calls are counted: every process makes the same calls in the same order."""

    def __init__(self, client, process_index: int, process_count: int, *,
                 first_poll_secs: float = 0.02, max_poll_secs: float = 1.0):
        self.client, self.index, self.count = client, int(process_index), int(process_count)
        self.first_poll_secs, self.max_poll_secs = first_poll_secs, max_poll_secs
        self._calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def publish_failure(self, error: BaseException) -> None:
        from teco.checkpoint import failure_reason  # worded as the failing process's message

        self.client.key_value_set(f"{FAILED_DIR}{self.index}", failure_reason(error),
                                  allow_overwrite=True)

    def _by_process(self, directory: str) -> dict[int, str]:
        """{process: value} of the keys `<directory><process>`."""
        return {int(key.rsplit("/", 1)[-1]): value
                for key, value in self.client.key_value_dir_get(directory)}

    def failures(self) -> dict[int, str]:
        return self._by_process(FAILED_DIR)

    def __call__(self, *, key: str, timeout_ms: int) -> None:
        in_flight = sys.exc_info()[1]
        if in_flight is not None:
            # Called from a `finally` while this process's own save fails: tell the others and
            # let the failure go on instead of holding it at a barrier nobody else will pass.
            if not isinstance(in_flight, PeerWriteError):
                self.publish_failure(in_flight)
            return
        with self._lock:
            n = self._calls[key]
            self._calls[key] += 1
        prefix = f"{ARRIVED_DIR}{key}#{n}/"
        self.client.key_value_set(f"{prefix}{self.index}", "")
        deadline = time.monotonic() + timeout_ms / 1000
        poll = self.first_poll_secs
        while True:
            arrived = set(self._by_process(prefix))
            if len(arrived) >= self.count:
                if n:  # everyone has left the previous use of this key: its marker can go
                    self.client.key_value_delete(f"{ARRIVED_DIR}{key}#{n - 1}/{self.index}")
                return
            failed = self.failures()
            if failed:
                raise PeerWriteError(failed)
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.count)) - arrived)
                raise TimeoutError(f"processes {missing} did not reach the checkpoint barrier "
                                   f"'{key}' within {timeout_ms / 1000:.0f} s (a host stalled "
                                   "or died; see its log)")
            time.sleep(poll)
            poll = min(poll * 1.5, self.max_poll_secs)


def for_this_run() -> AbortableBarrier | None:
    """The barrier for a multi-process run's checkpoint manager; None in a one-process run."""
    import jax

    if jax.process_count() == 1:
        return None
    from jax._src import distributed  # the client orbax's own barriers use

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("a multi-process run without jax.distributed initialised")
    return AbortableBarrier(client, jax.process_index(), jax.process_count())
