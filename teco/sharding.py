"""Device mesh, logical-axis rules and the shardings of state and batches.

Models name the axes of their parameters logically (`embed`, `mlp`, `heads`, ...) with
`logical(init, names)`; a config's `logical_axis_rules` maps those names to the mesh axes
`data`, `fsdp` and `model`. Changing the parallelism is a config change only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
# The batch is split over every axis that holds a copy of the data (data and fsdp).
BATCH_AXES = ("data", "fsdp")

# Logical names used by the models. Parameters:
#   embed (model width), mlp (MLP hidden), heads, kv (per-head dim), vocab (code tables),
#   conv_in / conv_out (conv channels), codebook (code index), None (replicated).
# Activations (optional constraints): act_batch, act_heads, act_mlp.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("act_batch", BATCH_AXES),
    ("act_heads", "model"),
    ("act_mlp", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("codebook", None),
)


def logical(init, names: Sequence[str | None]):
    """Wraps a parameter initializer so the parameter carries logical axis names."""
    return nnx.with_partitioning(init, tuple(names))


def mesh_shape_from_config(mesh_config, n_devices: int) -> tuple[int, int, int]:
    """Resolves `{data, fsdp, model}` sizes; one of them may be -1 (fills the rest)."""
    sizes = [int(mesh_config[name]) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one of {MESH_AXES} may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(
                f"mesh: {n_devices} devices are not divisible by the fixed axes "
                f"{dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ValueError(
            f"mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"{n_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape_from_config(mesh_config, len(devices))
    # Auto axes: jit propagates shardings from in/out_shardings and constraints (GSPMD).
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def _is_spec(x) -> bool:
    return isinstance(x, P)


def logical_to_mesh_specs(spec_tree, rules):
    """Maps a tree of logical PartitionSpecs to mesh-axis PartitionSpecs."""
    rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)
    return jax.tree.map(lambda p: nn.logical_to_mesh_axes(p, rules), spec_tree, is_leaf=_is_spec)


def state_shardings(abstract_state, mesh: Mesh, rules):
    """NamedShardings for an (abstract) nnx.State, from the logical names on its variables.

    An axis whose size the mesh axis does not divide is replicated instead (small tables and
    the tiny test models), so any model fits any mesh.
    """
    specs = logical_to_mesh_specs(nnx.get_partition_spec(abstract_state), rules)

    def fit(spec, leaf):
        shape = getattr(leaf, "shape", ())
        if not isinstance(spec, P):
            return NamedSharding(mesh, P())
        axes = []
        for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
            names = (axis,) if isinstance(axis, str) else (axis or ())
            size = math.prod(mesh.shape[n] for n in names)
            axes.append(axis if names and dim % size == 0 else None)
        return NamedSharding(mesh, P(*axes))

    leaves = jax.tree.map(lambda v: v, abstract_state)
    return jax.tree.map(fit, specs, leaves, is_leaf=_is_spec)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data-holding mesh axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def process_batch_rows(mesh: Mesh, global_batch: int) -> list[int]:
    """The rows of a global batch that this process's devices hold, in order: what this
    process loads for `jax.make_array_from_process_local_data(batch_sharding(mesh), ...)`.

    Every row when the data axes stay within the process; processes whose devices are
    replicas of each other (a model axis across processes) get the same rows.
    """
    dp = data_parallel_size(mesh)
    if global_batch % dp:
        raise ValueError(f"batch_size={global_batch} is not divisible by the data-parallel "
                         f"size {dp}")
    rows = set()
    for index in batch_sharding(mesh).addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(*index[0].indices(global_batch)))
    return sorted(rows)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
