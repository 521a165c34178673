"""Procedural videos with actions and memory, numpy only (for tests and smoke runs).

An agent moves over a fixed, smooth, randomly coloured 2-D world (a torus); each frame is the
window around it, each action moves it one step. Places that leave the view look the same when
the agent comes back, so the data has the long-range structure TECO is built for, at any size.
"""
from __future__ import annotations

import numpy as np

N_ACTIONS = 5  # 0 stay, 1 up, 2 down, 3 left, 4 right
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


def make_world(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth periodic colour texture [size, size, 3] in uint8 (sums of random sinusoids)."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    world = np.zeros((size, size, 3))
    for _ in range(6):
        fy, fx = rng.integers(1, 5, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        colour = rng.uniform(-1, 1, size=3)
        world += np.sin(2 * np.pi * (fy * yy + fx * xx) / size + phase)[..., None] * colour
    world = (world - world.min()) / (np.ptp(world) + 1e-8)
    return (world * 255).round().astype(np.uint8)


def episode(seed: int, *, length: int, image_size: int) -> dict[str, np.ndarray]:
    """One episode: video uint8 [T, S, S, 3], actions int32 [T] (actions[t] led to frame t;
    actions[0] = 0), positions int32 [T, 2]."""
    rng = np.random.default_rng(seed)
    world_size = 4 * image_size
    world = make_world(rng, world_size)
    step = max(1, image_size // 8)
    pos = rng.integers(0, world_size, size=2)
    actions = np.zeros(length, np.int32)
    positions = np.zeros((length, 2), np.int32)
    video = np.zeros((length, image_size, image_size, 3), np.uint8)
    current = int(rng.integers(1, N_ACTIONS))
    for t in range(length):
        if t > 0:
            if rng.random() < 0.25:  # keep heading most of the time, like a walker
                current = int(rng.integers(0, N_ACTIONS))
            actions[t] = current
            pos = (pos + step * _MOVES[current]) % world_size
        positions[t] = pos
        rows = (pos[0] + np.arange(image_size)) % world_size
        cols = (pos[1] + np.arange(image_size)) % world_size
        video[t] = world[np.ix_(rows, cols)]
    return {"video": video, "actions": actions, "positions": positions}
