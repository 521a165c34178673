"""Input pipeline: grain over built TFDS sets, the authors' raw folders, or encoded VQ codes.

    episodes (random access) -> shuffle + repeat (train) -> crop `seq_len` frames
      -> this process's rows of each global batch -> global jax.Array on the mesh's data axes

Deterministic given the seed, and independent of the process count: global batch b holds
elements b*B .. b*B+B-1 of the shuffled stream in order (unless bad files are skipped), each
process reading only the rows its devices hold. The iterator's position is a small dict (`get_state`) that checkpoints
store, so a resumed run reads exactly the batches it would have read.
Bad files raise `DataError` naming the file, or, with `data.on_bad_file='skip'`, are dropped
and counted (`BatchIterator.skipped`).
"""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from teco import sharding as sh
from teco.video_io import NPZ_LOCK, DataError, check_episode, find_videos, load_video

CODES_META = "codes_meta.json"


# ----------------------------------------------------------------------------- sources


class FolderSource:
    """The authors' release as it is on disk: one episode per .npz / .mp4 file."""

    def __init__(self, root: str, split: str, *, has_actions: bool = True):
        self.files = find_videos(root, split)
        self.has_actions = has_actions

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.files[i]
        return {**load_video(path, has_actions=self.has_actions), "_name": str(path)}


def find_tfds_dir(data_dir: str, name: str) -> Path:
    """Newest built version of `name` (optionally `name/config`) under `data_dir`."""
    base = Path(data_dir) / name
    infos = sorted(base.glob("dataset_info.json")) or sorted(base.glob("*/dataset_info.json")) \
        or sorted(base.glob("*/*/dataset_info.json"))
    if not infos:
        raise DataError(
            f"data set '{name}' is not built under {data_dir} (no dataset_info.json below {base}); "
            f"build it with `python -m datasets.build {name.split('/')[0]} --data_dir={data_dir}`")
    newest = max(infos, key=lambda p: p.stat().st_mtime)
    return newest.parent


class TfdsSource:
    """A built TFDS data set in the array_record format, read by index without TensorFlow."""

    def __init__(self, data_dir: str, name: str, split: str):
        import tensorflow_datasets as tfds

        self.path = find_tfds_dir(data_dir, name)
        builder = tfds.builder_from_directory(str(self.path))
        if split not in builder.info.splits:
            raise DataError(f"data set at {self.path} has no split '{split}' "
                            f"(splits: {sorted(builder.info.splits)})")
        self.source = builder.as_data_source(split)
        self.split = split

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            ep = dict(self.source[i])
        except Exception as e:  # a truncated/corrupt record surfaces as various errors
            raise DataError(f"{self.path} [{self.split} #{i}]: cannot read record "
                            f"({type(e).__name__}: {e})") from None
        ep["_name"] = f"{self.path} [{self.split} #{i}]"
        return ep


class CodesSource:
    """VQ codes written by `teco.encode`: array_record files of npz-encoded episodes."""

    def __init__(self, root: str, split: str):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        root_path = Path(root)
        meta_path = root_path / CODES_META
        if not meta_path.exists():
            raise DataError(f"{root} is not an encoded data set (no {CODES_META}); "
                            "write one with `python -m teco.encode`")
        self.meta = json.loads(meta_path.read_text())
        files = sorted(str(p) for p in root_path.glob(f"{split}.array_record-*"))
        if not files:
            raise DataError(f"encoded data set {root} has no split '{split}'")
        self.source = ArrayRecordDataSource(files)
        self.root, self.split = root, split

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = f"{self.root} [{self.split} #{i}]"
        try:
            record = self.source[i]
            with NPZ_LOCK, np.load(io.BytesIO(record), allow_pickle=False) as f:
                ep = {k: f[k] for k in f.files}
        except Exception as e:
            raise DataError(f"{name}: cannot read record ({type(e).__name__}: {e})") from None
        ep["_name"] = name
        return ep


class CodesWriter:
    """Writes an encoded split: `<root>/<split>.array_record-00000-of-00001` + codes_meta.json."""

    def __init__(self, root: str, split: str, meta: dict[str, Any]):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.final = self.root / f"{split}.array_record-00000-of-00001"
        self.tmp = self.final.with_suffix(".tmp")
        self.writer = ArrayRecordWriter(str(self.tmp), "group_size:1")
        self.meta = meta
        self.count = 0

    def add(self, codes_THW: np.ndarray, actions_T: np.ndarray, **extra: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, codes=np.asarray(codes_THW, np.int16), actions=np.asarray(actions_T, np.int32),
                 **extra)
        self.writer.write(buf.getvalue())
        self.count += 1

    def close(self) -> None:
        self.writer.close()
        self.tmp.replace(self.final)  # a split appears only once completely written
        meta_path = self.root / CODES_META
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta.update(self.meta)
        meta.setdefault("splits", {})[self.final.name.split(".")[0]] = self.count
        meta_path.write_text(json.dumps(meta, indent=1))


def synthetic_dir(data_config, seq_len: int) -> str:
    """Builds (once) the synthetic set the tiny configs read, sized from the config."""
    from datasets.synthetic import synthetic_dataset_builder as synth

    length = max(24, 2 * seq_len)
    builder = synth.make_builder(data_config.data_dir, image_size=data_config.image_size,
                                 length=length)
    ready = lambda: Path(builder.data_dir).joinpath("dataset_info.json").exists()
    # Several processes on one file system: the first builds, the others wait for it.
    if not ready() and jax.process_index() == 0:
        builder.download_and_prepare()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("teco synthetic data set")
    if not ready():
        builder.download_and_prepare()  # processes on machines that do not share the disk
    return f"synthetic/{builder.builder_config.name}"


def make_source(data_config, split: str, *, seq_len: int = 1):
    src = data_config.source
    if src == "tfds":
        name = data_config.name
        if name == "synthetic":
            name = synthetic_dir(data_config, seq_len)
        return TfdsSource(data_config.data_dir, name, split)
    if src == "authors":
        return FolderSource(data_config.data_dir, split, has_actions=data_config.has_actions)
    if src == "codes":
        return CodesSource(data_config.data_dir, split)
    raise ValueError(f"data.source must be 'tfds', 'authors' or 'codes', got {src!r}")


# ----------------------------------------------------------------------------- transforms


class _Crop:
    """Validates one episode and cuts `seq_len` frames (random start in training)."""

    def __init__(self, key: str, seq_len: int, image_size: int | None, random_start: bool,
                 skip_bad: bool, extras: tuple[str, ...] = ()):
        self.key, self.seq_len, self.image_size = key, seq_len, image_size
        self.random_start, self.skip_bad, self.extras = random_start, skip_bad, extras

    def __call__(self, ep: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
        name = ep.get("_name", "?")
        try:
            if self.key not in ep:
                raise DataError(f"{name}: record has no '{self.key}' (keys: {sorted(ep)})")
            check_episode(ep, name=name, image_size=self.image_size, min_length=self.seq_len,
                          key=self.key)
            if "actions" not in ep or len(ep["actions"]) != len(ep[self.key]):
                raise DataError(f"{name}: actions missing or not aligned with frames")
        except DataError:
            if self.skip_bad:
                return {"_bad": name}
            raise
        length = ep[self.key].shape[0]
        start = int(rng.integers(0, length - self.seq_len + 1)) if self.random_start else 0
        sl = slice(start, start + self.seq_len)
        x = np.asarray(ep[self.key][sl])
        return {self.key: x.astype(np.int32) if self.key == "codes" else x,
                "actions": np.asarray(ep["actions"][sl], np.int32),
                **{k: np.asarray(ep[k][sl]) for k in self.extras
                   if k in ep and len(ep[k]) == length}}


class _EpisodeCache:
    """Decoded episodes kept in memory until one does not fit in `max_bytes`: a training run
    reads every episode many times, and decoding one costs far more than cropping it (a
    zlib-compressed TFDS record of 300 64x64 frames: ~17 ms, ~16% of both cores beside the
    Memory Maze VQ-GAN step). The batches are the same with or without it. An episode wanted by
    several read threads at once is decoded once. Cached arrays are read-only, as every consumer
    only slices them; read errors are not cached. Each grain worker process
    (`data.worker_count`) holds its own cache."""

    def __init__(self, source, max_bytes: int):
        self.source, self.max_bytes = source, int(max_bytes)
        self._episodes: dict[int, dict[str, Any]] = {}
        self._bytes = 0
        self._full = self.max_bytes <= 0
        self._lock = threading.Lock()
        self._reading: dict[int, threading.Lock] = {}

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        ep = self._episodes.get(i)
        if ep is None and self._full:
            return self.source[i]
        if ep is None:
            with self._lock:
                reading = self._reading.setdefault(i, threading.Lock())
            with reading:
                ep = self._episodes.get(i)
                if ep is None:
                    ep = self.source[i]
                    self._keep(i, ep)
            with self._lock:
                self._reading.pop(i, None)
        return dict(ep)

    def _keep(self, i, ep):
        size = sum(v.nbytes for v in ep.values() if isinstance(v, np.ndarray))
        with self._lock:
            if self._full or self._bytes + size > self.max_bytes:
                self._full = True
                return
            for v in ep.values():
                if isinstance(v, np.ndarray):
                    v.flags.writeable = False
            self._episodes[i] = ep
            self._bytes += size

    def __getstate__(self):  # to a grain worker process: the source, not the locks or episodes
        return {"source": self.source, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["source"], state["max_bytes"])


class _SafeGet:
    """Turns a read error into a marked element when bad files are skipped."""

    def __init__(self, source, skip_bad: bool):
        self.source, self.skip_bad = source, skip_bad

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            return self.source[i]
        except DataError as e:
            if not self.skip_bad:
                raise
            return {"_bad": str(e), "_name": str(e)}


# ----------------------------------------------------------------------------- iterator


class _ProcessRows(grain.MapDataset):
    """This process's share of every global batch: element i is row `rows[i % L]` of global
    batch `start + i // L` (L = len(rows)); a trailing partial global batch is dropped."""

    def __init__(self, parent: grain.MapDataset, rows, global_batch: int, start: int = 0):
        super().__init__(parent)
        self._rows, self._global, self._start = tuple(rows), int(global_batch), int(start)

    def __len__(self) -> int:
        return max(0, len(self._parent) // self._global - self._start) * len(self._rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, len(self._rows))
        return self._parent[(self._start + batch) * self._global + self._rows[row]]

    def __str__(self) -> str:
        return f"_ProcessRows(rows={len(self._rows)} of {self._global}, start={self._start})"


def _allgather_json(obj) -> list:
    """`obj` of every process (a collective: all processes must call it together)."""
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int32)))
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:raw.size] = raw
    every = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(bytes(row[:int(n)])) for row, n in zip(every, sizes.reshape(-1))]


class BatchIterator:
    """Yields global batches {video float32 [B,T,H,W,3] in [-1,1] | codes int32 [B,T,h,w],
    actions int32 [B,T]} placed on the mesh's data axes; `get_state`/`set_state` for resume.
    Per-frame `extras` that every episode of a batch has (e.g. agent poses) come along as this
    process's rows in host numpy arrays.

    `build(start)` gives this process's element stream from global batch `start` on.
    """

    def __init__(self, build, mesh, key: str, global_batch: int, local_batch: int,
                 n_files: int | None = None, extras: tuple[str, ...] = ()):
        self._build = build
        self._extras = extras
        self._n_files = n_files
        self._it = iter(build(0))
        self._sharding = sh.batch_sharding(mesh)
        self.key = key
        self.global_batch, self.local_batch = global_batch, local_batch
        self.batches = 0  # global batches yielded since the start of the stream
        self.skipped = 0
        self.skipped_names: list[str] = []
        if key == "video":
            self._to_float = jax.jit(lambda v: (v.astype(jnp.float32) - 127.5) / 127.5,
                                     out_shardings=self._sharding)

    def __iter__(self):
        return self

    def _next_local(self) -> list[dict[str, np.ndarray]]:
        batch, in_a_row = [], 0
        while len(batch) < self.local_batch:
            el = next(self._it)
            if "_bad" in el:
                self.skipped += 1
                in_a_row += 1
                if len(self.skipped_names) < 100:
                    self.skipped_names.append(el["_bad"])
                # As many bad reads in a row as there are files: nothing usable is left, and
                # skipping on would spin forever.
                if self._n_files is not None and in_a_row >= max(self._n_files, 1):
                    raise DataError(
                        f"skipped {in_a_row} bad files in a row ({self._n_files} in the split; "
                        f"data.on_bad_file='skip'): no usable video left, e.g. "
                        f"{self.skipped_names[-1]}")
                continue
            batch.append(el)
        return batch

    def __next__(self) -> dict[str, jax.Array]:
        batch = self._next_local()
        out = {}
        for k in (self.key, "actions"):
            local = np.stack([el[k] for el in batch])
            out[k] = jax.make_array_from_process_local_data(
                self._sharding, local, (self.global_batch,) + local.shape[1:])
        if self.key == "video":
            out["video"] = self._to_float(out["video"])
        for k in self._extras:
            if all(k in el for el in batch):
                out[k] = np.stack([el[k] for el in batch])
        self.batches += 1
        return out

    def _layout(self) -> list[int]:
        return [jax.process_count(), self.local_batch]

    def get_state(self) -> dict[str, Any]:
        """The position. With several processes it holds every process's own position (each
        skips bad files independently), so this is a collective: all must call it together."""
        own = {"grain": self._it.get_state(), "skipped": self.skipped}
        state = dict(own, batches=self.batches, layout=self._layout())
        if jax.process_count() > 1:
            state["processes"] = _allgather_json(own)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("layout", self._layout()) == self._layout():
            procs = state.get("processes")
            own = procs[jax.process_index()] if procs else state
            self._it.set_state(own["grain"])
            self.skipped = int(own.get("skipped", 0))
            self.batches = int(state.get("batches", 0))
            return
        # Saved by another process layout: the per-process positions do not carry over, so
        # reading restarts at the next global batch (exact unless bad files were skipped).
        self.batches = int(state["batches"])
        self._it = iter(self._build(self.batches))
        logging.warning("data position saved with %d processes x %d rows, resuming with %d x %d: "
                        "restarting the input stream at global batch %d",
                        *state["layout"], *self._layout(), self.batches)


def make_iterator(config, mesh, *, split: str, train: bool, seed: int | None = None,
                  num_epochs: int | None = None, extras: tuple[str, ...] = ()) -> BatchIterator:
    """The input pipeline of `config` (its `data`, `batch_size`, `seq_len`, `image_size`).

    train=True: shuffled, repeated forever, random crops. train=False: file order, crops from
    frame 0, `num_epochs` passes (None = forever); the last partial batch is dropped.
    `extras`: per-frame record fields to crop alongside when the data set has them.
    """
    data = config.data
    seed = int(config.seed if seed is None else seed)
    key = "codes" if data.source == "codes" else "video"
    global_batch = int(config.batch_size)
    dp = sh.data_parallel_size(mesh)
    if global_batch % dp:
        raise ValueError(f"batch_size={global_batch} is not divisible by the data-parallel size "
                         f"{dp} (mesh data x fsdp)")
    # The rows of each global batch this process's devices hold (all of them when the data
    # axes do not span processes); processes holding the same rows read the same elements.
    rows = sh.process_batch_rows(mesh, global_batch)
    local_batch = len(rows)
    skip_bad = data.on_bad_file == "skip"

    source = make_source(data, split, seq_len=int(config.seq_len))
    # Workdirs written before data.cache_mb existed read without a cache.
    cached = _EpisodeCache(source, int(data.get("cache_mb", 0)) << 20)
    ds = grain.MapDataset.source(_SafeGet(cached, skip_bad))
    if train:
        ds = ds.shuffle(seed=seed).repeat(num_epochs)
    elif num_epochs != 1:
        ds = ds.repeat(num_epochs)
    image_size = data.image_size if key == "video" else None
    crop = _Crop(key, int(config.seq_len), image_size, random_start=train, skip_bad=skip_bad,
                 extras=tuple(extras))
    # Crops are drawn per element index, before the split into processes: the same global
    # batches whatever the number of processes.
    ds = ds.random_map(crop, seed=seed + 1)
    read = grain.ReadOptions(num_threads=max(1, min(4, local_batch)),
                             prefetch_buffer_size=max(2, int(data.prefetch)) * local_batch)

    def build(start: int) -> grain.IterDataset:
        it_ds = _ProcessRows(ds, rows, global_batch, start).to_iter_dataset(read)
        if int(data.worker_count) > 0:
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=int(data.worker_count)))
        return it_ds

    return BatchIterator(build, mesh, key, global_batch, local_batch, n_files=len(source),
                         extras=tuple(extras))


def frames_per_batch(config) -> int:
    return int(config.batch_size) * int(config.seq_len)

