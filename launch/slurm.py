"""Train teco on a SLURM GPU cluster: one process per node, each seeing all of its node's GPUs.

    python -m launch.slurm --nodes=2 --gpus_per_node=8 --config=configs/dmlab.py \
        --workdir=/shared/runs/dmlab/teco --config.vqvae_ckpt=/shared/runs/dmlab/vqgan --dry_run

Writes an sbatch script and submits it with `sbatch` (`--dry_run` prints both instead). The
plan (devices, mesh, per-node batch) is checked before anything is written. The project
directory and the workdir must be on a filesystem every node shares.

How the processes find each other: `teco.train` calls `jax.distributed.initialize()`, which
reads the rank and process count from SLURM's variables under `srun`. The script sets
JAX_COORDINATOR_ADDRESS to the job's first node, and JAX_LOCAL_DEVICE_IDS to every GPU of the
node: without it JAX's SLURM detection gives each process only GPU `SLURM_LOCALID` (= 0 with
one task per node), i.e. one GPU per node.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from launch import plan as planlib

Runner = Callable[[Sequence[str]], None]


def run_subprocess(cmd: Sequence[str]) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    subprocess.run(list(cmd), check=True)


def print_command(cmd: Sequence[str]) -> None:
    print(shlex.join(cmd), flush=True)


def sbatch_script(plan: planlib.Plan, args) -> str:
    """The batch script for `plan` (a `gpu_target`), as text."""
    t = plan.target
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={t.hosts}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={t.devices_per_host}",
        f"#SBATCH --output={args.output}",
    ]
    for flag in ("cpus_per_task", "time", "partition", "account"):
        value = getattr(args, flag)
        if value:
            header.append(f"#SBATCH --{flag.replace('_', '-')}={value}")
    port = str(args.port) if args.port else "$((SLURM_JOB_ID % 4096 + 61440))"
    gpu_ids = ",".join(str(i) for i in range(t.devices_per_host))
    srun = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if args.cpus_per_task:
        # Some SLURM versions do not pass the job's --cpus-per-task on to srun steps.
        srun.append(f"--cpus-per-task={args.cpus_per_task}")
    lines = header + [
        "",
        *(f"# {line}" for line in plan.summary_lines()),
        "set -euo pipefail",
        f"cd {shlex.quote(str(args.project_dir))}",
        "",
        "# The first node of the job hosts JAX's coordinator; the port follows the job id so",
        "# jobs sharing a node do not collide.",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'export JAX_COORDINATOR_ADDRESS="${{head_node}}:{port}"',
        "# One process per node drives all of the node's GPUs.",
        f"export JAX_LOCAL_DEVICE_IDS={gpu_ids}",
    ]
    if args.install:
        # Once, on one node: the project directory (and its environment) is shared.
        lines += ["", shlex.join(["srun", "--nodes=1", "--ntasks=1", args.python, "-m", "pip",
                                  "install", "-q", "-e", ".[cuda]"])]
    lines += ["", shlex.join(srun + plan.train_args(args.workdir, python=args.python)), ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch.slurm", allow_abbrev=False, description=__doc__.split("\n\n")[0],
        epilog="Other arguments: config overrides passed on to teco.train, --config.KEY=VALUE.")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus_per_node", type=int, required=True)
    p.add_argument("--config", required=True, help="config file[:variant], e.g. configs/dmlab.py")
    p.add_argument("--workdir", required=True, help="run directory on the shared filesystem")
    p.add_argument("--job_name", default="teco")
    p.add_argument("--time", default="", help="time limit, e.g. 72:00:00 (default: cluster's)")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--cpus_per_task", type=int, default=0, help="CPUs per node's process")
    p.add_argument("--output", default="slurm-%x-%j.out", help="SLURM log file pattern")
    p.add_argument("--python", default="python", help="interpreter on the nodes (e.g. a venv's)")
    p.add_argument("--project_dir", default=str(planlib.ROOT), help="project path on the nodes")
    p.add_argument("--port", type=int, default=0, help="coordinator port (default: from job id)")
    p.add_argument("--install", action="store_true", help="pip install -e '.[cuda]' first")
    p.add_argument("--script", default="", help="where to write the script "
                   "(default: PROJECT_DIR/slurm-JOB_NAME.sbatch)")
    p.add_argument("--dry_run", action="store_true", help="print the script and the sbatch "
                   "command; write and submit nothing")
    return p


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = planlib.parse_overrides(rest)
        plan = planlib.make_plan(args.config, overrides,
                                 planlib.gpu_target(args.nodes, args.gpus_per_node))
    except ValueError as e:
        parser.error(str(e))
    script = sbatch_script(plan, args)
    path = Path(args.script or Path(args.project_dir) / f"slurm-{args.job_name}.sbatch")
    if args.dry_run:
        print(script, end="", flush=True)
        print("# submit with:")
        print_command(["sbatch", str(path)])
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    (runner or run_subprocess)(["sbatch", str(path)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
