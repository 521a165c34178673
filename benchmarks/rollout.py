"""Long-horizon rollout speed, cached vs. no-cache reference, and FVD feature throughput (not a test).

    .venv/bin/python benchmarks/rollout.py [--configs dmlab memory_maze] [--frames 300] \
        [--context 36] [--reference_frames dmlab=24] [--fvd]

For each config (dmlab at batch 1, memory_maze at batch 8 by default) a TECO of the config's
shapes with random parameters (rollout speed does not depend on training) imagines
`frames - context` frames after `context` random context codes, with random actions:

- cached: `teco.rollout.rollout` (key/value cache, one `lax.scan`) jitted, compiled with
  `.lower().compile()` (timed apart), then run `--repeats` times over the full rollout.
- reference: `teco.rollout.rollout_reference` (the whole temporal transformer over the window for
  every frame). It jits its per-frame function on every call, so compilation is measured with
  JAX's compile-time monitoring events and subtracted from the wall time; the number of
  compilations of that per-frame function is reported (1, or 2 when the window slides).
  Its cost per frame is constant within each regime (the transformer always spans `seq_len`
  frames; past the window every frame also re-encodes the window), so `--reference_frames K`
  times at most K frames of each regime and extrapolates to the full rollout; the JSON says what
  was timed. Without it every frame is timed.

Seconds per generated frame are per time step (one frame for each of the batch's videos).
Each config (and the FVD measurement) runs in its own child process, one after another, so peak
RSS is per case. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (TECO config, its VQ-GAN config, default batch size)
CONFIGS = {
    "dmlab": ("configs/dmlab.py", "configs/dmlab_vqgan.py", 1),
    "memory_maze": ("configs/memory_maze.py", "configs/memory_maze_vqgan.py", 8),
    "tiny": ("configs/dmlab.py:tiny", "configs/dmlab_vqgan.py:tiny", 2),
}
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def _log(msg: str) -> None:
    print(f"[rollout benchmark {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class CompileMonitor:
    """Sums JAX's trace/lower/compile durations while active and counts backend compilations."""

    def __init__(self):
        self.seconds = 0.0
        self.compiles: dict[str, int] = {}

    def _listener(self, event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            self.seconds += duration
        if event == COMPILE_EVENTS[-1]:
            name = str(kwargs.get("fun_name", "?"))
            self.compiles[name] = self.compiles.get(name, 0) + 1

    def __enter__(self):
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listener)


def build(name: str, batch: int, context: int, frames: int, seed: int, init: str = "random"):
    """(config, model, table, codes [B, C, h, w], actions [B, frames]) with random values;
    init='zeros' gives zero parameters without compiling the initialisers (smoke tests)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import teco  # noqa: F401  (disables eager sharding)
    from teco import checkpoint
    from teco.config import load_config
    from teco.models.teco import teco_from_config, teco_shell

    config_path, vq_path, _ = CONFIGS[name]
    config = load_config(str(ROOT / config_path))
    vq_config = load_config(str(ROOT / vq_path))
    facts = checkpoint.vqgan_facts(vq_config)
    latent = (facts["latent_size"], facts["latent_size"])

    # The rbg generator compiles the initialisers about twice as fast as threefry.
    def make():
        return teco_from_config(config, facts["n_codes"], facts["embedding_dim"], latent,
                                rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))

    if init == "zeros":
        model = teco_shell(config, facts["n_codes"], facts["embedding_dim"], latent)
    elif init == "random":
        graphdef, _ = nnx.split(nnx.eval_shape(make))
        model = nnx.merge(graphdef, jax.jit(lambda: nnx.split(make())[1])())
    else:
        raise ValueError(f"init must be 'random' or 'zeros', got {init!r}")
    k_table, k_codes, k_act = jax.random.split(jax.random.key(seed + 1), 3)
    table = jax.random.normal(k_table, (facts["n_codes"], facts["embedding_dim"]), jnp.float32)
    codes = jax.random.randint(k_codes, (batch, context) + latent, 0, facts["n_codes"], jnp.int32)
    actions = jax.random.randint(k_act, (batch, frames), 0, config.action_dim, jnp.int32)
    return config, model, table, codes, actions


def time_cached(model, table, codes, actions, n_new: int, spec, repeats: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from teco import rollout

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, table, codes, actions, key):
        return rollout.rollout(nnx.merge(graphdef, state), table, codes, actions, key,
                               n_new=n_new, spec=spec)

    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = run.lower(state, table, codes, actions, key).compile()
    compile_s = time.perf_counter() - start
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        out = compiled(state, table, codes, actions, jax.random.fold_in(key, i))
        out.block_until_ready()
        times.append(time.perf_counter() - start)
        _log(f"cached rollout {i + 1}/{repeats}: {times[-1]:.1f} s")
    assert out.shape[1] == codes.shape[1] + n_new
    run_s = float(np.median(times))
    return {"frames_timed": n_new, "repeats": repeats, "compile_s": round(compile_s, 2),
            "run_s": [round(t, 2) for t in times], "s_per_frame": round(run_s / n_new, 4),
            "method": "full rollout (context encoding and cache prefill included) timed "
                      "after compilation; median over repeats"}


def _reference_once(model, table, codes, actions, n_new: int, spec) -> dict:
    import jax

    from teco import rollout

    with CompileMonitor() as mon:
        start = time.perf_counter()
        out = rollout.rollout_reference(model, table, codes, actions, jax.random.key(0),
                                        n_new=n_new, spec=spec)
        out.block_until_ready()
        wall = time.perf_counter() - start
    return {"frames_timed": n_new, "wall_s": round(wall, 2), "compile_s": round(mon.seconds, 2),
            "run_s": round(wall - mon.seconds, 2),
            "s_per_frame": round((wall - mon.seconds) / n_new, 4),
            "frame_fn_compiles": mon.compiles.get("jit(frame)", 0),
            "all_compiles": sum(mon.compiles.values())}


def time_reference(model, table, codes, actions, n_new: int, spec, limit: int | None) -> dict:
    import jax.numpy as jnp

    c = codes.shape[1]
    window = model.seq_len
    n_plain = max(0, min(c + n_new, window) - c)   # frames generated before the window slides
    n_slide = n_new - n_plain
    if limit is None or limit >= n_new:
        res = _reference_once(model, table, codes, actions, n_new, spec)
        res.update(n_frames_before_slide=n_plain, n_frames_sliding=n_slide,
                   method="every frame timed in one call; compile time (JAX monitoring "
                          "events) subtracted from the wall time. When the window slides, the "
                          "sliding variant compiles while queued frames still run (async "
                          "dispatch), so run_s can be low by at most that overlap")
        return res
    parts, est_run = {}, 0.0
    if n_plain:
        k = min(limit, n_plain)
        _log(f"reference: {k} frames before the window slides")
        parts["before_slide"] = _reference_once(model, table, codes, actions[:, :c + k], k, spec)
        est_run += n_plain * parts["before_slide"]["s_per_frame"]
    if n_slide:
        # A context of a whole window makes every generated frame a sliding one.
        k = min(limit, n_slide)
        _log(f"reference: {k} sliding frames")
        reps = -(-window // c)
        codes_w = jnp.concatenate([codes] * reps, axis=1)[:, :window]
        acts_w = jnp.concatenate([actions] * (-(-(window + k) // actions.shape[1])), axis=1)
        parts["sliding"] = _reference_once(model, table, codes_w, acts_w[:, :window + k], k, spec)
        est_run += n_slide * parts["sliding"]["s_per_frame"]
    return {"frames_timed": sum(p["frames_timed"] for p in parts.values()),
            "n_frames_before_slide": n_plain, "n_frames_sliding": n_slide,
            "estimated_run_s": round(est_run, 2), "s_per_frame": round(est_run / n_new, 4),
            "compile_s": round(sum(p["compile_s"] for p in parts.values()), 2),
            "parts": parts,
            "method": (f"at most {limit} frames timed per regime (before the window slides: "
                       "context as given; sliding: a context of seq_len frames), each "
                       "regime's seconds per frame times its number of frames in the full "
                       "rollout; per-frame cost is constant within a regime because every "
                       "frame recomputes the full seq_len window")}


def run_config(name: str, batch: int | None, context: int, frames: int, ref_limit: int | None,
               repeats: int, skip_reference: bool = False, init: str = "random",
               seed: int = 0) -> dict:
    import jax
    from flax import nnx

    from teco import rollout

    batch = CONFIGS[name][2] if batch is None else batch
    if not 0 < context < frames:
        raise ValueError(f"need 0 < context < frames, got context={context}, frames={frames}")
    n_new = frames - context
    start = time.perf_counter()
    config, model, table, codes, actions = build(name, batch, context, frames, seed, init)
    spec = rollout.SamplerSpec.from_config(config)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    result = {
        "config": CONFIGS[name][0], "params_M": round(n_params / 1e6, 2), "batch_size": batch,
        "devices": len(jax.devices()), "devices_used": 1, "backend": jax.default_backend(),
        "context_frames": context, "total_frames": frames, "generated_frames": n_new,
        "seq_len": int(config.seq_len), "vq_codes_per_frame": list(codes.shape[2:]),
        "sampler": {"sampler": spec.sampler, "passes_per_frame": spec.T_draft + spec.M * spec.T_revise,
                    "guidance_scale": spec.guidance_scale},
        "parameters": init, "build_s": round(time.perf_counter() - start, 2),
    }
    _log(f"{name}: {result['params_M']}M params, batch {batch}, {n_new} new frames; cached path")
    result["cached"] = time_cached(model, table, codes, actions, n_new, spec, repeats)
    if not skip_reference:
        _log(f"{name}: reference path")
        result["reference"] = time_reference(model, table, codes, actions, n_new, spec, ref_limit)
        result["ratio_reference_over_cached"] = round(
            result["reference"]["s_per_frame"] / result["cached"]["s_per_frame"], 2)
    for path in ("cached", "reference"):
        if path in result:
            r = result[path]
            r["s_per_video_frame"] = round(r["s_per_frame"] / batch, 4)
            r["frames_per_s"] = round(batch / r["s_per_frame"], 3)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def run_fvd(cases) -> dict:
    """I3D feature throughput through benchmarks/fvd_features.py's `measure`, per
    (frames, videos, batch, input size) case."""
    spec = importlib.util.spec_from_file_location("fvd_features", Path(__file__).parent / "fvd_features.py")
    fvd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fvd)
    results = []
    for frames, videos, batch, size in cases:
        _log(f"FVD features: {videos} videos of {frames} frames, batch {batch}")
        results.append({"frames": frames, "input_size": size,
                        **fvd.measure(batch, frames, size, videos // batch)})
    return {"model": "I3D (Kinetics-400), frames resized to 224x224", "results": results,
            "method": "fvd_features.measure: one warm-up batch (compiles), then `videos` "
                      "random uint8 videos timed",
            "peak_rss_mb": _peak_rss_mb()}


def fvd_cases(frames, videos, batches, size) -> list:
    """Pairs the per-length lists (a single value applies to every length)."""
    n = len(frames)
    videos, batches = (v * n if len(v) == 1 else v for v in (videos, batches))
    if len(videos) != n or len(batches) != n:
        raise ValueError("--fvd_videos and --fvd_batch need one value or one per --fvd_frames entry")
    cases = []
    for f, v, b in zip(frames, videos, batches):
        if f < 9 or b < 1 or v < b or v % b:
            raise ValueError(f"FVD case frames={f}, videos={v}, batch={b}: need frames >= 9 and "
                             "videos a positive multiple of batch")
        cases.append((f, v, b, size))
    return cases


def _child(payload: str) -> None:
    job = json.loads(payload)
    if job["kind"] == "fvd":
        out = run_fvd(job["cases"])
    else:
        out = run_config(job["name"], job["batch"], job["context"], job["frames"],
                         job["ref_limit"], job["repeats"], job["skip_reference"], job["init"])
    print(json.dumps(out), flush=True)


def _spawn(job: dict) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], env=env,
                          stdout=subprocess.PIPE, text=True)   # stderr (progress) passes through
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        return {"job": job, "error": f"child exited with {proc.returncode}"}
    return json.loads(lines[-1])


def _limits(items, names) -> dict:
    """['24'] -> every config 24; ['dmlab=24'] -> dmlab only; 'all' = every frame."""
    out = {}
    for item in items or []:
        key, _, value = item.rpartition("=")
        if value != "all" and not value.isdigit():
            raise ValueError(f"--reference_frames: expected [NAME=]K or [NAME=]all, got {item!r}")
        limit = None if value == "all" else int(value)
        if limit is not None and limit < 1:
            raise ValueError(f"--reference_frames: need a positive count or 'all', got {item!r}")
        for name in ([key] if key else names):
            if name not in CONFIGS:
                raise ValueError(f"--reference_frames: unknown config {name!r}")
            out[name] = limit
    return out


def _batches(items) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in CONFIGS or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--batch: expected NAME=B with NAME in {sorted(CONFIGS)} and B a "
                             f"positive int, got {item!r}")
        out[name] = int(value)
    return out


def main(argv=None) -> dict:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2])
        return {}
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["dmlab", "memory_maze"], choices=list(CONFIGS))
    p.add_argument("--frames", type=int, default=300, help="total frames, context included")
    p.add_argument("--context", type=int, default=36)
    p.add_argument("--batch", nargs="*", default=[], metavar="NAME=B",
                   help="batch size per config (default: dmlab=1 memory_maze=8 tiny=2)")
    p.add_argument("--reference_frames", nargs="*", default=[], metavar="[NAME=]K",
                   help="time at most K frames per regime of the no-cache path ('all' = every frame)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of the cached rollout")
    p.add_argument("--init", choices=["random", "zeros"], default="random",
                   help="parameters: the model's initialisers, or zeros (no initialiser "
                        "compilation; for smoke tests)")
    p.add_argument("--no_reference", action="store_true", help="time only the cached path")
    p.add_argument("--fvd", action="store_true", help="also measure I3D feature throughput")
    p.add_argument("--fvd_frames", type=int, nargs="+", default=[16, 300],
                   help="video lengths for the FVD measurement")
    p.add_argument("--fvd_videos", type=int, nargs="+", default=[16, 1],
                   help="timed videos per length (one value, or one per length)")
    p.add_argument("--fvd_batch", type=int, nargs="+", default=[4, 1],
                   help="I3D batch size per length (one value, or one per length)")
    p.add_argument("--fvd_size", type=int, default=64, help="frame size before I3D's resize")
    p.add_argument("--in_process", action="store_true",
                   help="run every case in this process (peak RSS is then cumulative)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be positive, got {args.repeats}")
    limits = _limits(args.reference_frames, args.configs)
    if args.fvd:
        fvd_cases(args.fvd_frames, args.fvd_videos, args.fvd_batch, args.fvd_size)  # fail early
    batches = _batches(args.batch)
    started = datetime.datetime.now().astimezone()
    report = {"benchmark": "teco_rollout", "started": started.isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None
              else f"main({argv!r})",
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(),
                          "load_average_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()]},
              "note": ("random parameters and random context codes/actions: rollout speed does "
                       "not depend on training (fixed number of sampler passes per frame, no "
                       "data-dependent stopping). s_per_frame = seconds per generated time step "
                       "(one frame of each of the batch's videos); s_per_video_frame divides by "
                       "the batch size."),
              "results": {}}
    for name in args.configs:
        job = {"kind": "rollout", "name": name, "batch": batches.get(name), "context": args.context,
               "frames": args.frames, "ref_limit": limits.get(name), "repeats": args.repeats,
               "skip_reference": args.no_reference, "init": args.init}
        report["results"][name] = (run_config(name, job["batch"], args.context, args.frames,
                                              job["ref_limit"], args.repeats, args.no_reference,
                                              args.init)
                                   if args.in_process else _spawn(job))
    if args.fvd:
        cases = fvd_cases(args.fvd_frames, args.fvd_videos, args.fvd_batch, args.fvd_size)
        report["fvd"] = run_fvd(cases) if args.in_process else _spawn({"kind": "fvd", "cases": cases})
    finished = datetime.datetime.now().astimezone()
    report["finished"] = finished.isoformat(timespec="seconds")
    report["wall_s"] = round((finished - started).total_seconds(), 1)
    report["machine"]["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2), flush=True)
    return report


if __name__ == "__main__":
    main()
