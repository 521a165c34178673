"""The whole pipeline on the tiny configs: data -> VQ-GAN -> codes -> TECO -> samples -> eval."""
import json

import numpy as np

from teco import pipeline


def test_tiny_pipeline_end_to_end(tmp_path):
    result = pipeline.run(tmp_path, "tiny", None)
    assert result["num_videos"] == 2 and result["predicted_frames"] == 8
    for key in ("psnr", "ssim"):
        assert np.isfinite(result[key])
    assert np.isfinite(result["fvd"]["pooled"]) and result["fvd"]["authors"]["chunk"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["checkpoint_step"] == 6
    curves = json.loads((tmp_path / "eval" / "curves.json").read_text())
    assert len(curves["psnr"]) == 8
    assert (tmp_path / "eval" / "curves.png").stat().st_size > 0
    with np.load(tmp_path / "samples" / "samples.npz") as f:
        assert f["video"].shape == (2, 10, 16, 16, 3) and f["video"].dtype == np.uint8
        assert int(f["n_context"]) == 2
    assert (tmp_path / "samples" / "videos" / "grid.gif").stat().st_size > 0
    assert (tmp_path / "filmstrip.png").stat().st_size > 0
    for stage in ("vqgan", "teco"):
        assert list((tmp_path / stage).glob("events.out.tfevents*")), stage
    # A second run finds every training stage finished and the codes up to date.
    assert pipeline.finished(tmp_path / "vqgan", 6) and pipeline.finished(tmp_path / "teco", 6)
    stamp = json.loads((tmp_path / "codes" / "stamp.json").read_text())
    assert pipeline._stamped(tmp_path / "codes" / "stamp.json", **stamp)
