"""Place memory: revisits are found from agent poses and scored against the other frames."""
import json

import numpy as np
import pytest

from teco.metrics.revisit import (RecallLook, find_revisits, match_pairs, mean_interval,
                                  memory_effect, recall_picks, revisit_summary)

EAST, WEST, NORTH = (1.0, 0.0), (-1.0, 0.0), (0.0, 1.0)


def walk(*legs):
    """Poses [1, T, 2] from legs of (start xy, end xy, heading, frames)."""
    pos, heading = [], []
    for start, end, d, n in legs:
        pos += list(np.linspace(start, end, n))
        heading += [d] * n
    return np.asarray(pos, np.float32)[None], np.asarray(heading, np.float32)[None]


def test_coming_back_after_leaving_is_a_revisit_of_the_nearest_context_frame():
    # Context: 10 frames walking east along y=0.5. Then north up a corridor, back south
    # (turned), and east again through the first cells.
    pos, heading = walk(((0.5, 0.5), (5.0, 0.5), EAST, 10),
                        ((5.0, 1.0), (5.0, 4.0), NORTH, 6),
                        ((5.0, 4.0), (0.5, 4.0), WEST, 6),
                        ((0.5, 0.6), (2.3, 0.6), EAST, 4))
    is_rev, source = find_revisits(pos, heading, n_context=10)
    assert is_rev.shape == source.shape == (1, 16)
    # Only the last leg comes back; each of its frames matches the nearest context frame.
    assert np.flatnonzero(is_rev[0]).tolist() == [12, 13, 14, 15]
    ctx = pos[0, :10]
    for p in range(12, 16):
        expected = np.argmin(np.linalg.norm(ctx - pos[0, 10 + p], axis=-1))
        assert source[0, p] == expected
    assert (source[0, ~is_rev[0]] == -1).all()


def test_frames_that_never_left_the_last_context_pose_are_not_revisits():
    # Standing still, then turning a little: the view never left, nothing is remembered.
    pos, heading = walk(((1.5, 1.5), (1.5, 1.5), EAST, 8), ((1.5, 1.5), (1.6, 1.5), EAST, 8))
    is_rev, _ = find_revisits(pos, heading, n_context=8)
    assert not is_rev.any()


def test_turning_around_and_back_counts_as_leaving():
    pos, heading = walk(((1.5, 1.5), (1.5, 1.5), EAST, 4), ((1.5, 1.5), (1.5, 1.5), WEST, 3),
                        ((1.5, 1.5), (1.5, 1.5), EAST, 2))
    is_rev, source = find_revisits(pos, heading, n_context=4)
    assert is_rev[0].tolist() == [False, False, False, True, True]
    assert (source[0, 3:] == 0).all()  # all four context frames qualify; the first is nearest


def test_facing_the_other_way_at_the_same_place_is_not_a_revisit():
    pos, heading = walk(((0.5, 0.5), (3.0, 0.5), EAST, 6), ((3.0, 3.0), (3.0, 3.0), NORTH, 2),
                        ((3.0, 0.5), (0.5, 0.5), WEST, 6))
    assert not find_revisits(pos, heading, n_context=6)[0].any()


def test_summary_compares_revisits_with_other_frames_at_the_same_horizon():
    rev = np.array([[False, True, False, True],
                    [False, False, False, False]])
    # Frames get worse with the horizon; revisits are 2 dB better than the rest at their
    # horizon, yet their plain mean is below the others' (they come late).
    psnr = np.array([[20.0, 20.0, 16.0, 16.0],
                     [20.0, 18.0, 16.0, 14.0]])
    lpips = np.array([[0.1, 0.2, 0.3, 0.3],
                      [0.1, 0.3, 0.3, 0.5]])
    out = revisit_summary({"psnr": psnr, "lpips": lpips}, rev)
    assert out["revisit_frames"] == 2 and out["videos_with_revisits"] == 1
    assert out["predicted_frames"] == 8
    assert out["psnr_revisit"] == pytest.approx(18.0)
    assert out["psnr_other"] == pytest.approx((20 + 16 + 20 + 18 + 16 + 14) / 6)
    assert out["psnr_gain"] == pytest.approx(2.0)
    assert out["lpips_gain"] == pytest.approx(0.15)  # lower LPIPS on revisits is a positive gain
    json.dumps(out)


def test_summary_without_revisits_has_no_gain():
    out = revisit_summary({"psnr": np.full((2, 3), 20.0)}, np.zeros((2, 3), bool))
    assert out["revisit_frames"] == 0 and out["psnr_revisit"] is None
    assert out["psnr_gain"] is None and out["psnr_other"] == 20.0


def test_match_pairs_picks_the_seen_real_and_generated_frames():
    real = np.arange(2 * 6).reshape(2, 6, 1, 1, 1).astype(np.uint8) * np.ones((1, 1, 2, 2, 3),
                                                                              np.uint8)
    fake = 100 + real
    source = np.array([[-1, 1, -1], [0, -1, -1]])
    seen, r, f, where = match_pairs(real, fake, source, n_context=3)
    assert where.tolist() == [[0, 1, 4], [1, 0, 3]]
    assert seen[:, 0, 0, 0].tolist() == [1, 6]
    assert r[:, 0, 0, 0].tolist() == [4, 9] and f[:, 0, 0, 0].tolist() == [104, 109]


@pytest.mark.parametrize("pos_shape, dir_shape, n_context, message", [
    ((1, 5, 3), (1, 5, 3), 2, r"\[B, T, 2\]"),
    ((1, 5, 2), (1, 4, 2), 2, r"\[B, T, 2\]"),
    ((1, 5, 2), (1, 5, 2), 5, "n_context=5"),
])
def test_bad_poses_raise(pos_shape, dir_shape, n_context, message):
    with pytest.raises(ValueError, match=message):
        find_revisits(np.zeros(pos_shape), np.ones(dir_shape), n_context)


def test_eval_place_memory_writes_scores_and_picture(tmp_path):
    from teco.eval import PlaceMemory

    away = walk(((0.5, 0.5), (5.0, 0.5), EAST, 10), ((5.0, 1.0), (5.0, 4.0), NORTH, 6),
                ((5.0, 4.0), (0.5, 4.0), WEST, 6), ((0.5, 0.6), (2.3, 0.6), EAST, 4))
    still = walk(((1.5, 1.5), (1.5, 1.5), EAST, 26))
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (2, 26, 16, 16, 3), dtype=np.uint8)
    # The "model" makes up every frame but the revisits, where it shows what the context showed
    # (slightly off: PSNR stays finite).
    fake = rng.integers(0, 256, real.shape, dtype=np.uint8)
    is_rev, source = find_revisits(*away, 10)
    for p in np.flatnonzero(is_rev[0]):
        real[0, 10 + p] = real[0, source[0, p]]
        fake[0, 10 + p] = real[0, source[0, p]] ^ 1
    memory = PlaceMemory(n_context=10)
    memory.add(real[:1], fake[:1], away, {})
    memory.add(real[1:], fake[1:], still, {})
    out = memory.summary(2)
    assert out["revisit_frames"] == 4 and out["videos_with_revisits"] == 1
    assert out["psnr_revisit"] > 45 and out["psnr_other"] < 10 and out["psnr_gain"] > 35
    assert out["ssim_gain"] > 0.9
    assert out["psnr_seen_vs_real"] is None  # the real return is the seen frame exactly
    assert out["psnr_seen_vs_generated"] == pytest.approx(out["psnr_revisit"])
    json.dumps(out)
    memory.picture(tmp_path / "revisits.png", title="test")
    assert (tmp_path / "revisits.png").stat().st_size > 1000


def test_memory_check_credits_the_early_context_on_revisits_only(tmp_path):
    """Full-context frames that show the remembered place beat frames imagined from the last K
    context frames on those revisits; elsewhere both are the same, so the control gain is 0."""
    from teco.eval import PlaceMemory

    away = walk(((0.5, 0.5), (5.0, 0.5), EAST, 10), ((5.0, 1.0), (5.0, 4.0), NORTH, 6),
                ((5.0, 4.0), (0.5, 4.0), WEST, 6), ((0.5, 0.6), (2.3, 0.6), EAST, 4))
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (1, 26, 16, 16, 3), dtype=np.uint8)
    is_rev, source = find_revisits(*away, 10)
    assert (source[is_rev] < 10 - 4).all()  # places seen before the last 4 context frames
    fake = rng.integers(0, 256, real.shape, dtype=np.uint8)
    short = fake[:, 10:].copy()
    for p in np.flatnonzero(is_rev[0]):
        real[0, 10 + p] = real[0, source[0, p]]
        fake[0, 10 + p] = real[0, source[0, p]] ^ 1   # remembered
    from teco.metrics import frame_metrics
    scores = frame_metrics(real[:, 10:], fake[:, 10:], which=("psnr", "ssim"))
    gaps = 10 + np.flatnonzero(is_rev[0]) - source[is_rev]
    assert gaps.min() >= 18 and gaps.max() < 26
    # The real frames' NLL: lower on the revisits with the whole context, the same elsewhere.
    nll_short = np.full((1, 16), 3.0)
    nll_full = np.where(is_rev, 1.0, 3.0)
    nll_full[0, -1] = nll_short[0, -1] = np.nan   # a frame the probe does not reach
    for window, in_window in ((50, 4), (18, 0)):
        memory = PlaceMemory(n_context=10, short_context=4, window=window)
        memory.add(real, fake, away, scores, short_fake=short, nll=(nll_full, nll_short))
        summary = memory.summary(1)
        assert summary["nll_revisit"] == 1.0 and summary["nll_other"] == 3.0
        check = summary["memory_check"]
        assert check["nll_gain"] == 2.0 and check["nll_gain_control"] == 0.0
        if in_window:
            assert check["nll_memory_effect"]["effect"] == 2.0
        assert check["short_context"] == 4 and check["window"] == window
        assert check["revisit_frames"] == 4 and check["control_frames"] == 12
        assert check["revisit_frames_in_window"] == in_window
        assert check["psnr_gain"] > 35 and check["ssim_gain"] > 0.9
        assert check["psnr_gain_control"] == 0 and check["ssim_gain_control"] == 0
        assert check["psnr_full"] > 45 and check["psnr_short"] < 10
        assert (check["psnr_gain_in_window"] is None) == (in_window == 0)
        effect = check["psnr_memory_effect"]
        if in_window:  # one video: every resample is that video, the interval is a point
            assert effect["effect"] > 35 and effect["videos"] == 1
            assert effect["interval"] == pytest.approx([effect["effect"]] * 2)
        else:
            assert effect is None
        json.dumps(check)
    # Two clips cut from one episode count as one episode in the interval.
    memory = PlaceMemory(n_context=10, short_context=4, window=50)
    for _ in range(2):
        memory.add(real, fake, away, scores, short_fake=short, episodes=np.array([7]))
    effect = memory.summary(2)["memory_check"]["psnr_memory_effect"]
    assert effect["videos"] == 2 and effect["episodes"] == 1
    memory.picture(tmp_path / "revisits.png", title="with the short-context row")
    assert (tmp_path / "revisits.png").stat().st_size > 1000


def test_memory_effect_interval_covers_the_truth_and_widens_with_fewer_videos():
    rng = np.random.default_rng(0)
    n, p = 64, 40
    revisit = rng.random((n, p)) < 0.3
    control = ~revisit
    # gains: 1 dB more on revisits, plus a per-video offset shared by all its frames
    gain = 0.2 + 1.0 * revisit + rng.normal(0, 1.0, (n, 1)) + rng.normal(0, 0.5, (n, p))
    gain[0, 0] = np.inf  # an identical frame pair: skipped, not averaged in
    wide = memory_effect(gain[:8], revisit[:8], control[:8])
    tight = memory_effect(gain, revisit, control)
    assert tight["videos"] == 64 and wide["videos"] == 8 and tight["level"] == 0.95
    lo, hi = tight["interval"]
    assert lo < 1.0 < hi and lo > 0.5 and abs(tight["effect"] - 1.0) < 0.2
    assert hi - lo < wide["interval"][1] - wide["interval"][0]
    assert memory_effect(gain, revisit, control) == tight  # seeded: the same interval again
    no_effect = memory_effect(gain - 1.0 * revisit, revisit, control)
    assert no_effect["interval"][0] < 0 < no_effect["interval"][1]


def test_memory_effect_resamples_whole_episodes_when_clips_share_one():
    """Three copies of each video are not three times the evidence: resampled as episodes they
    give the interval of the originals, resampled as videos a falsely narrow one."""
    rng = np.random.default_rng(1)
    n, p = 8, 40
    revisit = rng.random((n, p)) < 0.3
    gain = 0.5 * revisit + rng.normal(0, 1.0, (n, 1)) + rng.normal(0, 0.5, (n, p))
    alone = memory_effect(gain, revisit, ~revisit)
    copies = lambda x: np.repeat(x, 3, axis=0)
    as_videos = memory_effect(copies(gain), copies(revisit), copies(~revisit))
    as_episodes = memory_effect(copies(gain), copies(revisit), copies(~revisit),
                                groups_N=np.repeat(np.arange(n) + 100, 3))
    width = lambda e: e["interval"][1] - e["interval"][0]
    assert as_episodes["effect"] == pytest.approx(alone["effect"])
    assert as_episodes["videos"] == 24 and as_episodes["episodes"] == 8
    assert alone["episodes"] == alone["videos"] == 8
    assert width(as_videos) < 0.75 * width(alone)
    assert width(as_episodes) == pytest.approx(width(alone), rel=0.25)
    with pytest.raises(ValueError, match="groups"):
        memory_effect(gain, revisit, ~revisit, groups_N=np.arange(n - 1))


def test_memory_effect_needs_both_sets_and_matching_shapes():
    gain = np.zeros((2, 5))
    none = np.zeros((2, 5), bool)
    assert memory_effect(gain, none, ~none) is None and memory_effect(gain, ~none, none) is None
    with pytest.raises(ValueError, match="differ"):
        memory_effect(gain, np.zeros((2, 4), bool), ~none)


def test_eval_memory_check_end_to_end(tmp_path, tmp_path_factory, monkeypatch):
    """teco.eval --memory_check on clips with poses: the sampled check, the teacher-forced NLL
    probe and the episode-resampled interval land in metrics.json. The model's weights are all
    zero, so its prior is uniform: every NLL is log(n_codes) and the early context changes
    nothing."""
    from bad_input_test import write_release, zero_runs

    from teco import eval as teco_eval

    _, teco_dir = zero_runs(tmp_path, write_release(tmp_path / "release", length=20),
                            tmp_path_factory)
    # Poses of 10-frame clips: the place of frames 0-1 is left (2-4) and seen again (5-6).
    pos = np.zeros((10, 2)) + 0.5
    pos[2:5, 0] = 3.0
    heading = np.tile([1.0, 0.0], (10, 1))
    heading[7:] = [0.0, 1.0]
    read = teco_eval.pixel_iterator

    def with_poses(stage, args, total):
        for real, actions, _, episodes in read(stage, args, total):
            b = len(real)
            yield real, actions, (np.repeat(pos[None], b, 0), np.repeat(heading[None], b, 0)), \
                episodes

    monkeypatch.setattr(teco_eval, "pixel_iterator", with_poses)
    out = tmp_path / "eval"
    args = teco_eval.parse([f"--workdir={teco_dir}", "--protocol=custom",
                            "--context=4", "--predict=6", "--num_videos=4", "--batch_size=2",
                            "--clips_per_episode=2", "--memory_check=2", f"--out={out}"])
    result = teco_eval.run(args)
    assert result["num_videos"] == 4 and result["clips_per_episode"] == 2
    rev = result["revisits"]
    assert rev["revisit_frames"] == 8           # frames 5 and 6 of each of the 4 clips
    check = rev["memory_check"]
    assert check["revisit_frames_in_window"] == 4   # frame 5: frame 6 sees frame 0 six back
    log_k = np.log(int(json.loads((teco_dir / "config.json").read_text())["codebook"]["n_codes"]))
    assert check["nll_full"] == pytest.approx(log_k, rel=1e-5)
    assert check["nll_short"] == pytest.approx(log_k, rel=1e-5)
    for name in ("psnr", "nll"):
        effect = check[f"{name}_memory_effect"]
        assert effect["videos"] == 4 and effect["episodes"] == 2
        assert effect["effect"] == pytest.approx(0.0, abs=1e-5)
    assert json.loads((out / "metrics.json").read_text())["revisits"]["memory_check"] == \
        json.loads(json.dumps(check))
    bars = check["nll_gain_intervals"]
    assert bars["revisits in the window"]["frames"] == 4
    assert bars["revisits out of the window"]["frames"] == 4
    assert bars["no revisit (control)"]["frames"] == 8    # frames 4 and 7 of every clip
    assert (out / "revisits.png").stat().st_size > 0 and (out / "memory.png").stat().st_size > 0
    # The short-context rollouts are scored for world identity too (teco/metrics/identity.py).
    world = result["world_identity"]
    assert world["videos"] == 4 and world["episodes"] == 2 and world["start"] == [4]
    assert [len(world[k]) for k in ("real", "generated", "short_context")] == [1, 1, 1]
    assert (out / "identity.png").stat().st_size > 0


def test_mean_interval_covers_the_mean_and_skips_what_it_cannot_score():
    rng = np.random.default_rng(3)
    gain = 0.5 + rng.normal(0, 1.0, (32, 1)) + rng.normal(0, 0.3, (32, 20))
    mask = rng.random(gain.shape) < 0.4
    gain[~mask & (rng.random(gain.shape) < 0.5)] = np.nan    # unscored frames, never masked in
    stats = mean_interval(gain, mask)
    assert stats["frames"] == int(mask.sum()) and stats["videos"] == stats["episodes"] == 32
    lo, hi = stats["interval"]
    assert lo < stats["mean"] < hi and lo < 0.5 < hi
    assert mean_interval(gain, np.zeros_like(mask)) is None


def test_memory_plot_needs_intervals(tmp_path):
    from teco import videos

    with pytest.raises(ValueError, match="no gain intervals"):
        videos.plot_memory(tmp_path / "m.png", {"short_context": 8})


def test_recall_picks_are_judged_by_the_poses():
    """An agent turning on the spot by 45 degrees a frame sees each view again 8 frames later:
    a match that scores frame t - 8 highest picks the same view wherever it is in reach, one
    that scores frame t - 5 never does, and a random pick's chance is the share of such frames."""
    t = 24
    angle = np.radians(45.0 * np.arange(t))
    heading = np.stack([np.cos(angle), np.sin(angle)], -1)[None]
    pos = np.full((1, t, 2), 0.5)
    back = np.arange(t)[:, None] - np.arange(t)[None, :]
    reach = 12
    for favoured, expected in ((8, 1.0), (5, 0.0)):
        picks = recall_picks(pos, heading, (back == favoured)[None].astype(float), reach)
        # frames 0..4 have nothing more than 4 back; frame 5.. have; frame 8.. have t - 8
        assert np.isnan(picks["pick"][0, :5]).all() and np.isfinite(picks["pick"][0, 5:]).all()
        np.testing.assert_array_equal(picks["exists"][0, 5:], np.arange(5, t) >= 8)
        hits = picks["pick"][0, 8:]
        assert np.all(hits == expected), favoured
    # frame 20 may recall frames 8..15, one of which (12) is its view
    assert picks["random"][0, 20] == pytest.approx(1 / 8)
    look = RecallLook(reach)
    look.add(pos, heading, (back == 8)[None].astype(float), [0])
    summary = look.summary(1)
    assert summary["same_view_pick"]["mean"] == pytest.approx(16 / 19)   # frames 5..23
    assert summary["same_view_in_reach"] == pytest.approx(16 / 19)
    with pytest.raises(ValueError, match="recall logits must be"):
        recall_picks(pos, heading, np.zeros((1, t, t - 1)), reach)
