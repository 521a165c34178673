"""TECO train-step speed, FLOP utilisation and memory (not a test): prints JSON.

    python benchmarks/teco_train.py step                     # every case, DropLoss 0.9 and off
    python benchmarks/teco_train.py step --cases dmlab_b1 dmlab_b1_chunked --drop_loss 0.9
    python benchmarks/teco_train.py step --cases memory_maze --drop_loss 0.8 --host_devices 1 2
    python benchmarks/teco_train.py memory --devices 8 32    # dmlab @ batch 32, compiled per device
    python benchmarks/teco_train.py encoder --frames 30 --chunk 10   # where chunking costs time

`step`: each case runs in its own process (peak RSS is per process): compile, then the median
time of `--steps` steps on random codes, frames/s, XLA's cost-analysis FLOPs of the step and
their rate against this machine's measured peak matmul FLOP/s.
`memory`: the dmlab config at batch 32 is compiled (not run) for N simulated CPU devices with the
config's mesh rules; XLA's memory analysis gives the bytes each device needs.
`encoder`: the dmlab conditional encoder alone on one video of `--frames` frames, whole and
`--chunk` time steps at a time (`encoder_frames_per_chunk`): the forward pass, the gradient
with respect to the parameters and the input, and the input's gradient alone (seconds, after
compiling), so the cost of the chunk loop shows where it falls.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

CASES = {
    "tiny": ("configs/dmlab.py:tiny", "configs/dmlab_vqgan.py:tiny", {}),
    "dmlab_b1": ("configs/dmlab.py", "configs/dmlab_vqgan.py", {"batch_size": 1}),
    # the demo's TECO (batch 4 x 50 frames of 16x16 codes, reading the previous frame, the
    # frame's action and, since 2026-12-05 night, the frames it recalls)
    "memory_maze": ("configs/memory_maze.py", "configs/memory_maze_vqgan.py", {}),
    # its posterior encoder at the decoder's width, as before 2026-12-05: the step's largest cost
    "memory_maze_enc64": ("configs/memory_maze.py", "configs/memory_maze_vqgan.py",
                          {"encoder.depths": (64, 128)}),
    # without `recall` (the frames its actions lead back to): what recall costs a step
    "memory_maze_no_recall": ("configs/memory_maze.py", "configs/memory_maze_vqgan.py",
                              {"recall": False}),
    # its matmuls and convolutions in bfloat16: slower on this machine's CPU (README, Performance)
    "memory_maze_bf16": ("configs/memory_maze.py", "configs/memory_maze_vqgan.py",
                         {"compute_dtype": "bfloat16"}),
    # The encoder 75 time steps at a time, recomputed in the backward pass: its cost in time.
    "dmlab_b1_chunked": ("configs/dmlab.py", "configs/dmlab_vqgan.py",
                         {"batch_size": 1, "encoder_frames_per_chunk": 75}),
}


def build(config_path, vq_path, over, mesh_sizes=None):
    import jax
    from flax import nnx

    import teco  # noqa: F401
    from teco.config import load_config
    from teco.models.vqgan import vqgan_from_config
    from teco.tasks.teco import TecoTask

    config = load_config(config_path, over)
    config.unlock()
    if mesh_sizes:
        config.mesh.update(mesh_sizes)
    vq_config = load_config(vq_path)
    config.image_size = vq_config.image_size
    vq = nnx.eval_shape(lambda: vqgan_from_config(vq_config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(vq)
    vq = nnx.merge(graphdef, jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), state))
    return config, TecoTask(config, vqgan=vq, vq_config=vq_config)


def random_batch(task, config, mesh):
    import jax
    import jax.numpy as jnp

    from teco import sharding

    b, t = int(config.batch_size), int(config.seq_len)
    h, w = task.latent_shape
    k1, k2 = jax.random.split(jax.random.key(0))
    batch = {"codes": jax.random.randint(k1, (b, t, h, w), 0, task.vq_n_codes, jnp.int32),
             "actions": jax.random.randint(k2, (b, t), 0, config.action_dim, jnp.int32)}
    return jax.device_put(batch, sharding.batch_sharding(mesh))


def peak_matmul_flops(n: int = 2048, reps: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_step_case(name: str, drop_loss: float, steps: int, devices: int = 1) -> dict:
    import jax
    import numpy as np

    from teco import sharding, train

    config_path, vq_path, over = CASES[name]
    config, task = build(config_path, vq_path, {**over, "drop_loss_rate": drop_loss})
    mesh = sharding.make_mesh({"data": devices, "fsdp": 1, "model": 1},
                              devices=jax.devices()[:devices])
    state, _, shardings = train.create_train_state(task, config, mesh)
    step = train.make_train_step(task, mesh, shardings, "train")
    consts = jax.device_put(task.constants(), sharding.replicated(mesh))
    batch = random_batch(task, config, mesh)
    t = time.perf_counter()
    compiled = step.lower(state, batch, consts).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # an SPMD program's cost analysis counts one device's share
    flops = float(cost.get("flops", float("nan"))) * devices
    state, m = compiled(state, batch, consts)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, batch, consts)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    peak = peak_matmul_flops()
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {"case": name, "drop_loss_rate": drop_loss, "host_devices": devices,
            "encoder_frames_per_chunk": int(config.encoder_frames_per_chunk),
            "params_M": round(n_params / 1e6, 2),
            "batch_size": int(config.batch_size), "seq_len": int(config.seq_len),
            "compile_s": round(compile_s, 1), "step_s": round(step_s, 4),
            "frames_per_s": round(config.batch_size * config.seq_len / step_s, 1),
            "step_gflop": round(flops / 1e9, 2), "achieved_gflop_per_s": round(flops / step_s / 1e9, 1),
            "peak_matmul_gflop_per_s": round(peak / 1e9, 1),
            "flop_utilisation": round(flops / step_s / peak, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_memory_case(n_devices: int, mesh_sizes: dict, over: dict) -> dict:
    import jax

    from teco import sharding, train

    config, task = build("configs/dmlab.py", "configs/dmlab_vqgan.py", {"batch_size": 32, **over},
                         mesh_sizes)
    mesh = sharding.make_mesh(config.mesh)
    rng = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(task.init_state, rng)
    shardings = sharding.state_shardings(abstract, mesh, config.logical_axis_rules)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    step = train.make_train_step(task, mesh, shardings, "train")
    b, t = 32, int(config.seq_len)
    h, w = task.latent_shape
    bs = sharding.batch_sharding(mesh)
    batch = {"codes": jax.ShapeDtypeStruct((b, t, h, w), jax.numpy.int32, sharding=bs),
             "actions": jax.ShapeDtypeStruct((b, t), jax.numpy.int32, sharding=bs)}
    consts = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=sharding.replicated(mesh)),
                          task.constants())
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, consts).compile()
    mem = compiled.memory_analysis()
    gib = 1024 ** 3
    total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes)
    return {"devices": n_devices, "mesh": dict(mesh.shape), "batch_size": 32,
            "seq_len": t, "remat": bool(config.remat), "compute_dtype": config.compute_dtype,
            "encoder_frames_per_chunk": int(config.encoder_frames_per_chunk),
            "per_device_gib": round(total / gib, 2),
            "arguments_gib": round(mem.argument_size_in_bytes / gib, 2),
            "temp_gib": round(mem.temp_size_in_bytes / gib, 2),
            "compile_s": round(time.perf_counter() - t0, 1)}


def run_encoder_case(frames: int, chunk: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from teco.config import load_config
    from teco.models.teco import teco_from_config

    out = {"config": "configs/dmlab.py", "frames": frames, "chunk": chunk}
    for label, per_chunk in (("whole", 0), ("chunked", chunk)):
        config = load_config("configs/dmlab.py", {"encoder_frames_per_chunk": per_chunk})
        model = teco_from_config(config, 1024, 64, (16, 16), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        e = jax.random.normal(jax.random.key(0), (1, frames, 16, 16, 64))

        def loss(state, e):
            return jnp.sum(jnp.square(nnx.merge(graphdef, state).encode_continuous(e)))

        fns = {"forward_s": jax.jit(loss),
               "grad_params_and_input_s": jax.jit(jax.grad(loss, argnums=(0, 1))),
               "grad_input_only_s": jax.jit(jax.grad(loss, argnums=1))}
        for name, fn in fns.items():
            jax.block_until_ready(fn(state, e))  # compile
            out[f"{label}_{name}"] = round(_timed(lambda: jax.block_until_ready(fn(state, e))), 2)
    return out


def _child(argv) -> None:
    kind = argv[0]
    if kind == "step":
        print(json.dumps(run_step_case(argv[1], float(argv[2]), int(argv[3]), int(argv[4]))))
    elif kind == "encoder":
        print(json.dumps(run_encoder_case(int(argv[1]), int(argv[2]))))
    else:
        print(json.dumps(run_memory_case(int(argv[1]), json.loads(argv[2]), json.loads(argv[3]))))


def spawn_json(args, env_extra=None, script=__file__) -> dict:
    """`python <script> --child <args>` in its own process: the last JSON line it prints."""
    env = dict(os.environ, **(env_extra or {}))
    out = subprocess.run([sys.executable, script, "--child", *args], env=env,
                         capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        if out.returncode < 0:  # SIGKILL with no message: the kernel's out-of-memory killer
            why = f"killed by signal {-out.returncode}" + (
                " (out of memory?)" if -out.returncode == signal.SIGKILL else "")
            return {"args": args, "error": [why]}
        return {"args": args, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["step", "memory", "encoder"])
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--drop_loss", type=float, nargs="*", default=[0.9, 0.0],
                   help="DropLoss rates for the step mode (0.0 on dmlab needs ~24 GB)")
    p.add_argument("--host_devices", type=int, nargs="*", default=[1],
                   help="step mode: XLA CPU devices of the process, the batch split over them "
                        "(the pipeline runs one per core on CPU-only hosts: teco/host_devices.py)")
    p.add_argument("--devices", type=int, nargs="*", default=[8, 32])
    p.add_argument("--mesh", default='{"data": -1, "fsdp": 1, "model": 1}',
                   help="mesh sizes for the memory mode (JSON)")
    p.add_argument("--frames", type=int, default=30, help="frames for the encoder mode")
    p.add_argument("--chunk", type=int, default=10, help="time steps per chunk, encoder mode")
    p.add_argument("--set", default="{}", help='config overrides for the memory mode (JSON), '
                   'e.g. \'{"remat": true, "compute_dtype": "bfloat16"}\'')
    args = p.parse_args()
    if args.mode == "step":
        for case in args.cases:
            for rate in args.drop_loss:
                for n in args.host_devices:
                    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
                    print(json.dumps(spawn_json(["step", case, str(rate), str(args.steps), str(n)],
                                                env)), flush=True)
    elif args.mode == "encoder":
        print(json.dumps(spawn_json(["encoder", str(args.frames), str(args.chunk)])), flush=True)
    else:
        for n in args.devices:
            env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
                   "JAX_PLATFORMS": "cpu"}
            print(json.dumps(spawn_json(["memory", str(n), args.mesh, args.set], env)), flush=True)


if __name__ == "__main__":
    main()
