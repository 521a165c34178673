"""memory_maze: real Memory Maze frames built into TFDS (tiny config) and read back.

memory_maze is never imported in this process: MuJoCo and TensorFlow in one process segfault,
and pytest may have TensorFlow loaded. Rendering happens in spawned workers; the skip below
only looks the package up (the equivalent of pytest.importorskip without importing it).
"""
import importlib.util
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("memory_maze") is None:
    pytest.skip("memory_maze not installed (pip extra `maze`)", allow_module_level=True)

from datasets.memory_maze import generate
from datasets.memory_maze import memory_maze_dataset_builder as mm

T = mm.TINY.length
FORWARD_ACTIONS = (1, 4, 5)
# A seed whose first 24 frames make the agent walk through a goal sphere (steps 12-15), so the
# stock/fast comparison covers the touch the fast env no longer checks.
TOUCH_SEED, TOUCH_LENGTH = 2, 24


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The tiny config built twice: with 2 workers and with 1 (the records must not differ)."""
    a = mm.build(str(tmp_path_factory.mktemp("maze_a")), "tiny", workers=2)
    b = mm.build(str(tmp_path_factory.mktemp("maze_b")), "tiny", workers=1)
    return a, b


@pytest.fixture(scope="module")
def episodes(builds):
    builder = builds[0]
    return {split: [builder.as_data_source(split)[i] for i in range(n)]
            for split, n in (("train", mm.TINY.episodes_train), ("test", mm.TINY.episodes_test))}


def test_records_have_the_documented_layout(episodes):
    for split, eps in episodes.items():
        for i, ep in enumerate(eps):
            assert ep["video"].shape == (T, 64, 64, 3) and ep["video"].dtype == np.uint8
            assert ep["actions"].shape == (T,) and ep["actions"].dtype == np.int32
            assert ep["agent_pos"].shape == (T, 2) and ep["agent_pos"].dtype == np.float32
            assert ep["agent_dir"].shape == (T, 2) and ep["agent_dir"].dtype == np.float32
            assert ep["maze_layout"].shape == (9, 9) and ep["maze_layout"].dtype == np.uint8
            assert int(ep["episode_id"]) == i
            assert int(ep["seed"]) == generate.episode_seed(mm.TINY.seed, split, i)
    seeds = [int(ep["seed"]) for eps in episodes.values() for ep in eps]
    assert len(set(seeds)) == len(seeds)


def test_frames_are_real_renders(episodes):
    for ep in (ep for eps in episodes.values() for ep in eps):
        video = ep["video"].astype(np.float32)
        assert video.min() < 60 and video.max() > 120  # walls, floor and sky, not a blank frame
        assert video.reshape(T, -1).std(axis=1).min() > 5  # every frame has structure
        assert np.abs(np.diff(video, axis=0)).mean() > 1  # and the view changes over time
    first = [eps[0]["video"][0] for eps in episodes.values()]
    assert not np.array_equal(first[0], first[1])  # different seeds, different mazes


def test_actions_are_aligned_with_the_frames_they_led_to(episodes):
    for ep in (ep for eps in episodes.values() for ep in eps):
        actions, pos, heading = ep["actions"], ep["agent_pos"], ep["agent_dir"]
        assert actions[0] == 0  # frame 0 is the reset observation: no action led to it
        assert actions.min() >= 0 and actions.max() < generate.NUM_ACTIONS
        assert np.isfinite(pos).all() and np.isfinite(heading).all()
        np.testing.assert_allclose(np.linalg.norm(heading, axis=1), 1.0, atol=1e-4)
        layout = ep["maze_layout"]
        assert set(np.unique(layout)) <= {0, 1}
        # The layout is indexed [y, x] with the agent's cell free at every frame.
        assert all(layout[int(y), int(x)] == 1 for x, y in pos)
        # actions[t] produced frame t: a forward action at t moves the agent from pos[t-1] along
        # heading[t-1] (the momentum of a turn-only step moves it far less).
        step = pos[1:] - pos[:-1]
        along = np.einsum("tc,tc->t", step, heading[:-1])
        forward = np.isin(actions[1:], FORWARD_ACTIONS)
        assert forward.sum() >= 3
        assert along[forward].mean() > 0.05


def test_builds_are_byte_identical_whatever_the_worker_count(builds):
    a, b = (Path(builder.data_dir) for builder in builds)
    files = sorted(p.name for p in a.iterdir())
    records = [name for name in files if ".array_record-" in name]
    assert len(records) == 2 and files == sorted(p.name for p in b.iterdir())
    # All files, metadata included: TFDS writes no timestamps into them.
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_smaller_frames_average_the_full_size_render(builds, episodes, tmp_path):
    """frame_size=32 stores the 64x64 render averaged over 2x2 blocks, with the same poses."""
    config = mm.MemoryMazeConfig(name="tiny32", episodes_train=1, episodes_test=1, length=T,
                                 frame_size=32)
    small = mm.build(str(tmp_path), config, workers=1).as_data_source("test")[0]
    full = episodes["test"][0]
    assert small["video"].shape == (T, 32, 32, 3) and small["video"].dtype == np.uint8
    expected = full["video"].reshape(T, 32, 2, 32, 2, 3).astype(np.float32).mean(axis=(2, 4))
    np.testing.assert_array_equal(small["video"], np.round(expected).astype(np.uint8))
    np.testing.assert_array_equal(small["agent_pos"], full["agent_pos"])
    assert mm.get_config("revisits32").frame_size == 32


def test_this_process_never_imports_mujoco(builds):
    del builds  # after two builds
    assert "mujoco" not in sys.modules and "memory_maze" not in sys.modules


def test_disabled_target_checks_leave_frames_identical():
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = pool.apply(generate.compare_fast_to_stock, (TOUCH_SEED, TOUCH_LENGTH))
    assert result["stock_touched_substeps"] > 0, result  # the comparison covers a touch
    assert all(result["identical"].values()), result


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown memory_maze config"):
        mm.get_config("huge")
    with pytest.raises(ValueError, match="length"):
        generate.run_episode(None, 0, length=generate.MAX_LENGTH + 1)  # checked before the env
    with pytest.raises(ValueError, match="workers"):
        generate.EpisodePool(workers=0)
    with pytest.raises(ValueError, match="listed name"):
        mm.build("/nonexistent", mm.MemoryMazeConfig(name="tiny", length=8))
    with pytest.raises(ValueError, match="home_radius"):
        generate.PolicySpec(home_radius=-1)
    with pytest.raises(ValueError, match="look_around_prob"):
        mm.build("/nonexistent", mm.MemoryMazeConfig(name="spin", look_around_prob=2.0))
    with pytest.raises(ValueError, match="frame_size must divide 64"):
        mm.build("/nonexistent", mm.MemoryMazeConfig(name="odd", frame_size=48))
    assert generate.episode_seed(0, "train", 1) != generate.episode_seed(0, "test", 1)
    assert generate.episode_seed(3, "train", 1) == generate.episode_seed(3, "train", 1)


def test_evaluation_reads_poses_aligned_with_frames(builds, episodes):
    """teco.eval's reader brings agent poses along with the frames (they locate revisits)."""
    import jax

    from teco import data, sharding
    from teco.config import load_config
    from teco.eval import POSE_KEYS

    config = load_config("configs/memory_maze_vqgan.py:tiny", {
        "data.data_dir": str(Path(builds[0].data_dir).parents[2]), "data.name": "memory_maze/tiny",
        "data.image_size": 64, "seq_len": T - 4, "batch_size": 1})
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
    batch = next(data.make_iterator(config, mesh, split="test", train=False, num_epochs=1,
                                    extras=POSE_KEYS))
    ep = episodes["test"][0]
    for k in POSE_KEYS:
        assert isinstance(batch[k], np.ndarray) and batch[k].shape == (1, T - 4, 2)
        np.testing.assert_array_equal(batch[k][0], ep[k][:T - 4])
    real = np.round((np.asarray(batch["video"][0]) + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(real, ep["video"][:T - 4])


def test_grid_distances_follow_free_cells():
    layout = np.array([[1, 1, 1],
                       [0, 0, 1],
                       [1, 1, 1]], np.uint8)   # [y, x]: a corridor folded around a wall
    dist = generate.grid_distances(layout, (0, 0))
    np.testing.assert_array_equal(dist, [[0, 1, 2], [-1, -1, 3], [6, 5, 4]])


def _turned_in_one_cell(pos, heading) -> float:
    """The most the agent turned, in degrees, while it stayed in one cell."""
    angle = np.degrees(np.arctan2(heading[:, 1], heading[:, 0]))
    step = np.abs((np.diff(angle) + 180.0) % 360.0 - 180.0)
    cells = [tuple(c) for c in np.floor(pos).astype(int)]
    best = run = 0.0
    for t in range(1, len(cells)):
        run = run + step[t - 1] if cells[t] == cells[t - 1] else 0.0
        best = max(best, run)
    return best


def test_neighbourhood_walk_keeps_near_its_start_and_looks_around():
    """The `spins` config's policy: goals within home_radius grid steps of the start cell, and at
    every goal a turn on the spot of 3 turns (the views of the first turn come back twice)."""
    spec = mm.SPINS.policy
    assert (spec.home_radius, spec.look_around_prob, spec.look_around_deg) == (1, 1.0, 1080.0)
    seed = generate.episode_seed(0, "test", 0)
    with generate.EpisodePool(workers=1, policy=spec) as pool:
        (ep,) = pool.episodes([seed], length=120)
    cells = {tuple(c) for c in np.floor(ep["agent_pos"]).astype(int)}
    start = tuple(np.floor(ep["agent_pos"][0]).astype(int))
    dist = generate.grid_distances(ep["maze_layout"], start)
    # a shortest path between two cells within 1 step of the start stays within 3 steps of it
    assert max(dist[y, x] for x, y in cells) <= 3, cells
    assert _turned_in_one_cell(ep["agent_pos"], ep["agent_dir"]) >= 1000.0
    from teco.metrics.revisit import find_revisits
    is_revisit, _ = find_revisits(ep["agent_pos"][None], ep["agent_dir"][None], 40)
    assert is_revisit.mean() > 0.2  # places come back often after the first 40 frames
