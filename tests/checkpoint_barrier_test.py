"""The checkpoint barrier's logic, with threads as processes over an in-memory key-value store
(the real two-process run is tests/multihost_test.py::test_full_disk_on_one_process_stops_all)."""
import threading

import pytest

from teco.checkpoint_barrier import AbortableBarrier, PeerWriteError


class FakeClient:
    """The part of JAX's DistributedRuntimeClient the barrier uses."""

    def __init__(self):
        self.store, self.lock = {}, threading.Lock()

    def key_value_set(self, key, value, allow_overwrite=False):
        with self.lock:
            if key in self.store and not allow_overwrite:
                raise RuntimeError(f"ALREADY_EXISTS: {key}")
            self.store[key] = value

    def key_value_dir_get(self, prefix):
        with self.lock:
            return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]

    def key_value_delete(self, key):
        with self.lock:
            self.store.pop(key, None)


def run_processes(n, body):
    """body(barrier, index) in n threads; returns {index: exception or None}."""
    client, outcome = FakeClient(), {}

    def run(i):
        barrier = AbortableBarrier(client, i, n, first_poll_secs=0.001, max_poll_secs=0.01)
        try:
            body(barrier, i)
            outcome[i] = None
        except Exception as e:  # noqa: BLE001 - the outcome is what the test checks
            outcome[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a barrier hung"
    return outcome, client


def test_all_pass_a_reused_key_and_leave_no_stale_markers():
    def body(barrier, i):
        for _ in range(3):  # orbax reuses its keys at every save
            barrier(key="async_write_complete", timeout_ms=10_000)

    outcome, client = run_processes(3, body)
    assert outcome == {0: None, 1: None, 2: None}
    # Only the last use's markers remain (each process deletes its previous one).
    assert sorted(client.store) == [f"teco/checkpoint_barrier/async_write_complete#2/{i}"
                                    for i in range(3)]


def test_a_failed_write_stops_every_waiting_process_with_its_reason():
    def body(barrier, i):
        if i == 1:
            try:
                raise OSError(27, "File too large")
            finally:  # as orbax's finalize thread: the barrier in a finally, the error in flight
                barrier(key="save_in_progress", timeout_ms=600_000)
        barrier(key="async_write_complete", timeout_ms=600_000)

    outcome, _ = run_processes(3, body)
    assert isinstance(outcome[1], OSError) and outcome[1].errno == 27  # its own error goes on
    for i in (0, 2):
        assert isinstance(outcome[i], PeerWriteError)
        assert str(outcome[i]) == "process 1 could not write its part: File too large (errno 27)"
        assert outcome[i].failures == {1: "File too large (errno 27)"}


def test_a_process_stopped_by_another_does_not_report_itself_failed():
    client = FakeClient()
    barrier = AbortableBarrier(client, 0, 2)
    with pytest.raises(PeerWriteError):
        try:
            raise PeerWriteError({1: "Disk quota exceeded (errno 122)"})
        finally:
            barrier(key="save_in_progress", timeout_ms=1000)
    assert barrier.failures() == {}


def test_timeout_names_the_missing_processes():
    client = FakeClient()
    barrier = AbortableBarrier(client, 0, 3, first_poll_secs=0.001, max_poll_secs=0.01)
    client.key_value_set("teco/checkpoint_barrier/commit#0/2", "")
    with pytest.raises(TimeoutError, match=r"processes \[1\] did not reach the checkpoint "
                                           r"barrier 'commit' within 0 s"):
        barrier(key="commit", timeout_ms=50)
