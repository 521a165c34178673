"""Memory Maze episodes: environment, shortest-path policy, rendering in worker processes.

No TensorFlow here, ever: MuJoCo rendering and TensorFlow in one process segfault (EGL and
OSMesa alike), so episodes are rendered in worker processes started with the `spawn` context
that import only numpy and memory_maze, and handed back as numpy arrays. `memory_maze` itself
is imported lazily, so the TFDS builder can import this module for its constants.

Episode layout (all arrays have length T = `length` along the first axis):

  video        uint8   [T, 64, 64, 3]  first-person frames; frame 0 is the reset observation
  actions      int32   [T]             actions[t] = the action whose step produced frame t
                                        (TECO's pairing); actions[0] = 0 (no-op), because
                                        frame 0 comes from the reset, not from an action
  agent_pos    float32 [T, 2]          (x, y) in maze-cell units, cell (i, j) spans [i, i+1)
  agent_dir    float32 [T, 2]          unit heading; "forward" moves agent_pos along it
  maze_layout  uint8   [9, 9]          1 = free cell, 0 = wall; indexed [y, x], y = 0 at the
                                        bottom (so layout[int(y), int(x)] is the agent's cell)
  seed         int64   []              the episode's seed (see `episode_seed`)

Actions: 0 no-op, 1 forward, 2 turn left, 3 turn right, 4 forward+left, 5 forward+right.

Determinism: an episode is a pure function of its seed. `reseed(env, seed)` puts a reused env
into exactly the state a fresh `memory_maze_9x9(seed=seed, ...)` has before its first reset
(labmaze's generator and the composer random state are both re-derived from `seed`, as
`memory_maze.tasks._memory_maze` does), so which worker renders which episode, and what it
rendered before, does not matter.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import io
import itertools
import logging
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

FRAME_SIZE = 64
NUM_ACTIONS = 6
ACTION_NAMES = ("noop", "forward", "left", "right", "forward_left", "forward_right")
MAZE_SIZE = 9
# memory_maze_9x9 ends an episode after 1,000 steps (250 s at 4 Hz); T frames need T - 1 steps.
MAX_LENGTH = 1000
DEFAULT_RANDOM_PROB = 0.1

_NOOP, _FORWARD, _LEFT, _RIGHT, _FORWARD_LEFT, _FORWARD_RIGHT = range(NUM_ACTIONS)
# One turn step rotates the agent by ~18 degrees (measured), plus a little momentum.
_TURN_IN_PLACE_DEG = 25.0
_TURN_WHILE_MOVING_DEG = 8.0

log = logging.getLogger(__name__)


def episode_seed(base_seed: int, split: str, index: int) -> int:
    """Seed of episode `index` of `split`: a stable hash of (base_seed, split, index), < 2**31."""
    if index < 0 or base_seed < 0:
        raise ValueError(f"base_seed and index must be >= 0, got {base_seed=} {index=}")
    # crc32 rather than hash(): Python salts str hashes per process.
    entropy = [int(base_seed), zlib.crc32(split.encode("utf-8")), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


def _set_render_env() -> None:
    # Software EGL from Mesa works headless here; both must be set before mujoco is imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")


def make_env(seed: int = 0, fast: bool = True):
    """The DMLab-like 9x9 maze: 64x64 frames, 6 discrete actions, global observables.

    fast=True drops the goal spheres' per-substep touch checks (see `set_target_checks`).
    """
    _set_render_env()
    # memory-maze imports gym 0.26, which prints an upgrade notice to stderr on import.
    with contextlib.redirect_stderr(io.StringIO()):
        from memory_maze import tasks

    env = tasks.memory_maze_9x9(
        seed=seed, global_observables=True, camera_resolution=FRAME_SIZE,
        target_color_in_image=False)
    if fast:
        set_target_checks(env, enabled=False)
    return env


def _composer_env(env):
    from dm_control import composer

    inner = env
    # memory_maze's wrappers forward attribute reads, so walk `.env` down to the composer env.
    while not isinstance(inner, composer.Environment):
        inner = inner.env
    return inner


def _skip_substep_hook(physics, random_state):
    pass  # composer drops hooks with an empty body from its per-substep hook list


def set_target_checks(env, enabled: bool) -> None:
    """Turns the goal spheres' per-substep touch checks on or off.

    Each of the 3 spheres scans every MuJoCo contact in Python after each of the 50 physics
    substeps per action; that is most of the stepping time. The touch only drives the reward and
    the choice of the next goal (neither is stored) and hides the sphere between substeps (it is
    shown again before the frame is rendered), so the frames do not change. Verified by
    `compare_fast_to_stock`.
    """
    base = _composer_env(env)
    for target in base.task._targets:
        if enabled:
            target.__dict__.pop("after_substep", None)
        else:
            target.after_substep = _skip_substep_hook
    base._hooks.refresh_entity_hooks()


def reseed(env, seed: int) -> None:
    """Makes the next reset identical to the first reset of a fresh env built with `seed`."""
    base = _composer_env(env)
    random_state = np.random.RandomState(seed)
    # Same order of draws as memory_maze.tasks._memory_maze: the arena's labmaze seed comes first,
    # the composer env then keeps using the same RandomState.
    maze_seed = random_state.randint(2147483648)
    maze = base.task._maze_arena.maze
    # labmaze's native generator cannot be reseeded: build a new one with the arena's settings
    # (MazeWithTargetsArena passes simplify=True and labmaze's defaults otherwise).
    fresh = type(maze)(
        height=maze.height, width=maze.width, max_rooms=maze.max_rooms,
        room_min_size=maze.room_min_size, room_max_size=maze.room_max_size,
        max_variations=maze.max_variations, spawns_per_room=maze.spawns_per_room,
        spawn_token=maze.spawn_token, objects_per_room=maze.objects_per_room,
        object_token=maze.object_token, simplify=True, random_seed=maze_seed)
    maze._native_maze = fresh._native_maze
    base.random_state.set_state(random_state.get_state())


def _cell(pos_xy: np.ndarray) -> tuple[int, int]:
    return int(pos_xy[0]), int(pos_xy[1])


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """How the walking policy behaves (a builder config holds one; the records depend on it).

    random_prob       share of uniformly random actions
    home_radius       0: goals anywhere in the maze; R > 0: only cells within R grid steps of the
                      start cell, so the agent keeps to one neighbourhood and sees it again and again
    look_around_prob  chance, on reaching a goal, of turning on the spot by `look_around_deg`
                      (more than a full turn: the views of the first turn come back in the second)
    """
    random_prob: float = DEFAULT_RANDOM_PROB
    home_radius: int = 0
    look_around_prob: float = 0.0
    look_around_deg: float = 540.0

    def __post_init__(self):
        if not 0.0 <= self.random_prob <= 1.0:
            raise ValueError(f"random_prob must be in [0, 1], got {self.random_prob}")
        if self.home_radius < 0:
            raise ValueError(f"home_radius must be >= 0, got {self.home_radius}")
        if not 0.0 <= self.look_around_prob <= 1.0:
            raise ValueError(f"look_around_prob must be in [0, 1], got {self.look_around_prob}")
        if self.look_around_deg <= 0:
            raise ValueError(f"look_around_deg must be > 0, got {self.look_around_deg}")


def grid_distances(layout: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Steps along free cells from `start` (x, y) to every cell, -1 where unreachable; [y, x]."""
    dist = np.full(layout.shape, -1, np.int64)
    dist[start[1], start[0]] = 0
    frontier = collections.deque([start])
    while frontier:
        x, y = frontier.popleft()
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if (0 <= ny < layout.shape[0] and 0 <= nx < layout.shape[1] and layout[ny, nx]
                    and dist[ny, nx] < 0):
                dist[ny, nx] = dist[y, x] + 1
                frontier.append((nx, ny))
    return dist


def _heading_deg(heading: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(heading[1], heading[0])))


class ShortestPathPolicy:
    """Walks to random free cells along shortest grid paths, with a few random actions.

    Purely random actions mostly stare at walls; this covers the maze like DMLab's random
    traversals. The path is re-planned from the current cell every step (BFS on 81 cells is
    cheap), so random actions and bumps into corners never derail it. `PolicySpec` can keep the
    goals near the start cell and add look-arounds at the goals (places then come back within
    seconds, which is what a model's memory is measured on).
    """

    def __init__(self, rng: np.random.Generator, spec: PolicySpec | float = PolicySpec()):
        if not isinstance(spec, PolicySpec):  # a bare random_prob
            spec = PolicySpec(random_prob=float(spec))
        self._rng = rng
        self._spec = spec
        self._goal = None
        self._goal_cells = None
        self._spin = None  # (action, degrees still to turn, last heading in degrees)

    def _new_goal(self, layout: np.ndarray, current: tuple[int, int]) -> tuple[int, int]:
        if self._goal_cells is None:
            free = layout > 0
            if self._spec.home_radius:
                dist = grid_distances(layout, current)
                free &= (dist >= 0) & (dist <= self._spec.home_radius)
            ys, xs = np.nonzero(free)
            self._goal_cells = [(int(x), int(y)) for x, y in zip(xs, ys)]
        cells = [c for c in self._goal_cells if c != current]
        if not cells:  # a neighbourhood of one cell: look around where it stands
            return current
        return cells[self._rng.integers(len(cells))]

    def _spinning(self, heading: np.ndarray) -> int | None:
        """The next look-around action, or None when there is no look-around under way."""
        if self._spin is None:
            return None
        action, left, last = self._spin
        now = _heading_deg(heading)
        left -= abs((now - last + 180.0) % 360.0 - 180.0)
        if left <= 0:
            self._spin = None
            return None
        self._spin = (action, left, now)
        return action

    def _start_spin(self, action: int, heading: np.ndarray) -> int:
        self._spin = (action, self._spec.look_around_deg, _heading_deg(heading))
        self._goal = None  # a new goal once the look-around is over
        return action

    def __call__(self, obs: dict) -> int:
        from memory_maze.oracle import breadth_first_search

        heading = np.asarray(obs["agent_dir"], np.float64)
        spin_action = self._spinning(heading)
        if self._rng.random() < self._spec.random_prob:
            return int(self._rng.integers(NUM_ACTIONS))
        if spin_action is not None:
            return spin_action
        layout = obs["maze_layout"]
        pos = np.asarray(obs["agent_pos"], np.float64)
        current = _cell(pos)
        if self._goal is None or self._goal == current:
            # (no draw when look-arounds are off: the plain walk's random stream stays as it was)
            if (self._goal == current and self._spec.look_around_prob > 0
                    and self._rng.random() < self._spec.look_around_prob):
                return self._start_spin(_LEFT if self._rng.random() < 0.5 else _RIGHT, heading)
            self._goal = self._new_goal(layout, current)
            if self._goal == current:
                return self._start_spin(_LEFT, heading)
        path = breadth_first_search(layout, current, self._goal)  # [(x, y), ...] from current
        if not path:  # off the free cells (never seen) or goal unreachable: pick another goal
            self._goal = None
            return int(self._rng.integers(NUM_ACTIONS))
        waypoint = np.asarray(path[1] if len(path) > 1 else path[0], np.float64) + 0.5
        to_go = waypoint - pos
        # Signed angle from heading to the waypoint; positive = counter-clockwise = "left".
        angle = np.degrees(np.arctan2(heading[0] * to_go[1] - heading[1] * to_go[0],
                                      heading @ to_go))
        if angle > _TURN_IN_PLACE_DEG:
            return _LEFT
        if angle < -_TURN_IN_PLACE_DEG:
            return _RIGHT
        if angle > _TURN_WHILE_MOVING_DEG:
            return _FORWARD_LEFT
        if angle < -_TURN_WHILE_MOVING_DEG:
            return _FORWARD_RIGHT
        return _FORWARD


def run_episode(env, seed: int, length: int, policy: PolicySpec | float = PolicySpec(),
                reseed_env: bool = True, with_reward: bool = False) -> dict[str, np.ndarray]:
    """Renders one episode of `length` frames (layout in the module docstring).

    reseed_env=False resets the env as it is (a fresh env's first episode is then the episode of
    the seed it was built with). with_reward adds `reward` float32 [T] (for checks only).
    """
    if not 1 <= length <= MAX_LENGTH:
        raise ValueError(f"length must be in [1, {MAX_LENGTH}], got {length}")
    if reseed_env:
        reseed(env, seed)
    # The policy's stream is separate from the env's, so the maze does not depend on the policy.
    walker = ShortestPathPolicy(np.random.default_rng([seed, 1]), policy)
    video = np.empty((length, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    actions = np.zeros((length,), np.int32)
    agent_pos = np.empty((length, 2), np.float32)
    agent_dir = np.empty((length, 2), np.float32)
    reward = np.zeros((length,), np.float32)
    obs = env.reset().observation
    layout = np.array(obs["maze_layout"], np.uint8)
    for t in range(length):
        if t > 0:
            actions[t] = walker(obs)
            step = env.step(int(actions[t]))
            obs = step.observation
            reward[t] = step.reward or 0.0
        video[t] = obs["image"]
        agent_pos[t] = obs["agent_pos"]
        agent_dir[t] = obs["agent_dir"]
    episode = dict(video=video, actions=actions, agent_pos=agent_pos, agent_dir=agent_dir,
                   maze_layout=layout, seed=np.int64(seed))
    if with_reward:
        episode["reward"] = reward
    return episode


def compare_fast_to_stock(seed: int, length: int) -> dict:
    """Stock env's first episode vs. the same env reseeded with checks off: identical arrays?

    One env serves both runs, which also checks that `reseed` after an episode reproduces a fresh
    env's first episode. Run it in a spawned process (it renders). Returns the match per array,
    the number of physics substeps of the stock run during which a sphere was touched (> 0: the
    comparison covers the case the fast env skips), the rewards and frames/s of both runs.
    """
    env = make_env(seed, fast=False)
    base = _composer_env(env)
    touched_substeps = [0]

    def count_touches(physics, random_state):
        del physics, random_state
        touched_substeps[0] += any(t.activated for t in base.task._targets)

    # Runs after the spheres' own checks: counts substeps during which a sphere was touched (and
    # hidden), i.e. the case the fast env skips.
    base.add_extra_hook("after_substep", count_touches)
    start = time.perf_counter()
    stock = run_episode(env, seed, length, reseed_env=False, with_reward=True)
    stock_s = time.perf_counter() - start
    stock_touched = touched_substeps[0]
    set_target_checks(env, enabled=False)
    start = time.perf_counter()
    fast = run_episode(env, seed, length, reseed_env=True, with_reward=True)
    fast_s = time.perf_counter() - start
    keys = ("video", "actions", "agent_pos", "agent_dir", "maze_layout")
    return dict(
        identical={k: bool(np.array_equal(stock[k], fast[k])) for k in keys},
        stock_touched_substeps=int(stock_touched),
        stock_reward=float(stock["reward"].sum()),
        fast_reward=float(fast["reward"].sum()),
        # Includes the reset (~2 s), as a real episode does.
        stock_frames_per_s=length / stock_s, fast_frames_per_s=length / fast_s)


# ---- worker pool ----------------------------------------------------------------------------

_WORKER_ENV = None


def _quiet_dm_control() -> None:
    # dm_control warns on every episode reset that the maze's fixed props have no free joint.
    from absl import logging as absl_logging

    absl_logging.get_absl_logger().addFilter(
        lambda record: "Cannot set velocity on Entity with no free joint" not in str(record.msg))


def _worker_init(fast: bool) -> None:
    global _WORKER_ENV
    _quiet_dm_control()
    _WORKER_ENV = make_env(0, fast=fast)


def _worker_episode(job: tuple[int, int, PolicySpec]) -> dict[str, np.ndarray]:
    seed, length, policy = job
    return run_episode(_WORKER_ENV, seed, length, policy)


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class EpisodePool:
    """`workers` spawned processes, each holding one reused env; episodes come back in order.

        with EpisodePool(workers=2) as pool:
          for episode in pool.episodes(seeds, length=300):
            ...

    A process pool executor rather than multiprocessing.Pool: a worker that dies (a renderer
    segfault) raises here instead of hanging the build.
    """

    def __init__(self, workers: int | None = None, fast: bool = True,
                 policy: PolicySpec | float = PolicySpec(), log_every_s: float = 10.0):
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._fast = fast
        self._policy = policy if isinstance(policy, PolicySpec) else PolicySpec(float(policy))
        self._log_every_s = log_every_s
        self._executor = None

    def __enter__(self) -> "EpisodePool":
        _set_render_env()  # spawned children inherit os.environ
        self._executor = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init, initargs=(self._fast,))
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def episodes(self, seeds: Sequence[int], length: int,
                 desc: str = "episodes") -> Iterator[dict[str, np.ndarray]]:
        """Yields run_episode(seed, length) for every seed, in the order of `seeds`."""
        if self._executor is None:
            raise ValueError("EpisodePool.episodes() needs the pool entered: "
                             "`with EpisodePool(...) as pool`")
        if not 1 <= length <= MAX_LENGTH:
            raise ValueError(f"length must be in [1, {MAX_LENGTH}], got {length}")
        jobs = iter([(int(s), int(length), self._policy) for s in seeds])
        # A bounded window of submitted episodes keeps every worker busy without piling up frames.
        pending = collections.deque(
            self._executor.submit(_worker_episode, job)
            for job in itertools.islice(jobs, 2 * self.workers))
        start = last = time.perf_counter()
        done = 0
        while pending:
            try:
                episode = pending.popleft().result()
            except concurrent.futures.process.BrokenProcessPool as e:
                raise RuntimeError(
                    "a Memory Maze rendering worker died (MUJOCO_GL="
                    f"{os.environ.get('MUJOCO_GL')}); check that memory_maze renders headless "
                    "here, e.g. with benchmarks/memory_maze_generate.py") from e
            for job in itertools.islice(jobs, 1):
                pending.append(self._executor.submit(_worker_episode, job))
            done += 1
            now = time.perf_counter()
            if now - last >= self._log_every_s or not pending:
                last = now
                log.info("memory_maze %s: %d/%d episodes, %.2f episodes/s, %.0f frames/s "
                         "(%d workers)", desc, done, len(seeds), done / (now - start),
                         done * length / (now - start), self.workers)
            yield episode
