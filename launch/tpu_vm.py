"""Train teco on a Cloud TPU VM or pod slice: create it, copy and install the project on every
worker, and start `teco.train` on all workers at once (one process per host; `teco.train` calls
`jax.distributed.initialize()`, which finds the other hosts of the slice by itself).

    python -m launch.tpu_vm --name=teco-v4 --zone=us-central2-b --accelerator_type=v4-32 \
        --config=configs/dmlab.py --workdir=gs://BUCKET/dmlab/teco \
        --config.vqvae_ckpt=gs://BUCKET/dmlab/vqgan --dry_run
    python -m launch.tpu_vm --name=teco-v4 --zone=us-central2-b --delete

The plan (hosts, devices, mesh, per-host batch) is computed and checked before anything is
created; `--dry_run` prints it as `#` lines, then every command, shell-quoted, one per line.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from launch import plan as planlib

Runner = Callable[[Sequence[str]], None]

# Left out of the tarball: environments, history, data and outputs (the workers read data and
# write checkpoints through shared storage, e.g. a gs:// bucket).
# `./name` is anchored at the project root (tar runs on `.`), so teco/data.py stays.
TAR_EXCLUDES = ("./.venv", "./.git", "./data", "./workdirs", "./outputs", "__pycache__", "*.pyc",
                ".pytest_cache", "*.tar.gz")


def run_subprocess(cmd: Sequence[str]) -> None:
    """The real runner: each command must succeed before the next one starts."""
    print("+ " + shlex.join(cmd), flush=True)
    subprocess.run(list(cmd), check=True)


def print_command(cmd: Sequence[str]) -> None:
    """The dry-run runner."""
    print(shlex.join(cmd), flush=True)


def _gcloud(verb: str, args) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def _ssh_all(args, command: str) -> list[str]:
    return _gcloud("ssh", args) + ["--worker=all", f"--command={command}"]


def _scp_all(args, local: str, remote: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{args.name}:{remote}",
           f"--zone={args.zone}", "--worker=all"]
    return cmd + ([f"--project={args.project}"] if args.project else [])


def tarball_path(name: str) -> str:
    return str(Path(tempfile.gettempdir()) / f"teco-{name}.tar.gz")


def setup_command(args) -> str:
    """Shell run on every worker: get the sources into `remote_dir`, make a venv, install."""
    d = shlex.quote(args.remote_dir)
    if args.repo:
        get = (f"(test -d {d}/.git || git clone {shlex.quote(args.repo)} {d}) && "
               f"git -C {d} fetch origin {shlex.quote(args.ref)} && "
               f"git -C {d} checkout --detach FETCH_HEAD")
    else:
        get = f"mkdir -p {d} && tar -xzf teco.tar.gz -C {d} && rm teco.tar.gz"
    py = shlex.quote(args.python)
    steps = [get, f"cd {d}"]
    if args.python.startswith("python3."):
        # TPU images ship an older Python than the project needs; install it only if missing.
        steps.append(f"(command -v {py} >/dev/null || (sudo apt-get update -qq && "
                     f"sudo apt-get install -y -qq {py} {py}-venv))")
    steps += [f"{py} -m venv .venv", ".venv/bin/pip install -q -U pip",
              ".venv/bin/pip install -q -e '.[tpu]'"]
    return " && ".join(steps)


def train_command(plan: planlib.Plan, args) -> str:
    train = shlex.join(plan.train_args(args.workdir, python=".venv/bin/python"))
    if args.detach:
        # Keeps training after the ssh session ends; the log stays on each worker.
        train = f"nohup {train} > train.log 2>&1 < /dev/null &"
    return f"cd {shlex.quote(args.remote_dir)} && {train}"


def commands(plan: planlib.Plan | None, args) -> list[list[str]]:
    """Every command of the launch (or of `--delete`), in order."""
    if args.delete:
        return [_gcloud("delete", args) + ["--quiet"]]
    cmds = []
    if not args.skip_create:
        family = planlib.tpu_family(args.accelerator_type)
        version = args.version or planlib.TPU_RUNTIME_VERSIONS[family]
        create = _gcloud("create", args) + [f"--accelerator-type={args.accelerator_type}",
                                            f"--version={version}"]
        if args.spot:
            create.append("--spot")
        cmds.append(create)
    if not args.skip_setup:
        if not args.repo:
            tar = tarball_path(args.name)
            cmds.append(["tar", "-czf", tar, *(f"--exclude={e}" for e in TAR_EXCLUDES),
                         "-C", str(planlib.ROOT), "."])
            cmds.append(_scp_all(args, tar, "teco.tar.gz"))
        cmds.append(_ssh_all(args, setup_command(args)))
    cmds.append(_ssh_all(args, train_command(plan, args)))
    return cmds


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch.tpu_vm", allow_abbrev=False, description=__doc__.split("\n\n")[0],
        epilog="Other arguments: config overrides passed on to teco.train, --config.KEY=VALUE.")
    p.add_argument("--name", required=True, help="TPU VM / slice name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="", help="GCP project (default: gcloud's)")
    p.add_argument("--accelerator_type", default="", help="e.g. v3-8, v4-32, v5p-64, v5litepod-16")
    p.add_argument("--version", default="", help="TPU software version (default: by family)")
    p.add_argument("--devices_per_host", type=int, default=None,
                   help="override the devices per host assumed for the accelerator type")
    p.add_argument("--spot", action="store_true", help="create a Spot (preemptible) TPU")
    p.add_argument("--config", default="", help="config file[:variant], e.g. configs/dmlab.py")
    p.add_argument("--workdir", default="", help="run directory; gs://... for multi-host slices")
    p.add_argument("--repo", default="", help="git URL to clone on the workers instead of "
                   "copying this checkout")
    p.add_argument("--ref", default="main", help="branch, tag or commit of --repo")
    p.add_argument("--remote_dir", default="teco", help="project directory on the workers")
    p.add_argument("--python", default="python3.11", help="interpreter the workers' venv uses")
    p.add_argument("--skip_create", action="store_true", help="the TPU already exists")
    p.add_argument("--skip_setup", action="store_true", help="the project is already installed")
    p.add_argument("--detach", action="store_true",
                   help="keep training after ssh returns (log: REMOTE_DIR/train.log)")
    p.add_argument("--dry_run", action="store_true", help="print the commands, create nothing")
    p.add_argument("--delete", action="store_true", help="delete the TPU and exit")
    return p


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.dry_run:
        runner = print_command
    elif runner is None:
        runner = run_subprocess
    plan = None
    if not args.delete:
        for flag in ("accelerator_type", "config", "workdir"):
            if not getattr(args, flag):
                parser.error(f"--{flag} is required (unless --delete)")
        try:
            overrides = planlib.parse_overrides(rest)
            target = planlib.tpu_target(args.accelerator_type, args.devices_per_host)
            plan = planlib.make_plan(args.config, overrides, target)
        except ValueError as e:
            parser.error(str(e))
        if not plan.config_inside_project:
            parser.error(f"--config: {args.config} is outside the project {planlib.ROOT}; "
                         f"the workers only get the project's files")
        lines = plan.summary_lines()
        if plan.target.hosts > 1 and not args.workdir.startswith("gs://"):
            lines.append(f"note: --workdir={args.workdir} is not gs://; every host must see the "
                         f"same directory for checkpoints")
        for line in lines:
            print(f"# {line}", flush=True)
    elif rest:
        parser.error(f"unrecognised arguments with --delete: {' '.join(rest)}")
    for cmd in commands(plan, args):
        runner(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
