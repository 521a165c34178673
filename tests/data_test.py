"""Input pipeline: the authors' layouts, built TFDS sets, encoded codes, bad files, resume."""
import threading
from pathlib import Path

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from teco import data, sharding
from teco.config import ConfigError, load_config, validate
from teco.video_io import DataError, ffmpeg_quietly

SIZE = 16


def frame_video(length: int, offset: int = 0, size: int = SIZE) -> np.ndarray:
    """Frame t is filled with the value 3 * (t + offset), so crops reveal their position."""
    values = (3 * (np.arange(length) + offset)) % 256
    return np.broadcast_to(values[:, None, None, None], (length, size, size, 3)).astype(np.uint8)


def write_dmlab_release(root: Path, n_train=6, n_test=2, length=20) -> None:
    """`<root>/{train,test}/<shard>/*.npz` with `video` uint8 THWC and `actions` int, as released."""
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            shard = root / split / f"{i % 2}"
            shard.mkdir(parents=True, exist_ok=True)
            np.savez(shard / f"{i}.npz", video=frame_video(length, offset=i),
                     actions=(np.arange(length) + i) % 6)


def config_for(source: str, data_dir, *, seq_len=8, batch_size=8, image_size=SIZE, **over):
    c = load_config("configs/dmlab_vqgan.py:tiny")
    c.unlock()
    c.data.source, c.data.data_dir = source, str(data_dir)
    c.seq_len, c.batch_size, c.image_size, c.data.image_size = seq_len, batch_size, image_size, image_size
    for k, v in over.items():
        c.data[k] = v
    return c


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh({"data": -1, "fsdp": 2, "model": 1})


@pytest.fixture(scope="module")
def dmlab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmlab_release")
    write_dmlab_release(root)
    return root


def test_dmlab_layout_batches_are_sharded_scaled_and_aligned(dmlab_root, mesh):
    it = data.make_iterator(config_for("authors", dmlab_root), mesh, split="train", train=True)
    batch = next(it)
    video, actions = batch["video"], batch["actions"]
    assert video.shape == (8, 8, SIZE, SIZE, 3) and video.dtype == np.float32
    assert actions.shape == (8, 8) and actions.dtype == np.int32
    assert video.sharding.spec == sharding.batch_sharding(mesh).spec
    v = np.asarray(video)
    assert -1.0 <= v.min() and v.max() <= 1.0
    # Frame value 3 * (t + i) and action (t + i) % 6: the same t must pair them.
    frame_index = np.round((v[:, :, 0, 0, 0] + 1) * 127.5).astype(int) // 3
    np.testing.assert_array_equal(frame_index % 6, np.asarray(actions))
    # Crops are consecutive frames.
    np.testing.assert_array_equal(np.diff(frame_index, axis=1), 1)


def test_minecraft_layout_mp4_with_sibling_actions(tmp_path, mesh):
    size, length = 32, 12
    for split in ("train", "test"):
        shard = tmp_path / split / "000"
        shard.mkdir(parents=True)
        for i in range(2):
            rng = np.random.default_rng(i)
            video = np.repeat(rng.integers(0, 255, (length, 1, 1, 3), dtype=np.uint8), size, 1)
            with ffmpeg_quietly():
                iio.imwrite(shard / f"{i}.mp4", np.repeat(video, size, 2), fps=10, codec="libx264")
            np.savez(shard / f"{i}.npz", actions=np.arange(length) % 4)
    src = data.FolderSource(str(tmp_path), "train")
    assert len(src) == 2  # the sibling .npz files are actions, not videos
    ep = src[0]
    assert ep["video"].shape == (length, size, size, 3) and ep["video"].dtype == np.uint8
    np.testing.assert_array_equal(ep["actions"], np.arange(length) % 4)
    it = data.make_iterator(config_for("authors", tmp_path, seq_len=6, batch_size=8, image_size=size),
                            mesh, split="test", train=False)
    assert next(it)["video"].shape == (8, 6, size, size, 3)


def test_same_seed_same_batches_and_exact_resume(dmlab_root, mesh):
    cfg = config_for("authors", dmlab_root)
    a = data.make_iterator(cfg, mesh, split="train", train=True)
    first = [np.asarray(next(a)["video"]) for _ in range(2)]
    state = a.get_state()
    expected = [np.asarray(next(a)["video"]) for _ in range(2)]
    b = data.make_iterator(cfg, mesh, split="train", train=True)
    np.testing.assert_array_equal(np.asarray(next(b)["video"]), first[0])
    c = data.make_iterator(cfg, mesh, split="train", train=True)
    c.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(np.asarray(next(c)["video"]), want)
    other = data.make_iterator(cfg, mesh, split="train", train=True, seed=123)
    assert not np.array_equal(np.asarray(next(other)["video"]), first[0])


def test_episode_cache_gives_the_same_batches_from_one_read_per_episode(dmlab_root, mesh,
                                                                       monkeypatch):
    reads = []
    read = data.FolderSource.__getitem__
    monkeypatch.setattr(data.FolderSource, "__getitem__", lambda self, i: reads.append(i) or read(self, i))
    batches, n_reads = {}, {}
    # Cached first: the iterator's read-ahead threads go on after the measurement, and only
    # the cached one's no longer read the files.
    for cache_mb in (1, 0):
        reads.clear()
        it = data.make_iterator(config_for("authors", dmlab_root, cache_mb=cache_mb), mesh,
                                split="train", train=True)
        batches[cache_mb] = [np.asarray(next(it)["video"]) for _ in range(5)]  # 40 crops of 6
        n_reads[cache_mb] = len(reads)
        assert sorted(set(reads)) == list(range(6))
    assert n_reads[1] == 6 and n_reads[0] >= 40
    for off, on in zip(batches[0], batches[1]):
        np.testing.assert_array_equal(on, off)


def test_episode_cache_is_bounded_read_only_and_not_pickled(dmlab_root):
    import pickle

    source = data.FolderSource(str(dmlab_root), "train")
    one = sum(v.nbytes for v in source[0].values() if isinstance(v, np.ndarray))
    cache = data._EpisodeCache(source, max_bytes=one)
    first = cache[0]
    cache[1]  # does not fit beside episode 0: the cache is full
    assert list(cache._episodes) == [0] and cache._bytes == one and cache._full
    with pytest.raises(ValueError, match="read-only"):
        first["video"][0, 0, 0, 0] = 1
    assert cache[0] is not first and cache[0]["video"] is first["video"]  # a new dict, same arrays
    copy = pickle.loads(pickle.dumps(cache))  # as grain sends it to a worker process
    assert copy._episodes == {} and copy.max_bytes == one and len(copy) == len(source)
    np.testing.assert_array_equal(copy[1]["video"], source[1]["video"])


def test_batch_not_divisible_by_data_parallel_size(dmlab_root, mesh):
    cfg = config_for("authors", dmlab_root, batch_size=2)
    with pytest.raises(ValueError, match="batch_size=2 is not divisible"):
        data.make_iterator(cfg, mesh, split="test", train=False, num_epochs=1)


def test_eval_iterator_order(dmlab_root):
    one = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
    cfg = config_for("authors", dmlab_root, batch_size=2)
    it = data.make_iterator(cfg, one, split="test", train=False, num_epochs=1)
    v = np.asarray(next(it)["video"])
    starts = np.round((v[:, 0, 0, 0, 0] + 1) * 127.5).astype(int)
    np.testing.assert_array_equal(starts, [0, 3])  # files 0.npz, 1.npz; frame 0 of each
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("bad,match", [
    ("corrupt", "not a valid .npz"),
    ("size", "frames are 8x8, the config expects 16x16"),
    ("short", "shorter than seq_len=8"),
])
def test_bad_files_name_the_file_or_are_skipped(tmp_path, mesh, bad, match):
    write_dmlab_release(tmp_path, n_train=7, n_test=1)
    path = tmp_path / "train" / "0" / "bad.npz"
    if bad == "corrupt":
        path.write_bytes(b"PK\x03\x04 truncated")
        match = "bad.npz: (not a valid .npz|cannot read npz)"
    elif bad == "size":
        np.savez(path, video=frame_video(20, size=8), actions=np.zeros(20))
    else:
        np.savez(path, video=frame_video(4), actions=np.zeros(4))
    cfg = config_for("authors", tmp_path, batch_size=8)
    with pytest.raises(DataError, match=match):
        it = data.make_iterator(cfg, mesh, split="train", train=True)
        for _ in range(3):
            next(it)
    cfg = config_for("authors", tmp_path, batch_size=8, on_bad_file="skip")
    it = data.make_iterator(cfg, mesh, split="train", train=True)
    for _ in range(3):
        assert next(it)["video"].shape[0] == 8
    assert it.skipped >= 1 and "bad.npz" in it.skipped_names[0]


def test_missing_or_empty_data_directory(tmp_path, mesh):
    with pytest.raises(DataError, match="does not exist"):
        data.make_iterator(config_for("authors", tmp_path / "nope"), mesh, split="train", train=True)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="holds no .npz or .mp4"):
        data.make_iterator(config_for("authors", tmp_path), mesh, split="train", train=True)
    with pytest.raises(DataError, match="is not built under"):
        data.make_iterator(config_for("tfds", tmp_path, name="dmlab"), mesh, split="train", train=True)


def test_release_builder_reads_back_through_tfds(tmp_path, mesh, capfd):
    from datasets import build

    release = tmp_path / "release"
    for split in ("train", "test"):
        (release / split / "0").mkdir(parents=True)
        for i in range(2):
            np.savez(release / split / "0" / f"{i}.npz", video=frame_video(10, i, size=64),
                     actions=np.arange(10) % 6)
    build.build_release("dmlab", str(tmp_path / "tfds"), str(release))
    # Nothing is downloaded, and the build says so instead of TFDS's "Downloading ..." line.
    out = capfd.readouterr().out
    assert "Downloading" not in out
    assert ("building dmlab (from the release files in its manual directory; nothing is "
            f"downloaded) in {tmp_path / 'tfds' / 'dmlab' / '1.0.0'}") in out
    assert f"built dmlab in {tmp_path / 'tfds' / 'dmlab' / '1.0.0'}" in out
    src = data.TfdsSource(str(tmp_path / "tfds"), "dmlab", "train")
    assert len(src) == 2
    got = sorted(src[i]["source"].decode() for i in range(2))
    assert got == ["train/0/0.npz", "train/0/1.npz"]
    ep = src[0]
    assert ep["video"].shape == (10, 64, 64, 3) and ep["actions"].dtype == np.int32
    # A release whose frames do not match the builder's size fails naming the file.
    np.savez(release / "train" / "0" / "small.npz", video=frame_video(10, size=16), actions=np.zeros(10))
    with pytest.raises(DataError, match="small.npz: frames are 16x16"):
        build.build_release("dmlab", str(tmp_path / "tfds2"), str(release))


def test_synthetic_set_builds_on_demand_and_is_deterministic(tmp_path, mesh, capfd):
    cfg = load_config("configs/memory_maze_vqgan.py:tiny")
    cfg.unlock()
    cfg.data.data_dir = str(tmp_path)
    batch = next(data.make_iterator(cfg, mesh, split="train", train=True))
    assert batch["video"].shape == (8, 1, 16, 16, 3)
    out = capfd.readouterr().out
    assert "Downloading" not in out
    assert "building synthetic/s16_t24_n16-4_seed0 (procedural videos generated here; " in out
    from datasets.synthetic import generate

    a = generate.episode(5, length=10, image_size=16)
    b = generate.episode(5, length=10, image_size=16)
    np.testing.assert_array_equal(a["video"], b["video"])
    assert a["video"].std() > 0


def test_codes_round_trip(tmp_path, mesh):
    rng = np.random.default_rng(0)
    eps = [rng.integers(0, 64, (12, 4, 4)) for _ in range(8)]
    w = data.CodesWriter(str(tmp_path), "train", {"latent_shape": [4, 4], "n_codes": 64})
    for i, codes in enumerate(eps):
        w.add(codes, np.arange(12) % 3)
    w.close()
    src = data.CodesSource(str(tmp_path), "train")
    assert src.meta["latent_shape"] == [4, 4] and src.meta["splits"] == {"train": 8}
    np.testing.assert_array_equal(src[3]["codes"], eps[3])
    cfg = config_for("codes", tmp_path, seq_len=5)
    batch = next(data.make_iterator(cfg, mesh, split="train", train=False))
    assert batch["codes"].shape == (8, 5, 4, 4) and batch["codes"].dtype == np.int32
    np.testing.assert_array_equal(np.asarray(batch["codes"])[0], eps[0][:5])


def test_npz_headers_are_parsed_under_one_lock(tmp_path, monkeypatch, dmlab_root):
    """numpy's header parsing (ast.literal_eval) can fail in CPython 3.11 when threads run it at
    once, and grain reads on several threads: every np.load of data holds video_io.NPZ_LOCK."""
    from teco import video_io

    w = data.CodesWriter(str(tmp_path), "train", {"latent_shape": [2, 2], "n_codes": 8})
    w.add(np.zeros((3, 2, 2), np.int64), np.zeros(3, np.int64))
    w.close()
    held, real_load, this_thread = [], np.load, threading.get_ident()

    def load(*args, **kwargs):
        # Input threads an earlier test left running in this worker may load too: count ours.
        if threading.get_ident() == this_thread:
            held.append(video_io.NPZ_LOCK.locked())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    assert data.CodesSource(str(tmp_path), "train")[0]["codes"].shape == (3, 2, 2)
    video = video_io.find_videos(dmlab_root, "train")[0]
    assert video_io.load_video(video)["video"].ndim == 4
    assert held == [True, True] and not video_io.NPZ_LOCK.locked()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key 'batch_sz'"):
        load_config("configs/dmlab.py", {"batch_sz": 8})
    c = load_config("configs/dmlab.py", {"seq_len": 20})
    with pytest.raises(ConfigError, match="config.seq_len: 20 is shorter than .*open_loop_ctx=36"):
        validate(c)
    c = load_config("configs/dmlab_vqgan.py", {"image_size": 66})
    with pytest.raises(ConfigError, match="config.image_size: 66 is not divisible"):
        validate(c)
    c = load_config("configs/dmlab.py", {"prev_frame_noise": 0.5})
    with pytest.raises(ConfigError, match="config.prev_frame_noise: 0.5 has no effect unless"):
        validate(c)
    validate(load_config("configs/dmlab.py", {"prev_frame_noise": 0.5, "prior_prev_frame": True}))
    c = load_config("configs/dmlab.py", {"prior_action": True, "use_actions": False})
    with pytest.raises(ConfigError, match="config.prior_action: True has no effect with use_actions=False"):
        validate(c)
    c = load_config("configs/dmlab.py", {"recall": True, "use_actions": False})
    with pytest.raises(ConfigError, match="config.recall: True needs use_actions=True"):
        validate(c)
    c = load_config("configs/dmlab.py", {"recall": True, "recall_reach": -1})
    with pytest.raises(ConfigError, match="config.recall_reach: -1 must be >= 0"):
        validate(c)
    c = load_config("configs/dmlab.py", {"recall": True, "recall_sharpness": 0.0})
    with pytest.raises(ConfigError, match="config.recall_sharpness: 0.0 must be > 0"):
        validate(c)
    c = load_config("configs/dmlab.py", {"recall": True, "recall_skip": 299})
    with pytest.raises(ConfigError, match="config.recall_skip: 299 must be in"):
        validate(c)
    c = load_config("configs/dmlab.py", {"batch_size": 12})
    with pytest.raises(ConfigError, match="config.batch_size: 12 is not divisible by the data-parallel size 8"):
        validate(c, 8)
    c = load_config("configs/dmlab.py")
    with pytest.raises(AttributeError):
        c.new_key = 1  # locked: a typo in code cannot add keys either


def test_skipping_stops_when_every_file_is_bad(tmp_path, mesh):
    """on_bad_file='skip' over a split with nothing usable: a DataError, not an endless loop."""
    write_dmlab_release(tmp_path, n_train=3, n_test=1)
    for path in (tmp_path / "train").rglob("*.npz"):
        np.savez(path, video=frame_video(4), actions=np.zeros(4))   # all shorter than seq_len
    cfg = config_for("authors", tmp_path, batch_size=8, on_bad_file="skip")
    it = data.make_iterator(cfg, mesh, split="train", train=True)
    with pytest.raises(DataError, match=r"skipped 3 bad files in a row \(3 in the split"):
        next(it)
