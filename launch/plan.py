"""What a launch will look like, checked before anything is created or submitted.

A `Target` is the hardware (a TPU accelerator type, or SLURM nodes x GPUs per node); `make_plan`
loads the config with its overrides, resolves the mesh for the target's device count and checks
it with `teco.config.validate`, so a batch that does not split over the devices fails here, with
the key named, and not an hour later on a pod slice. Pure Python: JAX's backend is never started.

JAX devices per TPU type (what `jax.device_count()` reports):
  v2-N, v3-N     N counts TensorCores; every core is a device; 8 per host (4 chips x 2 cores).
  v4-N, v5p-N    N counts TensorCores, but a chip's 2 cores form one "megacore" device:
                 N/2 devices, 4 chips per host (v4-32 = 16 devices on 4 hosts).
  v5litepod-N,   N counts chips (one TensorCore each): 1, 4 or 8 on one host; larger slices
  v6e-N          have 4 chips per host. Pass `devices_per_host` if your slice differs.
"""
from __future__ import annotations

import ast
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The software image to create each TPU family with (`gcloud ... create --version`).
TPU_RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v6e": "v2-alpha-tpuv6e",
}
_TPU_TYPE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)$")


@dataclass(frozen=True)
class Target:
    """The machines a run gets: `hosts` processes, each driving `devices_per_host` devices."""
    name: str
    platform: str  # 'tpu' or 'gpu'
    hosts: int
    devices_per_host: int

    @property
    def devices(self) -> int:
        return self.hosts * self.devices_per_host


def tpu_family(accelerator_type: str) -> str:
    m = _TPU_TYPE.match(accelerator_type.strip().lower())
    if not m:
        raise ValueError(
            f"accelerator_type: {accelerator_type!r} is not a known TPU type; expected one of "
            f"v2-N, v3-N, v4-N, v5p-N, v5litepod-N, v6e-N (e.g. v4-32)")
    return m.group(1)


def tpu_target(accelerator_type: str, devices_per_host: int | None = None) -> Target:
    """Hosts and JAX devices of a TPU VM or pod slice (see the module docstring)."""
    family = tpu_family(accelerator_type)
    n = int(accelerator_type.strip().lower().rsplit("-", 1)[1])
    if family in ("v2", "v3", "v4", "v5p"):
        if n < 8 or n % 8:
            raise ValueError(f"accelerator_type: {accelerator_type!r}: {family} sizes count "
                             f"TensorCores and are multiples of 8 (e.g. {family}-8, {family}-32)")
        # v4/v5p: two TensorCores per chip act as one device (megacore).
        devices, per_host = (n, 8) if family in ("v2", "v3") else (n // 2, 4)
    else:
        if not (n in (1, 4, 8) or (n > 8 and n % 4 == 0)):
            raise ValueError(f"accelerator_type: {accelerator_type!r}: {family} sizes count "
                             f"chips: 1, 4, 8 (one host) or a multiple of 4 above 8")
        devices, per_host = n, (n if n <= 8 else 4)
    if devices_per_host is not None:
        if devices_per_host < 1 or devices % devices_per_host:
            raise ValueError(f"devices_per_host: {devices_per_host} does not divide the "
                             f"{devices} devices of {accelerator_type}")
        per_host = devices_per_host
    per_host = min(per_host, devices)
    return Target(accelerator_type, "tpu", devices // per_host, per_host)


def gpu_target(nodes: int, gpus_per_node: int) -> Target:
    """A SLURM allocation: one process per node, each seeing all of the node's GPUs."""
    if nodes < 1:
        raise ValueError(f"nodes: must be at least 1, got {nodes}")
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node: must be at least 1, got {gpus_per_node}")
    return Target(f"{nodes} nodes x {gpus_per_node} GPUs", "gpu", nodes, gpus_per_node)


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`['--config.batch_size=64', ...]` -> `{'batch_size': '64'}` (values kept as written)."""
    out = {}
    for arg in args:
        if not arg.startswith("--config.") or "=" not in arg:
            raise ValueError(f"unrecognised argument {arg!r}; config overrides are written "
                             f"--config.KEY=VALUE (e.g. --config.batch_size=64)")
        key, value = arg[len("--config."):].split("=", 1)
        if not key:
            raise ValueError(f"unrecognised argument {arg!r}: empty config key")
        out[key] = value
    return out


def _parse_value(text: str):
    """Command-line text -> Python value, as ml_collections' flags read it."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _set_override(config, key: str, text: str) -> None:
    from teco.config import ConfigError

    target = config
    *head, last = key.split(".")
    try:
        for part in head:
            target = target[part]
        if last not in target:
            raise KeyError(last)
        target[last] = _parse_value(text)
    except (KeyError, AttributeError):
        raise ConfigError(f"config.{key}: unknown config key") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{key}: cannot be set to {text!r}: {e}") from None


def _resolve_config(config: str) -> tuple[Path, str, str]:
    """(local file, variant arg, path as the project-relative `--config=` for teco.train)."""
    from teco.config import ConfigError

    file, sep, arg = config.partition(":")
    path = Path(file).expanduser()
    if not path.is_absolute() and not path.is_file():
        path = ROOT / file
    if not path.is_file():
        raise ConfigError(f"--config: file {file} does not exist")
    path = path.resolve()
    try:
        shown = str(path.relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return path, arg, shown + (sep + arg if sep else "")


@dataclass(frozen=True)
class Plan:
    """A checked launch: the config, the target, and how devices and the batch split."""
    config: str                               # `--config=` value, project-relative when inside it
    overrides: tuple[tuple[str, str], ...]    # (key, value as written), passed on verbatim
    target: Target
    mesh: dict[str, int]
    batch_size: int                           # global, across all hosts
    per_host_batch: int                       # what each process loads
    per_shard_batch: int                      # examples per data-parallel shard (data x fsdp)
    notes: tuple[str, ...] = ()

    @property
    def config_inside_project(self) -> bool:
        return not Path(self.config.partition(":")[0]).is_absolute()

    def override_flags(self) -> list[str]:
        return [f"--config.{k}={v}" for k, v in self.overrides]

    def train_args(self, workdir: str, python: str = "python") -> list[str]:
        return [python, "-m", "teco.train", f"--config={self.config}", f"--workdir={workdir}",
                *self.override_flags()]

    def summary_lines(self) -> list[str]:
        t, m = self.target, self.mesh
        return [
            f"target {t.name} ({t.platform}): {t.hosts} hosts x {t.devices_per_host} devices "
            f"per host = {t.devices} devices",
            f"mesh data={m['data']} fsdp={m['fsdp']} model={m['model']}",
            f"batch global {self.batch_size}, per host {self.per_host_batch}, "
            f"per data-parallel shard {self.per_shard_batch}",
            *(f"note: {n}" for n in self.notes),
        ]


def make_plan(config: str, overrides: dict[str, str] | Sequence[tuple[str, str]] | None,
              target: Target) -> Plan:
    """Loads `config` (`path[:variant]`) with its overrides and checks it against `target`.

    Raises `teco.config.ConfigError` (a ValueError) naming the key when the config cannot run
    on the target's devices and hosts.
    """
    if str(ROOT) not in sys.path:  # configs import `configs.common` and `teco.sharding`
        sys.path.insert(0, str(ROOT))
    from teco.config import ConfigError, load_config, validate
    from teco.sharding import BATCH_AXES, MESH_AXES, mesh_shape_from_config

    items = tuple((overrides or {}).items() if isinstance(overrides, dict) else overrides or ())
    path, arg, shown = _resolve_config(config)
    cfg = load_config(str(path) + (f":{arg}" if arg else ""))
    for key, text in items:
        _set_override(cfg, key, text)

    validate(cfg, target.devices)
    mesh = dict(zip(MESH_AXES, mesh_shape_from_config(cfg.mesh, target.devices)))
    batch = int(cfg.batch_size)
    if batch % target.hosts:
        raise ConfigError(
            f"config.batch_size: {batch} is not divisible by the {target.hosts} hosts of "
            f"{target.name} (each host loads batch_size / hosts examples)")
    dp = math.prod(mesh[a] for a in BATCH_AXES)
    notes = []
    # A TPU slice's interconnect (ICI) spans its hosts; GPU nodes talk over the slower network.
    if target.platform == "gpu" and mesh["model"] > target.devices_per_host:
        notes.append(f"mesh.model={mesh['model']} spans nodes ({target.devices_per_host} GPUs "
                     f"per node): its collectives cross the slower inter-node network")
    return Plan(config=shown, overrides=items, target=target, mesh=mesh, batch_size=batch,
                per_host_batch=batch // target.hosts, per_shard_batch=batch // dp,
                notes=tuple(notes))
