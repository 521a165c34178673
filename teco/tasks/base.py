"""What the trainer (`teco.train`) needs from a stage: the `Task` protocol and the train state.

A task owns one stage's networks, losses and steps; the trainer owns the mesh, data, jit,
checkpoints, logging and the step loop. The contract:

- `__init__(config)` builds nothing heavy; `graphdef`s are made lazily from abstract models.
- `init_state(rng) -> TrainState` is pure: the trainer runs it under `jax.eval_shape`, derives
  shardings from the logical axis names on the parameters (and on the optimizer state, which
  mirrors them), then runs it under `jax.jit(..., out_shardings=...)` so nothing exists unsharded.
- `constants() -> pytree` holds frozen inputs that are not trained and not checkpointed
  (pretrained LPIPS weights, a frozen stage-1 model); the trainer places them once (replicated)
  and passes them to every step instead of baking them into the compiled program.
- `phase(step) -> hashable` names the variant of the train step for a step (the VQ-GAN has a
  'no GAN' and a 'GAN' phase); the trainer compiles one program per phase it meets. A stage
  with a single step returns a constant.
- `train_step(state, batch, consts, *, phase) -> (state, metrics)`: pure, jit-able; `metrics`
  is a flat dict of float32 scalars and must contain 'loss'. `state.step` is advanced by it.
- `eval_step(state, batch, consts) -> pytree` (per batch), `eval_summary(list of host pytrees)
  -> dict[str, float]` (over the eval batches); `best_metric` names the summary value whose
  minimum marks the best checkpoint.
- `visualize(state, batch, consts) -> dict[str, uint8 array [N, H, W, 3]]` for TensorBoard.
- `batch_keys` lists the batch entries the steps read; `frames_per_example` turns steps/s into
  frames/s.
- Tasks are static arguments of the trainer's jitted functions: they must hash and compare by
  their config (inherit `ConfigKeyed`), so equal configs share compiled programs.

TECO (stage 2) uses `TrainState` with one optimizer (`opt_state`) and `extra={}`; the VQ-GAN
adds its discriminator and its code-usage statistics in `extra`.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. A pytree: checkpointed as a whole by `teco.checkpoint`."""

    step: jax.Array             # int32 [], number of updates applied
    params: Any                 # nnx.State of the trained network (Variables keep logical names)
    opt_state: Any              # optax state of `params`
    rng: jax.Array              # uint32 [2], raw key data (checkpoint-friendly)
    extra: Any = flax.struct.field(default_factory=dict)  # task-specific pytrees


def next_rng(state: TrainState) -> tuple[jax.Array, jax.Array]:
    """(key for this step, raw key data to store): keys are split off the stored key."""
    key = jax.random.wrap_key_data(state.rng)
    new, this = jax.random.split(key)
    return this, jax.random.key_data(new)


class ConfigKeyed:
    """Hash and equality by (class, config): what `jax.jit` needs of a static argument."""

    config: Any

    def _static_key(self):
        key = self.__dict__.get("_static_key_cache")
        if key is None:  # computed once: jit hashes static arguments on every call
            key = (type(self).__qualname__, self.config.to_json_best_effort(sort_keys=True))
            self.__dict__["_static_key_cache"] = key
        return key

    def __hash__(self):
        return hash(self._static_key())

    def __eq__(self, other):
        return type(other) is type(self) and self._static_key() == other._static_key()


@runtime_checkable
class Task(Protocol):
    config: Any
    batch_keys: tuple[str, ...]
    best_metric: str
    frames_per_example: int

    def init_state(self, rng: jax.Array) -> TrainState: ...

    def constants(self) -> Any: ...

    def phase(self, step: int) -> Hashable: ...

    def train_step(self, state: TrainState, batch: Mapping[str, jax.Array], consts: Any, *,
                   phase: Hashable) -> tuple[TrainState, dict[str, jax.Array]]: ...

    def eval_step(self, state: TrainState, batch: Mapping[str, jax.Array], consts: Any) -> Any: ...

    def eval_summary(self, outputs: Sequence[Any]) -> dict[str, float]: ...

    def visualize(self, state: TrainState, batch: Mapping[str, jax.Array],
                  consts: Any) -> dict[str, Any]: ...
