"""Smoke test of benchmarks/rollout.py: its main on the tiny config for one new frame (no
timings asserted; no FVD, whose I3D alone compiles for longer than this test should take)."""
import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "rollout.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rollout_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_reports_both_paths(bench):
    # 2 context frames + 1 new frame of the tiny config (seq_len 8: no sliding window).
    report = bench.main(["--configs", "tiny", "--frames", "3", "--context", "2", "--init", "zeros",
                         "--in_process"])
    r = report["results"]["tiny"]
    assert r["batch_size"] == 2 and r["generated_frames"] == 1 and r["devices_used"] == 1
    for path in ("cached", "reference"):
        assert {"compile_s", "s_per_frame", "frames_timed", "method", "s_per_video_frame",
                "frames_per_s"} <= set(r[path])
        assert r[path]["frames_timed"] == 1
    ref = r["reference"]
    assert (ref["n_frames_before_slide"], ref["n_frames_sliding"]) == (1, 0)
    assert ref["frame_fn_compiles"] == 1          # the per-frame function compiles once
    assert r["ratio_reference_over_cached"] > 0 and r["peak_rss_mb"] > 0
    assert "random parameters" in report["note"] and "fvd" not in report


def test_bad_arguments(bench):
    with pytest.raises(ValueError, match="--reference_frames: unknown config 'nope'"):
        bench.main(["--configs", "tiny", "--reference_frames", "nope=3"])
    with pytest.raises(ValueError, match="--batch: expected NAME=B"):
        bench.main(["--configs", "tiny", "--batch", "tiny=0"])
    with pytest.raises(ValueError, match="need frames >= 9"):
        bench.main(["--configs", "tiny", "--fvd", "--fvd_frames", "4", "--fvd_videos", "4",
                   "--fvd_batch", "2"])
    assert bench._limits(["5", "tiny=all"], ["tiny", "dmlab"]) == {"tiny": None, "dmlab": 5}
