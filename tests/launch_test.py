"""Launch plans and dry runs: nothing is created, submitted or contacted.

The launchers send every command through one runner; the tests use the printing dry-run runner
or a recording runner, so no subprocess is ever started.
"""
import shlex
import shutil
import subprocess

import pytest

from launch import plan as planlib
from launch import slurm, tpu_vm
from teco.config import ConfigError

TPU_ARGS = ["--name=teco-test", "--zone=us-central2-b", "--accelerator_type=v4-32",
            "--config=configs/dmlab.py", "--workdir=gs://bucket/dmlab/teco",
            "--config.vqvae_ckpt=gs://bucket/dmlab/vqgan"]
SLURM_ARGS = ["--nodes=2", "--gpus_per_node=8", "--config=configs/dmlab.py",
              "--workdir=/shared/dmlab/teco", "--config.vqvae_ckpt=/shared/dmlab/vqgan"]


_bash_syntax_check = subprocess.run   # kept before the fixture below forbids subprocess.run


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to run {args}")
    monkeypatch.setattr(subprocess, "run", refuse)


def recorder():
    calls = []
    return calls, lambda cmd: calls.append(list(cmd))


def split_output(out: str) -> tuple[list[str], list[list[str]]]:
    lines = [l for l in out.splitlines() if l]
    comments = [l[2:] for l in lines if l.startswith("# ")]
    return comments, [shlex.split(l) for l in lines if not l.startswith("#")]


@pytest.mark.parametrize("accel, devices, hosts", [
    ("v2-8", 8, 1), ("v3-8", 8, 1), ("v3-32", 32, 4), ("v4-8", 4, 1), ("v4-32", 16, 4),
    ("v5p-64", 32, 8), ("v5litepod-4", 4, 1), ("v5litepod-8", 8, 1), ("v5litepod-16", 16, 4),
    ("v6e-256", 256, 64)])
def test_tpu_device_counts(accel, devices, hosts):
    t = planlib.tpu_target(accel)
    assert (t.devices, t.hosts, t.platform) == (devices, hosts, "tpu")


@pytest.mark.parametrize("accel", ["v4-30", "v9-8", "v5litepod-6", "tpu"])
def test_bad_accelerator_type_is_named(accel):
    with pytest.raises(ValueError, match="accelerator_type"):
        planlib.tpu_target(accel)


def test_devices_per_host_override():
    assert planlib.tpu_target("v5litepod-16", devices_per_host=8).hosts == 2
    with pytest.raises(ValueError, match="devices_per_host"):
        planlib.tpu_target("v4-32", devices_per_host=3)


def test_plan_v4_32():
    p = planlib.make_plan("configs/dmlab.py", {"batch_size": "64"}, planlib.tpu_target("v4-32"))
    assert (p.target.devices, p.target.hosts, p.target.devices_per_host) == (16, 4, 4)
    assert p.mesh == {"data": 16, "fsdp": 1, "model": 1}
    assert (p.batch_size, p.per_host_batch, p.per_shard_batch) == (64, 16, 4)
    assert p.train_args("gs://b/w") == ["python", "-m", "teco.train", "--config=configs/dmlab.py",
                                        "--workdir=gs://b/w", "--config.batch_size=64"]


def test_plan_fsdp_and_model_axes():
    p = planlib.make_plan("configs/habitat.py", {"mesh.fsdp": "4", "mesh.model": "4"},
                          planlib.gpu_target(2, 8))
    assert p.mesh == {"data": 1, "fsdp": 4, "model": 4}
    assert (p.per_host_batch, p.per_shard_batch) == (16, 8)
    p = planlib.make_plan("configs/habitat.py", {"mesh.model": "16"}, planlib.gpu_target(2, 8))
    assert any("spans nodes" in n for n in p.notes)


@pytest.mark.parametrize("overrides, key", [
    ({"batch_size": "12"}, "config.batch_size"),        # 12 over 16 data-parallel shards
    ({"mesh.model": "3"}, "config.mesh"),                # 3 does not divide 16 devices
    ({"batch_sise": "8"}, "config.batch_sise"),          # typo: unknown key
    ({"batch_size": "big"}, "config.batch_size"),        # wrong type
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        planlib.make_plan("configs/dmlab.py", overrides, planlib.tpu_target("v4-32"))


def test_batch_must_split_over_hosts():
    # data-parallel size 2 divides 6, but 4 hosts cannot each load 6 / 4 examples.
    with pytest.raises(ConfigError, match=r"config\.batch_size: 6 is not divisible by the 4 hosts"):
        planlib.make_plan("configs/dmlab.py", {"batch_size": "6", "mesh.model": "8"},
                          planlib.tpu_target("v4-32"))


def test_tpu_dry_run_v4_32(capsys):
    assert tpu_vm.main(TPU_ARGS + ["--dry_run"]) == 0
    comments, cmds = split_output(capsys.readouterr().out)
    text = "\n".join(comments)
    assert "16 devices" in text and "4 hosts" in text
    assert "per host 8" in text           # dmlab's global batch 32 over 4 hosts
    create = cmds[0]
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "teco-test"]
    assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create
    assert "--version=tpu-ubuntu2204-base" in create
    assert cmds[1][0] == "tar" and cmds[1][-2:] == [str(planlib.ROOT), "."]
    scp = cmds[2]
    assert scp[4] == "scp" and "teco-test:teco.tar.gz" in scp and "--worker=all" in scp
    ssh = [c for c in cmds if c[4:5] == ["ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
    setup = ssh[0][-1]
    assert "tar -xzf teco.tar.gz" in setup and "pip install -q -e '.[tpu]'" in setup
    train = ssh[1][-1].removeprefix("--command=")
    assert train.startswith("cd teco && ")
    assert shlex.split(train.removeprefix("cd teco && ")) == [
        ".venv/bin/python", "-m", "teco.train", "--config=configs/dmlab.py",
        "--workdir=gs://bucket/dmlab/teco", "--config.vqvae_ckpt=gs://bucket/dmlab/vqgan"]


def test_tpu_real_path_goes_through_the_runner(capsys):
    assert tpu_vm.main(TPU_ARGS + ["--dry_run"]) == 0
    _, printed = split_output(capsys.readouterr().out)
    calls, runner = recorder()
    assert tpu_vm.main(TPU_ARGS, runner=runner) == 0
    assert calls == printed


def test_tpu_git_clone_detach_and_project(capsys):
    args = TPU_ARGS + ["--repo=https://example.org/teco.git", "--ref=v1", "--detach",
                       "--project=my-proj", "--skip_create", "--dry_run"]
    assert tpu_vm.main(args) == 0
    _, cmds = split_output(capsys.readouterr().out)
    assert [c[4] for c in cmds] == ["ssh", "ssh"]       # no create, no tarball, no scp
    assert all("--project=my-proj" in c for c in cmds)
    assert "git clone https://example.org/teco.git teco" in cmds[0][-1]
    assert "fetch origin v1" in cmds[0][-1]
    assert cmds[1][-1].endswith("> train.log 2>&1 < /dev/null &")


def test_tpu_delete(capsys):
    assert tpu_vm.main(["--name=teco-test", "--zone=us-central2-b", "--delete", "--dry_run"]) == 0
    _, cmds = split_output(capsys.readouterr().out)
    assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "teco-test",
                     "--zone=us-central2-b", "--quiet"]]


@pytest.mark.parametrize("module, args", [(tpu_vm, TPU_ARGS), (slurm, SLURM_ARGS)])
def test_bad_config_fails_before_any_command(module, args, capsys):
    calls, runner = recorder()
    for extra in (["--dry_run"], []):
        with pytest.raises(SystemExit) as e:
            module.main(args + ["--config.batch_size=12"] + extra, runner=runner)
        assert e.value.code == 2
        out, err = capsys.readouterr()
        assert out == "" and "config.batch_size: 12" in err
    assert calls == []


def test_unknown_argument_is_rejected(capsys):
    with pytest.raises(SystemExit):
        tpu_vm.main(TPU_ARGS + ["--batch_size=8", "--dry_run"])
    assert "--config.KEY=VALUE" in capsys.readouterr().err


def test_slurm_dry_run_2x8(capsys):
    assert slurm.main(SLURM_ARGS + ["--time=72:00:00", "--install", "--dry_run"]) == 0
    out = capsys.readouterr().out
    script, _, submit = out.partition("# submit with:\n")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for header in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                   "#SBATCH --gpus-per-node=8", "#SBATCH --time=72:00:00"):
        assert header in lines
    # sbatch reads #SBATCH lines only up to the first command.
    first_command = next(i for i, l in enumerate(lines) if l and not l.startswith("#"))
    assert max(i for i, l in enumerate(lines) if l.startswith("#SBATCH")) < first_command
    assert "16 devices" in script and "per host 16" in script
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in lines
    assert "srun --nodes=1 --ntasks=1 python -m pip install -q -e '.[cuda]'" in lines
    train = [shlex.split(l) for l in lines if l.startswith("srun --ntasks-per-node=1")]
    assert train == [["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "python", "-m",
                      "teco.train", "--config=configs/dmlab.py", "--workdir=/shared/dmlab/teco",
                      "--config.vqvae_ckpt=/shared/dmlab/vqgan"]]
    assert shlex.split(submit) == ["sbatch", str(planlib.ROOT / "slurm-teco.sbatch")]
    if shutil.which("bash"):   # `bash -n` parses the script and runs nothing
        r = _bash_syntax_check(["bash", "-n"], input=script, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_slurm_real_path_writes_and_submits_through_runner(tmp_path, capsys):
    path = tmp_path / "job.sbatch"
    calls, runner = recorder()
    assert slurm.main(SLURM_ARGS + [f"--script={path}"], runner=runner) == 0
    assert calls == [["sbatch", str(path)]]
    assert slurm.main(SLURM_ARGS + [f"--script={path}", "--dry_run"]) == 0
    dry = capsys.readouterr().out.partition("# submit with:\n")[0]
    assert path.read_text() == dry
