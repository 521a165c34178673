"""Reading single videos from the authors' release layout, with errors that name the file.

The authors ship DMLab as `<root>/{train,test}/<shard>/*.npz` (keys `video` uint8 THWC and
`actions` int T) and the other sets as `*.mp4`, optionally with a sibling `.npz` holding
`actions`. Nothing here unpickles: npz files are opened with `allow_pickle=False`.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".npz", ".mp4")

# numpy parses every array's header with ast.literal_eval, and CPython 3.11 (3.11.7 here) can
# fail that with "SystemError: AST constructor recursion depth mismatch" when several threads
# parse at once; grain reads records on several threads (it stopped a TECO run at step 9,207
# on 2026-12-03). Every np.load of data holds this lock.
NPZ_LOCK = threading.Lock()


class DataError(ValueError):
    """A data file is missing, unreadable or of the wrong shape; the message names it."""


def find_videos(root: str | os.PathLike, split: str) -> list[Path]:
    """All videos of one split, sorted so every process sees the same order.

    A `.npz` that sits beside an `.mp4` of the same stem holds that video's actions, not a video.
    """
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataError(f"data directory {split_dir} does not exist (expected "
                        f"<root>/{{train,test}}/<shard>/*.npz or *.mp4)")
    mp4 = {p.with_suffix("") for p in split_dir.rglob("*.mp4")}
    files = sorted(p for p in split_dir.rglob("*")
                   if p.suffix in VIDEO_SUFFIXES and p.is_file()
                   and not (p.suffix == ".npz" and p.with_suffix("") in mp4))
    if not files:
        raise DataError(f"data directory {split_dir} holds no .npz or .mp4 videos")
    return files


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a user's .npz, never unpickled: DataError naming the file (and the array)
    when it is missing, not a zip, truncated, or holds Python objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a valid .npz (zip) file: corrupt or truncated")
    key = None
    try:
        with NPZ_LOCK, np.load(path, allow_pickle=False) as f:
            out = {}
            for key in f.files:
                out[key] = f[key]
            return out
    except ValueError as e:
        if "allow_pickle" in str(e):  # numpy's refusal to unpickle an object array
            raise DataError(f"{path}: array '{key}' holds Python objects (dtype=object); data "
                            "files are never unpickled, store plain numeric arrays") from None
        raise DataError(f"{path}: cannot read npz array '{key}' ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read npz, corrupt or truncated "
                        f"({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def ffmpeg_quietly():
    """imageio-ffmpeg starts ffmpeg with fork + exec: the child runs no Python, so JAX's warning
    about forking a multithreaded process does not apply to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                                category=RuntimeWarning)
        yield


def _load_mp4(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        with ffmpeg_quietly():
            frames = iio.imread(path, plugin="FFMPEG")
    except Exception as e:  # imageio raises many kinds for a damaged container
        raise DataError(f"{path}: cannot decode mp4, corrupt or truncated "
                        f"({_ffmpeg_reason(e)})") from None
    return np.asarray(frames)


def _ffmpeg_reason(e: Exception) -> str:
    """One line out of imageio's error, which carries ffmpeg's whole banner: ffmpeg's last
    diagnostic ('[component @ 0x...] what'), else its last line."""
    first, _, stderr = str(e).partition("=== stderr ===")
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    diagnostics = [re.sub(r"^\[[^]]*\]\s*", "", l) for l in lines if l.startswith("[")]
    reason = first.strip().splitlines()[0] if first.strip() else type(e).__name__
    last = (diagnostics or lines or [None])[-1]
    return f"{reason}; ffmpeg: {last}" if last else reason


def load_video(path: str | os.PathLike, *, has_actions: bool = True) -> dict[str, np.ndarray]:
    """Returns {'video': uint8 [T,H,W,3], 'actions': int32 [T]} for one file of the release.

    Videos without actions (Kinetics) get zeros, which TECO's `use_actions=False` ignores.
    """
    path = Path(path)
    if path.suffix == ".npz":
        data = load_npz(path)
        if "video" not in data:
            raise DataError(f"{path}: npz has no 'video' array (keys: {sorted(data)})")
        video = data["video"]
        actions = data.get("actions")
    elif path.suffix == ".mp4":
        video = _load_mp4(path)
        actions = None
        sibling = path.with_suffix(".npz")
        if sibling.exists():
            actions = load_npz(sibling).get("actions")
    else:
        raise DataError(f"{path}: not a .npz or .mp4 video")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise DataError(f"{path}: video has shape {video.shape}, expected [T, H, W, 3]")
    if video.dtype != np.uint8:
        raise DataError(f"{path}: video dtype is {video.dtype}, expected uint8")
    if actions is None:
        if has_actions and path.suffix == ".npz":
            raise DataError(f"{path}: npz has no 'actions' array")
        actions = np.zeros(video.shape[0], np.int32)
    actions = np.asarray(actions).reshape(-1)
    if actions.shape[0] != video.shape[0]:
        raise DataError(f"{path}: {actions.shape[0]} actions for {video.shape[0]} frames")
    return {"video": video, "actions": actions.astype(np.int32)}


def check_episode(ep: dict[str, np.ndarray], *, name: str, image_size: int | None,
                  min_length: int, key: str = "video") -> None:
    """Raises DataError naming `name` when frames are mis-sized or the video is too short."""
    x = ep[key]
    if image_size is not None and key == "video" and tuple(x.shape[1:3]) != (image_size, image_size):
        raise DataError(f"{name}: frames are {x.shape[1]}x{x.shape[2]}, the config expects "
                        f"{image_size}x{image_size} (data.image_size)")
    if x.shape[0] == 0:
        raise DataError(f"{name}: video has no frames")
    if x.shape[0] < min_length:
        raise DataError(f"{name}: video has {x.shape[0]} frames, shorter than seq_len={min_length}")
