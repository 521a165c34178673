"""Pictures a person looks at: the rollout filmstrip and its input checks."""
import numpy as np
import pytest

from teco import videos


def test_filmstrip_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (2, 12, 8, 8, 3), dtype=np.uint8)
    path = videos.filmstrip(tmp_path / "strip.png", real, real[:, ::-1].copy(), 4, n_columns=5)
    import imageio.v3 as iio

    image = iio.imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > image.shape[0] / 2


@pytest.mark.parametrize("n_context", [0, 12])
def test_filmstrip_rejects_a_context_outside_the_video(tmp_path, n_context):
    real = np.zeros((1, 12, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="n_context"):
        videos.filmstrip(tmp_path / "x.png", real, real, n_context)


def test_filmstrip_rejects_mismatched_videos(tmp_path):
    with pytest.raises(ValueError, match="must be equal"):
        videos.filmstrip(tmp_path / "x.png", np.zeros((1, 4, 8, 8, 3), np.uint8),
                         np.zeros((1, 5, 8, 8, 3), np.uint8), 2)


def test_caption_names_the_columns_and_marks_context_and_imagined_frames():
    """The header above a real | generated grid: column names in black, then the frame's
    number in green while it is context and in red once the model imagines it."""
    real = np.zeros((2, 6, 32, 32, 3), np.uint8)
    grid = videos.upscale(videos.side_by_side(real, real, 3), 2)
    out = videos.caption(grid, 3)
    header = out.shape[1] - grid.shape[1]
    assert out.shape[0] == grid.shape[0] and out.shape[2:] == grid.shape[2:] and header > 0
    np.testing.assert_array_equal(out[:, header:], grid)  # the frames below are untouched
    names, status = out[:, :header // 2], out[:, header // 2:header]

    def inked(rows, colour):  # pixels close to a colour, against the white background
        return (np.abs(rows.astype(int) - colour).sum(-1) < 120).sum(axis=(1, 2))

    assert (inked(names, (0, 0, 0)) > 0).all()
    np.testing.assert_array_equal(inked(names, (0, 0, 0)), inked(names, (0, 0, 0))[0])
    green, red = inked(status, videos.GREEN), inked(status, videos.RED)
    assert (green[:3] > 0).all() and (red[:3] == 0).all()
    assert (red[3:] > 0).all() and (green[3:] == 0).all()
    assert not np.array_equal(status[3], status[4])  # the frame number moves on


class MeanColourFeatures:
    """Stands in for I3D: per-video features from pixel statistics (no weights needed)."""

    def features(self, videos):
        v = np.asarray(videos, np.float64)
        return np.concatenate([v.mean(axis=(1, 2, 3)), v.std(axis=(1, 2, 3))], axis=1)


def test_fvd_over_time_grows_where_the_videos_part(tmp_path):
    from teco.eval import fvd_over_time

    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (6, 40, 4, 4, 3), dtype=np.uint8)
    fake = real.copy()
    fake[:, 20:] = rng.integers(0, 255, (6, 20, 4, 4, 3), dtype=np.uint8) // 4
    w = fvd_over_time(MeanColourFeatures(), real, fake, 10)
    assert w["start"] == [0, 10, 20, 30] and w["window"] == 10
    assert w["fvd"][0] == pytest.approx(0, abs=1e-4) and w["fvd"][1] == pytest.approx(0, abs=1e-4)
    assert min(w["fvd"][2:]) > 100
    assert fvd_over_time(MeanColourFeatures(), real, fake, 21) is None   # fewer than 2 windows
    # Windows from the context's end, and one just before it (the reconstructions' floor).
    after = fvd_over_time(MeanColourFeatures(), real, fake, 10, context=20)
    assert after["start"] == [10, 20, 30] and after["fvd"][0] < 1e-4 and min(after["fvd"][1:]) > 100
    assert fvd_over_time(MeanColourFeatures(), real, fake, 10, context=23)["start"] == [13, 23]
    assert fvd_over_time(MeanColourFeatures(), real, fake, 10, context=5)["start"] == [5, 15, 25]
    assert fvd_over_time(MeanColourFeatures(), real, fake, 10, context=31) is None
    assert fvd_over_time(MeanColourFeatures(), real, fake, 4) is None    # shorter than I3D needs
    path = videos.plot_fvd(tmp_path / "fvd.png", w["start"], w["fvd"], 10, 20)
    assert path.stat().st_size > 0


def test_mp4_writing_and_reading_under_jax_raise_no_fork_warning(tmp_path):
    """ffmpeg is started with fork + exec after JAX has threads; that warning is noise here."""
    import warnings

    import jax.numpy as jnp

    from teco.videos import write_video

    jnp.zeros(4).block_until_ready()  # JAX's thread pools exist
    frames = np.zeros((3, 15, 17, 3), np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_video(tmp_path / "v.mp4", frames)
    assert path.stat().st_size > 0
    assert not [w for w in caught if "fork" in str(w.message)]
    from teco.video_io import load_video

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = load_video(path, has_actions=False)["video"]
    assert back.shape[0] == 3
    assert not [w for w in caught if "fork" in str(w.message)]
