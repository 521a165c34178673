"""The whole pipeline on the tiny configs: data -> VQ-GAN -> codes -> TECO -> samples -> eval."""
import json

import numpy as np
import pytest

from teco import eval as teco_eval
from teco import pipeline


def strict_json(path):
    """Standard JSON only: NaN / Infinity, which Python writes by default, fail here."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_scores_of_identical_frames_are_null_in_standard_json():
    """PSNR of a frame repeated exactly is inf: left out of the means, null where nothing is left."""
    psnr_NT = np.array([[20.0, np.inf, 10.0], [30.0, np.inf, np.inf]])
    mean, curve = teco_eval._mean_and_curve([psnr_NT[:1], psnr_NT[1:]], 2)
    assert mean == 20.0 and curve == [25.0, None, 10.0]
    text = teco_eval.json_text({"psnr": curve, "fvd": float("nan"), "n": [1, (2.5, -np.inf)]})
    assert json.loads(text) == {"psnr": [25.0, None, 10.0], "fvd": None, "n": [1, [2.5, None]]}


def test_tiny_pipeline_end_to_end(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("first")
    result = pipeline.run(tmp_path, "tiny", None)
    assert result["num_videos"] == 2 and result["predicted_frames"] == 8
    for key in ("psnr", "ssim"):
        assert np.isfinite(result[key])
    assert np.isfinite(result["fvd"]["pooled"]) and result["fvd"]["authors"]["chunk"] == 2
    assert strict_json(tmp_path / "metrics.json")["checkpoint_step"] == 6
    assert strict_json(tmp_path / "eval" / "metrics.json")["checkpoint_step"] == 6
    curves = strict_json(tmp_path / "eval" / "curves.json")
    assert len(curves["psnr"]) == 8 and len(curves["repeat_last"]["psnr"]) == 8
    assert np.isfinite(result["repeat_last"]["ssim"])
    assert (tmp_path / "eval" / "curves.png").stat().st_size > 0
    world = result["world_identity"]  # 2 held-out episodes: one 8-frame window each
    assert world["episodes"] == 2 and world["start"] == [2] and len(world["generated"]) == 1
    assert (tmp_path / "eval" / "identity.png").stat().st_size > 0
    use = result["action_use"]  # the 8-frame window [2, 10) predicts frames 3..9
    assert use["frames"] == 2 * 7 and use["episodes"] == 2 and np.isfinite(use["mean"])
    with np.load(tmp_path / "samples" / "samples.npz") as f:
        assert f["video"].shape == (2, 10, 16, 16, 3) and f["video"].dtype == np.uint8
        assert int(f["n_context"]) == 2
    assert (tmp_path / "samples" / "videos" / "grid.gif").stat().st_size > 0
    assert (tmp_path / "filmstrip.png").stat().st_size > 0
    for stage in ("vqgan", "teco"):
        assert list((tmp_path / stage).glob("events.out.tfevents*")), stage
    # A second run finds every training stage finished and the codes up to date.
    assert pipeline.finished(tmp_path / "vqgan", 6) and pipeline.finished(tmp_path / "teco", 6)
    stamp = json.loads((tmp_path / "codes" / "stamp.json").read_text())
    assert pipeline._stamped(tmp_path / "codes" / "stamp.json", **stamp)
    # The folder moved elsewhere keeps its stages: nothing is trained or encoded again.
    moved = tmp_path_factory.mktemp("moved") / "demo"
    tmp_path.rename(moved)
    tmp_path, codes = moved, moved / "codes" / "train.array_record-00000-of-00001"
    codes_written = codes.stat().st_mtime_ns
    # --teco_steps past the finished run trains TECO on from its last checkpoint and re-scores.
    vq_ckpts = sorted(p.name for p in (tmp_path / "vqgan" / "checkpoints").iterdir())
    # --clips_per_episode=2 scores two clips cut from each held-out episode: twice the videos.
    assert pipeline.main([f"--workdir={tmp_path}", "--preset=tiny", "--teco_steps=8",
                          "--clips_per_episode=2"]) == 0
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["checkpoint_step"] == 8
    assert again["num_videos"] == 4 and again["clips_per_episode"] == 2
    assert sorted(p.name for p in (tmp_path / "vqgan" / "checkpoints").iterdir()) == vq_ckpts
    assert codes.stat().st_mtime_ns == codes_written
    teco_config = json.loads((tmp_path / "teco" / "config.json").read_text())
    assert teco_config["vqvae_ckpt"] == str(tmp_path / "vqgan")
    assert teco_config["data"]["data_dir"] == str(tmp_path / "codes")
    meta = json.loads((tmp_path / "codes" / "codes_meta.json").read_text())
    assert meta["vqgan_workdir"] == str(tmp_path / "vqgan")
    assert meta["data"]["data_dir"] == str(tmp_path / "data")


def test_bad_teco_steps_is_one_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        pipeline.main([f"--workdir={tmp_path / 'w'}", "--teco_steps=0"])
    assert e.value.code == 2
    assert "argument --teco_steps: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_eta_leaves_out_the_stages_a_rerun_reuses(capsys):
    minutes = dict(data=2, vqgan=11, encode=3, teco=24, eval=5)
    pipeline.StageClock(minutes).start("data", "data", "x")
    assert "about 45 min left" in capsys.readouterr().out
    clock = pipeline.StageClock(minutes, reused={"data", "vqgan", "encode", "teco"})
    clock.start("data", "data", "x")
    assert "about 5 min left" in capsys.readouterr().out
    clock.start("eval", "eval", "x")
    assert "about 5 min left" in capsys.readouterr().out


def test_eta_follows_the_pace_of_the_stages_run_here(capsys):
    minutes = dict(data=2, vqgan=10, encode=3, teco=24, eval=5)
    now = [1000.0]
    clock = pipeline.StageClock(minutes, reused={"data"}, clock=lambda: now[0])
    clock.start("data", "data", "x")
    assert "about 42 min left on a 2-core CPU" in capsys.readouterr().out
    clock.start("vqgan", "VQ-GAN", "x")
    assert clock.pace() is None      # a reused stage's (near) zero minutes say nothing
    now[0] += 15 * 60                # the VQ-GAN took 15 min of its 10: this machine is slower
    clock.start("encode", "encode", "x")
    out = capsys.readouterr().out
    assert "15.0 min so far, about 48 min left at this machine's pace (1.50x" in out
    now[0] += 3 * 60                 # encode on time: 18 min for 13 -> 1.38x
    clock.start("teco", "TECO", "x", timed=False)   # resumed from a checkpoint: not timed
    assert "about 40 min left" in capsys.readouterr().out
    now[0] += 60                     # a minute of resumed training leaves the pace alone
    clock.start("eval", "eval", "x")
    assert clock.pace() == pytest.approx(18 / 13)
    assert "about 7 min left" in capsys.readouterr().out


def test_a_teco_run_without_its_vqgan_is_refused_untouched(capsys, tmp_path):
    """A finished TECO whose VQ-GAN is gone was trained on codes a new VQ-GAN would not make."""
    step = tmp_path / "teco" / "checkpoints" / "900"
    step.mkdir(parents=True)
    (step / "weights").write_bytes(b"saved")
    assert pipeline.main([f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "holds a TECO trained on the codes of a VQ-GAN" in err and "move" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teco"]
    assert (step / "weights").read_bytes() == b"saved"


@pytest.mark.parametrize("stage", ["vqgan", "teco"])
def test_a_stage_trained_on_another_data_set_is_refused_untouched(capsys, tmp_path, stage):
    """A workdir of the earlier demo preset (`revisits`) is not reused for today's (`spins`)."""
    from teco import checkpoint
    from teco.config import load_config

    c = load_config("configs/memory_maze.py")
    c.data.name = "memory_maze/revisits"
    checkpoint.save_config(tmp_path / stage, c)
    before = (tmp_path / stage / checkpoint.CONFIG_FILE).read_bytes()
    assert pipeline.main([f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "holds a run on memory_maze/revisits, and this preset trains on memory_maze/spins" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [stage]
    assert (tmp_path / stage / checkpoint.CONFIG_FILE).read_bytes() == before


def test_headline_states_the_scores_and_the_place_memory():
    result = {"num_videos": 8, "predicted_frames": 64, "context_frames": 36, "psnr": 17.4,
              "ssim": 0.57, "lpips": None, "fvd": {"pooled": 1440.2},
              "revisits": {"revisit_frames": 40, "predicted_frames": 512, "psnr_revisit": 16.0,
                           "psnr_other": 17.5, "psnr_gain": -0.25}}
    text = pipeline.headline(result)
    assert "8 held-out videos, 64 frames after 36: PSNR 17.400, SSIM 0.570, LPIPS n/a" in text
    assert "FVD 1440.2" in text
    assert "repeated" not in text
    still = {"psnr": 18.25, "ssim": 0.6, "lpips": None}
    assert ("the last context frame repeated instead: PSNR 18.250, SSIM 0.600, LPIPS n/a"
            in pipeline.headline(dict(result, repeat_last=still)))
    assert "40 of 512 predicted frames" in text and "-0.250 dB" in text
    assert "place memory" not in pipeline.headline(dict(result, revisits=None))


@pytest.mark.parametrize("interval, verdict", [
    ((0.02, 0.05), "the model follows the actions"),
    ((-0.001, 0.002), "the model does not follow its actions")])
def test_headline_says_whether_the_model_follows_the_actions(interval, verdict):
    result = {"num_videos": 8, "predicted_frames": 64, "context_frames": 36,
              "action_use": {"mean": sum(interval) / 2, "interval": list(interval), "level": 0.95,
                             "frames": 392, "videos": 8, "episodes": 8}}
    line = [x for x in pipeline.headline(result).splitlines() if x.startswith("actions:")]
    assert len(line) == 1 and f"[{interval[0]:+.4f}, {interval[1]:+.4f}]: {verdict}" in line[0]
    assert "over 8 videos" in line[0]
    assert "actions:" not in pipeline.headline(dict(result, action_use=None))


@pytest.mark.parametrize("accuracy, interval, verdict", [
    (0.75, (0.5, 1.0), "the late frames keep their maze's colours"),
    (0.75, (0.125, 1.0), "above chance, but its interval reaches chance: 8 videos cannot tell "
                         "(--clips_per_episode=3 scores three times as many)"),
    (0.125, (0.0, 0.375), "at chance: the late frames do not keep their maze's colours")])
def test_headline_states_the_world_identity_of_the_last_window(accuracy, interval, verdict):
    window = lambda acc, lo, hi: {"accuracy": acc, "interval": [lo, hi]}
    world = {"start": [36, 52, 68, 84], "window": 16, "episodes": 8, "chance": 0.125,
             "real": [window(0.875, 0.625, 1.0)] * 4,
             "generated": [window(0.5, 0.25, 0.75)] * 3 + [window(accuracy, *interval)]}
    result = {"num_videos": 8, "predicted_frames": 64, "context_frames": 36, "psnr": 17.4,
              "ssim": 0.57, "lpips": 0.3, "world_identity": world}
    line = pipeline.headline(result).splitlines()[-1]
    assert line.startswith("world identity, frames 84-99: the generated frames' colours name "
                           f"their own episode of 8 in {accuracy:.0%} [")
    assert "(real frames 88% [62%, 100%]; chance 12%)" in line
    assert line.endswith(verdict)
    if accuracy == 0.75 and interval[0] <= world["chance"]:  # more clips already: no advice
        line = pipeline.headline(dict(result, num_videos=24)).splitlines()[-1]
        assert line.endswith("24 videos cannot tell")
    world["short_context"] = [window(0.125, 0.0, 0.375)] * 4
    assert ", generated from the last context frames 12% [0%, 38%];" in (
        pipeline.headline(result).splitlines()[-1])
    for kind, motion in (("real", 12.6), ("generated", 4.25)):
        world[kind] = [dict(w, motion=motion) for w in world[kind]]
    assert pipeline.headline(result).splitlines()[-1] == (
        "motion in those frames: the generated ones change by 4.2 per pixel from frame to "
        "frame, the real ones by 12.6")
    for kind, share in (("real", 0.125), ("generated", 0.375)):
        world[kind] = [dict(w, most_named=share) for w in world[kind]]
    assert pipeline.headline(result).splitlines()[-1] == (
        "the episode named most often in those frames: by 38% of the generated windows, 12% of "
        "the real ones (evenly spread: 12%)")


def test_headline_states_the_memory_check():
    check = {"short_context": 8, "revisit_frames": 51, "psnr_full": 18.2, "psnr_short": 16.9,
             "psnr_gain": 1.3, "psnr_gain_control": 0.1}
    result = {"num_videos": 8, "predicted_frames": 64, "context_frames": 36, "psnr": 17.4,
              "ssim": 0.57, "lpips": 0.3,
              "revisits": {"revisit_frames": 60, "predicted_frames": 512, "psnr_revisit": 18.0,
                           "psnr_other": 17.5, "psnr_gain": 0.5, "memory_check": check}}
    text = pipeline.headline(result)
    assert "on 51 revisits of places seen before the last 8 context frames" in text
    assert "PSNR 18.200 with the whole context vs 16.900 from the last 8" in text
    assert "gain 1.300 dB" in text and "revisit nothing 0.100 dB" in text


@pytest.mark.parametrize("interval, verdict", [((0.2, 1.4), "the model keeps the places it saw"),
                                               ((-0.5, 0.9), "no memory of places shown"),
                                               ((-1.2, -0.1), "the early context hurts revisits")])
def test_headline_judges_the_memory_effect_by_its_interval(interval, verdict):
    check = {"short_context": 8, "revisit_frames": 51, "revisit_frames_in_window": 30,
             "psnr_full": 18.2, "psnr_short": 16.9, "psnr_gain": 1.3, "psnr_gain_control": 0.1,
             "psnr_memory_effect": {"effect": 0.8, "interval": list(interval), "level": 0.95,
                                    "videos": 8}}
    result = {"num_videos": 8, "predicted_frames": 64, "context_frames": 36, "psnr": 17.4,
              "ssim": 0.57, "lpips": 0.3,
              "revisits": {"revisit_frames": 60, "predicted_frames": 512, "psnr_revisit": 18.0,
                           "psnr_other": 17.5, "psnr_gain": 0.5, "memory_check": check}}
    line = pipeline.headline(result).splitlines()[-1]
    assert line.startswith("memory effect (gain on the 30 revisits inside the model's window")
    assert f"+0.800 dB, 95% interval over 8 videos [{interval[0]:+.3f}, {interval[1]:+.3f}]" in line
    assert line.endswith(verdict)
    # Clips cut from the same episodes: the interval resampled the episodes, and says so.
    check["psnr_memory_effect"].update(videos=24, episodes=8)
    line = pipeline.headline(result).splitlines()[-1]
    assert "95% interval over 24 videos from 8 episodes [" in line
    # The teacher-forced probe has its own line, judged the same way.
    check["nll_memory_effect"] = {"effect": 0.0123, "interval": [0.004, 0.02], "level": 0.95,
                                  "videos": 24, "episodes": 8}
    line = pipeline.headline(result).splitlines()[-1]
    assert line.startswith("likelihood memory effect (the real frames' NLL per token from the "
                           "last 8 context frames")
    assert line.endswith("+0.0123 nats, 95% interval over 24 videos from 8 episodes "
                         "[+0.0040, +0.0200]: the model keeps the places it saw")
