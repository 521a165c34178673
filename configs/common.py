"""Keys every config shares: run, data, optimisation, mesh, logging and checkpoints.

Key names follow the authors' TECO YAML where one exists (batch_size, lr, total_steps, ...),
so a user of the original code finds them. Model keys live in `teco_model.py` / `vqgan_model.py`.
"""
import ml_collections

from teco.sharding import DEFAULT_RULES


def data_config(name: str, *, image_size: int, has_actions: bool = True) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Which builder / layout: a `datasets/` TFDS builder name ('memory_maze', 'dmlab', ...).
    d.name = name
    # 'tfds'     : a built TFDS (array_record) data set under `data_dir`.
    # 'authors'  : the authors' release as it is: <data_dir>/{train,test}/**/*.npz or *.mp4.
    # 'codes'    : VQ codes written by `teco.encode` under `data_dir` (stage 2).
    d.source = "tfds"
    d.data_dir = f"data/tfds"
    d.train_split = "train"
    d.eval_split = "test"
    d.image_size = image_size
    d.has_actions = has_actions
    # 'error': a corrupt/short/mis-sized video stops the run naming the file; 'skip': it is
    # dropped and counted in the logs.
    d.on_bad_file = "error"
    # grain worker processes (0 = read in the main process).
    d.worker_count = 0
    d.prefetch = 2
    # Decoded episodes kept in memory by each training/eval input pipeline (per grain worker):
    # a data set that fits is decoded once instead of at every read. 0 = off.
    d.cache_mb = 1024
    return d


def base_config(model: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = model  # 'vqgan' (stage 1) or 'teco' (stage 2)
    c.seed = 1

    # Training (published TECO values; stage-1 configs override).
    c.batch_size = 32        # global batch, across all devices and hosts
    c.lr = 1e-4
    c.lr_schedule = "cosine"  # linear warm-up, then cosine decay to 0
    c.warmup_steps = 5000
    c.total_steps = 1_000_000
    c.weight_decay = 1e-5
    c.b1 = 0.9
    c.b2 = 0.95                # the authors hard-code AdamW(b1=0.9, b2=0.95)
    c.clip_grad_norm = 1.0    # 0 disables clipping

    # Numerics and memory.
    c.compute_dtype = "float32"  # or 'bfloat16' (parameters stay float32)
    c.remat = False              # rematerialise transformer blocks in the backward pass

    # Parallelism: mesh axis sizes (-1 fills in the devices left) and logical -> mesh rules.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.logical_axis_rules = DEFAULT_RULES

    # Logging, evaluation and checkpoints.
    c.log_interval = 100
    c.progress_interval_secs = 5.0   # a progress line (step, loss, steps/s, ETA) this often
    c.log_eval_interval = 5000
    c.eval_batches = 4
    c.viz_interval = 10_000
    c.save_interval = 10_000
    c.save_interval_secs = 1800.0   # also checkpoint at least this often (preemptible machines)
    c.keep_checkpoints = 3
    c.checkpoint_timeout_secs = 1200  # multi-host: a host this late to finish its part stops the run
    c.on_nonfinite = "stop"         # or 'skip' (drop the update and count it)
    return c


def synthetic_tiny_data(c: ml_collections.ConfigDict) -> None:
    """Tiny variants read the dependency-free synthetic set (16x16 frames), built on demand."""
    c.data.name = "synthetic"
    c.data.image_size = c.image_size
    c.data.has_actions = True


def finish(c: ml_collections.ConfigDict, arg: str | None, shrink) -> ml_collections.ConfigDict:
    """Applies the `:tiny` variant and locks the config so an unknown key fails at start-up."""
    arg = (arg or "").strip()
    if arg not in ("", "tiny"):
        raise ValueError(f"config variant must be '' or 'tiny', got {arg!r}")
    if arg == "tiny":
        shrink(c)
        synthetic_tiny_data(c)
        c.total_steps = 20
        c.warmup_steps = 2
        c.log_interval = 5
        c.log_eval_interval = 10
        c.viz_interval = 10
        c.save_interval = 10
        c.eval_batches = 1
    c.data.image_size = c.image_size
    c.lock()
    return c
