"""teco.run_marker: a workdir trained by a live process is refused; a marker left by a process
that died without a word is named before the run resumes; every ending Python sees removes it."""
import json
import os
import socket
import subprocess
import sys

import pytest

from teco import run_marker
from teco.run_marker import FILE, RunInProgress


def marker(workdir, **fields):
    record = {"host": socket.gethostname(), "pid": 1, "start_ticks": 0, "started": "then",
              "command": "python -m teco.train ...", **fields}
    (workdir / FILE).write_text(json.dumps(record))


def test_no_marker_no_note(tmp_path):
    assert run_marker.check(tmp_path) is None


def test_a_live_process_on_this_host_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        marker(tmp_path, pid=sleeper.pid, start_ticks=run_marker.process_start_ticks(sleeper.pid))
        with pytest.raises(RunInProgress, match=rf"is being trained by process {sleeper.pid} on "
                                                rf".*kill -TERM {sleeper.pid}.*another --workdir"):
            run_marker.check(tmp_path)
        # The same pid with another start time is another process: the marker's one is gone.
        marker(tmp_path, pid=sleeper.pid, start_ticks=1)
        assert "ended without a word" in run_marker.check(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_process_is_named_and_the_marker_taken_over(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    marker(tmp_path, pid=int(done.stdout), start_ticks=12345, started="2026-12-05 03:00:00 UTC")
    notes = []
    with run_marker.claimed(tmp_path, log=notes.append):
        held = json.loads((tmp_path / FILE).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["start_ticks"] == run_marker.process_start_ticks(os.getpid())
    assert not (tmp_path / FILE).exists()
    assert len(notes) == 1 and "ended without a word: killed by SIGKILL" in notes[0]
    assert "2026-12-05 03:00:00 UTC" in notes[0] and "dmesg" in notes[0]


def test_other_hosts_and_unreadable_markers_are_said_not_refused(tmp_path):
    marker(tmp_path, host="elsewhere-7")
    assert "another host cannot be checked from here" in run_marker.check(tmp_path)
    marker(tmp_path, start_ticks=None)   # written where /proc was missing
    assert "cannot be told apart" in run_marker.check(tmp_path)
    (tmp_path / FILE).write_text("{not json")
    assert "unreadable" in run_marker.check(tmp_path)


def test_an_error_inside_the_run_removes_the_marker(tmp_path):
    with pytest.raises(FloatingPointError):
        with run_marker.claimed(tmp_path, log=print):
            assert (tmp_path / FILE).exists()
            raise FloatingPointError("loss nan")
    assert not (tmp_path / FILE).exists()
