"""Memory Maze (DMLab-like 3-D mazes) rendered locally into a TFDS data set `memory_maze`.

Build:  .venv/bin/python -m datasets.memory_maze --data_dir=data/tfds --config=small
See memory_maze_dataset_builder.py for configs and the record layout, generate.py for the
environment, the policy and the action convention.

The builder is imported lazily: spawned rendering workers import this package, and must not
pull in tensorflow_datasets (MuJoCo and TensorFlow in one process segfault).
"""
_BUILDER_NAMES = ("MemoryMaze", "MemoryMazeConfig", "build", "get_config")


def __getattr__(name):
    if name in _BUILDER_NAMES:
        from datasets.memory_maze import memory_maze_dataset_builder
        return getattr(memory_maze_dataset_builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
