"""TFDS builder `memory_maze`: DMLab-like 3-D maze walks rendered locally from Memory Maze.

Build (array_record files under <data_dir>/memory_maze/<config>/1.0.0/):

    .venv/bin/python -m datasets.memory_maze --data_dir=data/tfds --config=small [--workers=2]
    # the same through the common entry point:
    .venv/bin/python -m datasets.build memory_maze --data_dir=data/tfds --config=small

Configs (64x64 frames unless named otherwise; build times measured with 2 workers on the
shared 2-core box, where the pool renders ~70 frames/s, resets and env builds included):

    default   train 240 / test 24 episodes x 300 frames   (79,200 frames, ~300 MB, ~15-20 min)
    small     train 64 / test 8 episodes x 300 frames      (21,600 frames, ~80 MB, ~2-4 min)
    revisits  as small, but the walk keeps within 2 cells of its start and turns on the spot
              by 1.5 turns at half of its goals: places come back within seconds (the demo's)
    spins     as small, but the agent goes from cell to cell within 1 step of its start and
              turns on the spot by 3 full turns at every goal: most frames show a view last
              seen ~15 frames before (few frames revisit nothing: a weak memory control)
    revisits32  revisits with 32x32 frames (2x2 blocks of the 64x64 render averaged; ~2 min)
    tiny      train 2 / test 1 episodes x 16 frames        (for tests, ~15-20 s)

Every record is one episode (feature layout in generate.py's docstring):

    video        uint8   [T, S, S, 3]     S = frame_size, 64 unless the config says otherwise
                                          (stored zlib-compressed; decoded with numpy)
    actions      int32   [T]              actions[t] led to frame t; actions[0] = 0 (no-op)
    agent_pos    float32 [T, 2]           maze-cell units
    agent_dir    float32 [T, 2]           unit heading
    maze_layout  uint8   [9, 9]           1 = free, indexed [y, x]
    episode_id   int64   []               index of the episode within its split
    seed         int64   []               episode_seed(config.seed, split, episode_id)

Records keep episode order (shuffling disabled): record i of a split is episode i. The same
config builds byte-identical array_record files every time, whatever `workers` is.

Read back without TensorFlow:

    builder = MemoryMaze(data_dir="data/tfds", config="small")
    episodes = builder.as_data_source("train")     # episodes[i] -> dict of numpy arrays

Process layout: episodes are rendered by `workers` spawned processes (generate.EpisodePool)
that never import TensorFlow; this process never imports mujoco or memory_maze (the two crash
together).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from datasets.local_build import SaysWhatItBuilds
from datasets.memory_maze import generate


@dataclasses.dataclass(eq=False)
class MemoryMazeConfig(tfds.core.BuilderConfig):
    """episodes_* per split, `length` frames each; `workers` None = one per CPU core."""
    episodes_train: int = 240
    episodes_test: int = 24
    length: int = 300
    seed: int = 0
    workers: int | None = None
    random_prob: float = generate.DEFAULT_RANDOM_PROB
    # 0 = goals anywhere; R = goals within R grid steps of the start cell (generate.PolicySpec)
    home_radius: int = 0
    look_around_prob: float = 0.0
    look_around_deg: float = generate.PolicySpec.look_around_deg
    # Stored frame size: frames render at generate.FRAME_SIZE and are averaged over
    # (FRAME_SIZE / frame_size)^2 blocks, so a smaller frame is an antialiased copy of the big one.
    frame_size: int = generate.FRAME_SIZE

    @property
    def policy(self) -> generate.PolicySpec:
        return generate.PolicySpec(random_prob=self.random_prob, home_radius=self.home_radius,
                                   look_around_prob=self.look_around_prob,
                                   look_around_deg=self.look_around_deg)


DEFAULT = MemoryMazeConfig(
    name="default", description="240 + 24 episodes of 300 frames (~15-20 min on 2 cores).",
    episodes_train=240, episodes_test=24, length=300)
SMALL = MemoryMazeConfig(
    name="small", description="64 + 8 episodes of 300 frames, for demos (~4 min on 2 cores).",
    episodes_train=64, episodes_test=8, length=300)
# The demo's set until 2026-12-06: the agent keeps to the cells within 2 steps of where it
# started and, at half of its goals, turns on the spot by one and a half turns, so a place that
# left the view comes back within seconds, inside a 50-frame training window.
REVISITS = MemoryMazeConfig(
    name="revisits", description=(
        "64 + 8 episodes of 300 frames that keep to a neighbourhood and look around, so places "
        "come back within seconds (~4 min on 2 cores)."),
    episodes_train=64, episodes_test=8, length=300, home_radius=2, look_around_prob=0.5)
# Memory made as cheap as the maze allows: most frames are turns on the spot, so a view comes
# back every ~15 frames. The demo's set since 2026-12-06 midday: with recall reaching the
# context, the late frames keep their maze here, not on `revisits` (README, "A real run").
# Only 85 of 512 predicted frames of the 8 held-out videos revisit nothing, a thin control for
# the memory effect: `--clips_per_episode=3` scores 24 clips (665 such frames).
SPINS = MemoryMazeConfig(
    name="spins", description=(
        "64 + 8 episodes of 300 frames in which the agent moves between the cells within 1 step "
        "of its start and turns on the spot by 3 full turns at every goal, so most views come "
        "back ~15 frames later (~2 min on 2 cores)."),
    episodes_train=64, episodes_test=8, length=300, home_radius=1, look_around_prob=1.0,
    look_around_deg=1080.0)
# The demo's set at 32x32: the same walks as `revisits`, frames averaged over 2x2 blocks, so
# TECO's steps cost a quarter and a CPU trains several thousand of them in the demo's minutes.
REVISITS32 = MemoryMazeConfig(
    name="revisits32", description=(
        "revisits at 32x32: the same 64 + 8 walks, frames averaged over 2x2 pixel blocks "
        "(~2 min on 2 cores)."),
    episodes_train=64, episodes_test=8, length=300, home_radius=2, look_around_prob=0.5,
    frame_size=32)
TINY = MemoryMazeConfig(
    name="tiny", description="2 + 1 episodes of 16 frames, for tests.",
    episodes_train=2, episodes_test=1, length=16)


def _check_config(config: MemoryMazeConfig) -> None:
    if config.episodes_train < 1 or config.episodes_test < 1:
        raise ValueError(f"episodes_train and episodes_test must be >= 1, got "
                         f"{config.episodes_train} and {config.episodes_test}")
    if not 1 <= config.length <= generate.MAX_LENGTH:
        raise ValueError(f"length must be in [1, {generate.MAX_LENGTH}], got {config.length}")
    if config.seed < 0:
        raise ValueError(f"seed must be >= 0, got {config.seed}")
    if config.workers is not None and config.workers < 1:
        raise ValueError(f"workers must be >= 1 or None, got {config.workers}")
    if config.frame_size < 8 or generate.FRAME_SIZE % config.frame_size:
        raise ValueError(f"frame_size must divide {generate.FRAME_SIZE} and be >= 8, got "
                         f"{config.frame_size}")
    config.policy  # checks the policy's fields


class MemoryMaze(SaysWhatItBuilds, tfds.core.GeneratorBasedBuilder):
    """Memory Maze 9x9 walks: 64x64 frames (or frame_size), 6 actions, agent pose and maze layout."""

    SOURCE = "rendered here by the Memory Maze environment"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [DEFAULT, SMALL, REVISITS, SPINS, REVISITS32, TINY]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *, file_format: str | None = None, workers: int | None = None,
                 **kwargs):
        """workers: rendering processes for download_and_prepare (default config.workers)."""
        # array_record: random access by index through as_data_source(), no TensorFlow needed.
        super().__init__(file_format=file_format or "array_record", **kwargs)
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {workers}")
        self._workers = workers if workers is not None else self.builder_config.workers
        self._pool = None

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        t, s, m = c.length, c.frame_size, generate.MAZE_SIZE
        tensor = tfds.features.Tensor
        return self.dataset_info_from_configs(
            description=(
                "First-person walks through random 9x9 Memory Maze levels (DMLab-like), rendered "
                "locally: a policy walks to random cells"
                + (f" within {c.home_radius} steps of its start" if c.home_radius else "")
                + f" along shortest paths with {c.random_prob:.0%} random actions"
                + (f", turning on the spot by 1.5 turns at {c.look_around_prob:.0%} of its goals"
                   if c.look_around_prob else "")
                + ". actions[t] is the action that led to frame t; actions[0] = 0 (no-op)."),
            features=tfds.features.FeaturesDict({
                # zlib: without an encoding TFDS stores uint8 as int64 (8x larger).
                "video": tensor(shape=(t, s, s, 3), dtype=np.uint8, encoding="zlib"),
                "actions": tensor(shape=(t,), dtype=np.int32),
                "agent_pos": tensor(shape=(t, 2), dtype=np.float32),
                "agent_dir": tensor(shape=(t, 2), dtype=np.float32),
                "maze_layout": tensor(shape=(m, m), dtype=np.uint8, encoding="bytes"),
                "episode_id": tfds.features.Scalar(dtype=np.int64),
                "seed": tfds.features.Scalar(dtype=np.int64),
            }),
            # Record i of a split is episode i (loaders shuffle themselves).
            disable_shuffling=True,
            homepage="https://github.com/jurgisp/memory-maze",
        )

    def _download_and_prepare(self, dl_manager, download_config):
        _check_config(self.builder_config)
        # One pool (and one env per worker) for both splits: building an env takes ~5 s.
        with generate.EpisodePool(self._workers, policy=self.builder_config.policy) as pool:
            self._pool = pool
            try:
                return super()._download_and_prepare(dl_manager, download_config)
            finally:
                self._pool = None

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        return {"train": self._generate_examples("train", c.episodes_train),
                "test": self._generate_examples("test", c.episodes_test)}

    def _generate_examples(self, split: str, num_episodes: int):
        c = self.builder_config
        seeds = [generate.episode_seed(c.seed, split, i) for i in range(num_episodes)]
        for i, episode in enumerate(self._pool.episodes(seeds, c.length, desc=split)):
            episode["episode_id"] = np.int64(i)
            episode["video"] = downsample(episode["video"], c.frame_size)
            yield i, episode


def downsample(video_THWC: np.ndarray, size: int) -> np.ndarray:
    """uint8 frames averaged over square blocks down to `size` x `size` (rounded)."""
    t, h, w, c = video_THWC.shape
    if h == size and w == size:
        return video_THWC
    f = h // size
    blocks = video_THWC.reshape(t, size, f, size, f, c).astype(np.float32)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)


def get_config(config: str | MemoryMazeConfig) -> MemoryMazeConfig:
    """A listed config by name, or `config` itself; ValueError naming the choices otherwise."""
    if isinstance(config, MemoryMazeConfig):
        return config
    for known in MemoryMaze.BUILDER_CONFIGS:
        if known.name == config:
            return known
    names = [c.name for c in MemoryMaze.BUILDER_CONFIGS]
    raise ValueError(f"unknown memory_maze config {config!r}; choose one of {names} or pass a "
                     "MemoryMazeConfig")


def build(data_dir: str, config: str | MemoryMazeConfig = "small",
          workers: int | None = None) -> MemoryMaze:
    """Generates and writes the data set (no-op if already built); returns the builder.

    config: a listed name ("default", "small", "revisits", "spins", "revisits32", "tiny") or a
    MemoryMazeConfig with a new name.
    workers overrides config.workers (the records do not depend on it). Read the result with
    `build(...).as_data_source("train")`.
    """
    builder = MemoryMaze(config=_config_arg(get_config(config)), data_dir=data_dir,
                         workers=workers)
    builder.download_and_prepare()
    return builder


def _config_arg(config: MemoryMazeConfig) -> str | MemoryMazeConfig:
    for known in MemoryMaze.BUILDER_CONFIGS:
        if known.name == config.name:
            if known is not config:
                raise ValueError(f"a custom MemoryMazeConfig may not reuse the listed name "
                                 f"{config.name!r}; give it a new name")
            return config.name  # TFDS wants listed configs by name
    return config
