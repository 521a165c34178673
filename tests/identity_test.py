"""World identity: a window of frames names its episode by its colours, or it does not."""
import numpy as np
import pytest

from teco.metrics.identity import (BINS, WorldIdentity, colour_histograms, frame_motion,
                                   hellinger, kept, nearest_episode)

# Each episode's world: two wall colours on a shared grey floor (as mazes share floor and sky).
PALETTES = [((200, 40, 40), (40, 40, 200)), ((40, 200, 40), (220, 220, 40)),
            ((200, 40, 200), (40, 200, 200)), ((240, 140, 20), (120, 60, 20))]
FLOOR = (90, 90, 90)


def world_frames(episode: int, frames: int, rng, size: int = 8) -> np.ndarray:
    """uint8 [T, H, W, 3]: the floor below, the episode's walls above in a random mix."""
    x = np.empty((frames, size, size, 3), np.uint8)
    x[:, size // 2:] = FLOOR
    walls = np.asarray(PALETTES[episode], np.uint8)
    x[:, :size // 2] = walls[rng.integers(0, 2, (frames, size // 2, size))]
    return x


def test_colour_histograms_count_the_share_of_each_colour():
    clip = np.zeros((1, 2, 2, 2, 3), np.uint8)
    clip[0, 0] = (255, 0, 0)      # frame 0 red, frame 1: half blue, half black
    clip[0, 1, 0] = (0, 0, 255)
    h = colour_histograms(clip)
    red, blue, black = (BINS - 1) * BINS * BINS, BINS - 1, 0
    assert h.shape == (1, BINS ** 3)
    assert h[0, red] == 0.5 and h[0, blue] == 0.25 and h[0, black] == 0.25
    assert h.sum() == pytest.approx(1.0)


def test_hellinger_is_0_for_the_same_colours_and_1_for_none_shared():
    p = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    d = hellinger(p, p)
    assert np.allclose(np.diag(d), 0.0) and d[0, 1] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a, b = rng.dirichlet(np.ones(16), 3), rng.dirichlet(np.ones(16), 5)
    direct = np.sqrt(0.5 * ((np.sqrt(a)[:, None] - np.sqrt(b)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(hellinger(a, b), direct, atol=1e-7)


def test_bad_frames_are_refused_with_their_shape():
    with pytest.raises(ValueError, match=r"uint8 \[N, T, H, W, 3\], got float32"):
        colour_histograms(np.zeros((1, 2, 4, 4, 3), np.float32))


def test_a_window_with_another_worlds_colours_names_that_world():
    rng = np.random.default_rng(0)
    context = colour_histograms(np.stack([world_frames(e, 6, rng) for e in range(4)]))
    own = colour_histograms(np.stack([world_frames(e, 4, rng) for e in range(4)]))
    swapped = colour_histograms(np.stack([world_frames((e + 1) % 4, 4, rng) for e in range(4)]))
    episodes = np.arange(4)
    assert (nearest_episode(own, context, episodes) == episodes).all()
    assert not (nearest_episode(swapped, context, episodes) == episodes).any()
    # Two clips of one episode: naming the other clip of the same walk is naming its world.
    assert (nearest_episode(own[[0, 0]], context[[1, 0]], np.array([5, 5])) == 5).all()


def rollouts(rng, n_context=6, predicted=32, drift_from=16):
    """Two clips from each of 4 episodes: real frames, generated ones that keep their world for
    `drift_from` frames then show the next episode's world, and short-context ones that never
    keep it."""
    episodes = np.repeat(np.arange(4), 2)
    real = np.stack([world_frames(e, n_context + predicted, rng) for e in episodes])
    fake = real.copy()
    fake[:, n_context + drift_from:] = np.stack(
        [world_frames((e + 1) % 4, predicted - drift_from, rng) for e in episodes])
    short = np.stack([world_frames((e + 2) % 4, predicted, rng) for e in episodes])
    return real, fake, short, episodes


def test_world_identity_per_window_against_the_real_frames_and_chance():
    rng = np.random.default_rng(1)
    real, fake, short, episodes = rollouts(rng)
    world = WorldIdentity(n_context=6, window=16)
    for b in (slice(0, 3), slice(3, 8)):    # batch by batch, as evaluation adds them
        world.add(real[b], fake[b], episodes[b], short_fake_BPHWC=short[b])
    s = world.summary(8)
    assert s["start"] == [6, 22] and s["episodes"] == 4 and s["videos"] == 8
    assert s["chance"] == 0.25
    acc = {k: [w["accuracy"] for w in s[k]] for k in ("real", "generated", "short_context")}
    assert acc == {"real": [1.0, 1.0], "generated": [1.0, 0.0], "short_context": [0.0, 0.0]}
    assert kept(s, "generated", 0) and not kept(s, "generated", -1) and kept(s, "real")
    # The drifted window names the next episode's world: wrong, but spread over the worlds.
    assert s["generated"][1]["named"] == [1, 1, 2, 2, 3, 3, 0, 0]
    assert s["generated"][1]["most_named"] == 0.25
    for kind in ("real", "generated", "short_context"):
        for w in s[kind]:
            lo, hi = w["interval"]
            assert lo <= w["accuracy"] <= hi
    # Only the first n videos count (the last batch may run past --num_videos).
    assert world.summary(4)["episodes"] == 2


def test_frame_motion_is_the_mean_change_between_consecutive_frames():
    x = np.zeros((2, 3, 2, 2, 3), np.uint8)
    x[0, 1] = 255                      # 0 -> 255 -> 0: every pixel changes by 255, twice
    x[1, 2, 0] = 100                   # half the pixels change by 100, once of two steps
    np.testing.assert_allclose(frame_motion(x), [255.0, 25.0])
    assert frame_motion(x[:, :1]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="frame_motion wants"):
        frame_motion(x[0])


def test_a_rollout_frozen_on_its_own_colours_shows_no_motion():
    """Colours alone call a frozen rollout kept; its motion beside the real frames' does not."""
    rng = np.random.default_rng(3)
    real, _, _, episodes = rollouts(rng)
    frozen = real.copy()
    frozen[:, 6:] = real[:, 6:7]       # the first predicted frame held to the end
    world = WorldIdentity(n_context=6, window=16)
    world.add(real, frozen, episodes)
    s = world.summary(8)
    assert [w["accuracy"] for w in s["generated"]] == [1.0, 1.0]
    assert [w["motion"] for w in s["generated"]] == [0.0, 0.0]
    assert s["generated"][0]["most_named"] == 0.25      # two clips of each of 4 worlds
    assert all(w["motion"] > 20 for w in s["real"])   # random wall pixels change every frame


def test_rollouts_drifting_to_one_world_all_name_it():
    """Every rollout ending in episode 0's colours: one world named, most_named 1."""
    rng = np.random.default_rng(5)
    real, fake, _, episodes = rollouts(rng)
    fake[:, 6 + 16:] = np.stack([world_frames(0, 16, rng) for _ in episodes])
    world = WorldIdentity(n_context=6, window=16)
    world.add(real, fake, episodes)
    last = world.summary(8)["generated"][-1]
    assert last["named"] == [0] * 8 and last["most_named"] == 1.0 and last["accuracy"] == 0.25


def test_world_identity_needs_two_episodes_and_no_short_rollouts():
    rng = np.random.default_rng(2)
    real, fake, _, episodes = rollouts(rng, drift_from=24)
    one = WorldIdentity(n_context=6)
    one.add(real[:2], fake[:2], np.zeros(2, int))
    assert one.summary(2) is None
    assert WorldIdentity(n_context=6).summary(0) is None
    world = WorldIdentity(n_context=6, window=32)
    world.add(real, fake, episodes)
    s = world.summary(8)
    assert "short_context" not in s and len(s["generated"]) == 1
    assert s["generated"][0]["accuracy"] == pytest.approx(1.0)  # mostly its own world: nearest
    with pytest.raises(ValueError, match="at least 1 frame"):
        WorldIdentity(n_context=6, window=0)


def test_plot_identity_writes_a_picture(tmp_path):
    from teco import videos

    rng = np.random.default_rng(3)
    real, fake, short, episodes = rollouts(rng)
    world = WorldIdentity(n_context=6)
    world.add(real, fake, episodes, short_fake_BPHWC=short)
    path = videos.plot_identity(tmp_path / "identity.png", world.summary(8), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
