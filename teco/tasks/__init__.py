"""Stages the trainer drives (`teco.tasks.base.Task`): 'vqgan' (stage 1) and 'teco' (stage 2)."""
from __future__ import annotations

import importlib

from teco.tasks.base import ConfigKeyed, Task, TrainState

# config.model -> module defining `make_task(config) -> Task`; imported on demand so a stage's
# dependencies load only when it runs.
TASKS = {"vqgan": "teco.tasks.vqgan", "teco": "teco.tasks.teco"}


def get_task(config) -> Task:
    name = config.model
    if name not in TASKS:
        raise ValueError(f"config.model must be one of {sorted(TASKS)}, got {name!r}")
    return importlib.import_module(TASKS[name]).make_task(config)


__all__ = ["TASKS", "ConfigKeyed", "Task", "TrainState", "get_task"]
