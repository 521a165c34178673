"""Writing what a person looks at: side-by-side video grids (mp4 / gif) and metric plots."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from teco.video_io import ffmpeg_quietly

GREEN = np.array([0, 200, 0], np.uint8)
RED = np.array([220, 40, 40], np.uint8)


def _border(frames_THWC: np.ndarray, colour: np.ndarray, width: int = 1) -> np.ndarray:
    out = frames_THWC.copy()
    out[:, :width], out[:, -width:], out[:, :, :width], out[:, :, -width:] = (colour,) * 4
    return out


def side_by_side(real_BTHWC: np.ndarray, fake_BTHWC: np.ndarray, n_context: int,
                 *, gap: int = 2) -> np.ndarray:
    """uint8 [T, B*H + gaps, 2W + gap, 3]: one row per video, real | generated.

    Context frames have a green border on both sides; generated frames a red one on the right,
    so it is always clear which frames the model imagined.
    """
    if real_BTHWC.shape != fake_BTHWC.shape:
        raise ValueError(f"real {real_BTHWC.shape} and generated {fake_BTHWC.shape} differ")
    b, t, h, w, _ = real_BTHWC.shape
    rows = []
    for i in range(b):
        real = real_BTHWC[i].copy()
        fake = fake_BTHWC[i].copy()
        real[:n_context] = _border(real[:n_context], GREEN)
        fake[:n_context] = _border(fake[:n_context], GREEN)
        fake[n_context:] = _border(fake[n_context:], RED)
        spacer = np.full((t, h, gap, 3), 255, np.uint8)
        rows.append(np.concatenate([real, spacer, fake], axis=2))
        if i < b - 1:
            rows.append(np.full((t, gap, 2 * w + gap, 3), 255, np.uint8))
    return np.concatenate(rows, axis=1)


def caption(grid_THWC: np.ndarray, n_context: int,
            columns: tuple[str, ...] = ("real", "generated")) -> np.ndarray:
    """uint8 [T, header + H, W, 3]: the grid under a white header naming its columns (equal
    widths, left to right) and, on a second line, the frame's number and whether the model was
    given it (green, "context") or imagined it (red): a video watched later explains itself."""
    from PIL import Image, ImageDraw, ImageFont

    t, _, w, _ = grid_THWC.shape
    size = int(np.clip(w // 20, 8, 14))
    try:
        font = ImageFont.load_default(size=size)
    except (ImportError, OSError):  # a Pillow built without FreeType: its one bitmap font
        font = ImageFont.load_default()
    line = size + 4

    def centred(draw, x, y, text, colour):  # bitmap fonts take no anchor: centre by the box
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text((x - (left + right) / 2, y - (top + bottom) / 2), text, fill=colour, font=font)

    header = np.empty((t, 2 * line, w, 3), np.uint8)
    for k in range(t):
        image = Image.new("RGB", (w, 2 * line), "white")
        draw = ImageDraw.Draw(image)
        for i, name in enumerate(columns):
            centred(draw, (i + 0.5) * w / len(columns), line / 2, name, (0, 0, 0))
        given = k < n_context
        centred(draw, w / 2, 1.5 * line,
                f"frame {k + 1} of {t}: " + ("context" if given else "imagined"),
                tuple(int(c) for c in (GREEN if given else RED)))
        header[k] = np.asarray(image)
    return np.concatenate([header, np.asarray(grid_THWC, np.uint8)], axis=1)


def comparison(real_BTHWC: np.ndarray, fake_BTHWC: np.ndarray, n_context: int,
               scale: int = 2) -> np.ndarray:
    """What the videos show: real | generated per row (side_by_side), enlarged, captioned."""
    return caption(upscale(side_by_side(real_BTHWC, fake_BTHWC, n_context), scale), n_context)


def upscale(frames_THWC: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement so 64x64 frames are watchable."""
    if factor <= 1:
        return frames_THWC
    return frames_THWC.repeat(factor, axis=1).repeat(factor, axis=2)


def write_video(path: str | os.PathLike, frames_THWC: np.ndarray, fps: int = 8) -> Path:
    """Writes .mp4 (H.264 via imageio-ffmpeg) or .gif, by the path's suffix."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames_THWC, np.uint8)
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    elif path.suffix == ".mp4":
        # H.264 wants even sizes.
        h, w = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
        with ffmpeg_quietly():
            iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)
    else:
        raise ValueError(f"{path}: video files are .mp4 or .gif")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 110, **layout) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(**layout)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def plot_curves(path: str | os.PathLike, curves: dict[str, np.ndarray], n_context: int,
                title: str = "", baseline: dict[str, np.ndarray] | None = None) -> Path:
    """One panel per metric: value per predicted frame (x = frames after the context);
    `baseline`: the same metrics for the last context frame repeated, dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        values = np.asarray(values, np.float64)
        x = np.arange(1, len(values) + 1)
        ax.plot(x, np.where(np.isfinite(values), values, np.nan), lw=1.5, label="generated")
        if baseline and name in baseline:
            still = np.asarray(baseline[name], np.float64)
            ax.plot(x, np.where(np.isfinite(still), still, np.nan), lw=1, ls="--",
                    color="gray", label="last context frame repeated")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"frames after the {n_context} context frames")
        ax.set_ylabel(name.upper())
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_fvd(path: str | os.PathLike, starts, values, window: int, n_context: int,
             title: str = "") -> Path:
    """FVD per window of frames against the frame index, the end of the context marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    centres = np.asarray(starts, np.float64) + window / 2
    ax.plot(centres, np.asarray(values, np.float64), "o-", lw=1.5)
    ax.axvline(n_context + 0.5, color="green", ls="--", lw=1, label="end of context")
    ax.set_xlabel(f"frame (centre of each {window}-frame window)")
    ax.set_ylabel("FVD")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_memory(path: str | os.PathLike, check: dict, title: str = "") -> Path:
    """The memory check at a glance: per metric, the mean gain from the early context (whole
    context minus the last K, sign so that up = helped) on revisits the model's window still
    holds, on revisits out of it and on frames that revisit nothing, with 95% intervals.
    A model that keeps the maze has the first bar above the other two."""
    plt = _pyplot()
    units = {"psnr": "dB", "ssim": "", "lpips": "", "nll": "nats / token"}
    names = [k for k in units if check.get(f"{k}_gain_intervals")]
    if not names:
        raise ValueError("plot_memory: the memory check holds no gain intervals")
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.4), squeeze=False)
    colours = ("tab:green", "tab:gray", "tab:blue")
    for ax, name in zip(axes[0], names):
        bars = check[f"{name}_gain_intervals"]
        for i, (label, stats) in enumerate(bars.items()):
            if not stats:
                ax.text(i, 0, "none", ha="center", va="bottom", fontsize=7)
                continue
            lo, hi = stats["interval"]
            ax.bar(i, stats["mean"], color=colours[i % 3], alpha=0.8)
            ax.errorbar(i, stats["mean"], yerr=[[stats["mean"] - lo], [hi - stats["mean"]]],
                        color="black", capsize=4, lw=1)
            ax.text(i, hi, f"{stats['frames']}", ha="center", va="bottom", fontsize=7)
        ax.axhline(0, color="black", lw=0.8)
        short = {"revisits in the window": "revisits\nin window",
                 "revisits out of the window": "revisits\nout of window",
                 "no revisit (control)": "no revisit\n(control)"}
        ax.set_xticks(range(len(bars)), [short.get(label, label) for label in bars], fontsize=7)
        effect = check.get(f"{name}_memory_effect")
        sub = ""
        if effect:
            lo, hi = effect["interval"]
            sub = f"\neffect {effect['effect']:+.3g} [{lo:+.3g}, {hi:+.3g}]"
        kind = "teacher-forced NLL" if name == "nll" else f"sampled {name.upper()}"
        ax.set_title(f"{kind}{sub}", fontsize=8)
        ax.set_ylabel("gain from the early context" + (f" ({units[name]})" if units[name]
                                                        else ""), fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title + f" (bar labels: frames; last {check['short_context']} context "
                     "frames vs all)", fontsize=8)
    return _save(fig, path)


def plot_identity(path: str | os.PathLike, identity: dict, title: str = "") -> Path:
    """How often each window of predicted frames names its own episode by its colours
    (teco/metrics/identity.py): the real frames (the ceiling), the generated ones and those
    imagined from the last context frames only, with 95% intervals, chance dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    centres = np.asarray(identity["start"], np.float64) + identity["window"] / 2
    labels = {"real": ("real frames", "black"), "generated": ("generated", "tab:red"),
              "short_context": ("generated from the last context frames", "tab:gray")}
    for j, (kind, (label, colour)) in enumerate(labels.items()):
        if kind not in identity:
            continue
        acc = np.array([w["accuracy"] for w in identity[kind]])
        lo, hi = np.array([w["interval"] for w in identity[kind]]).T
        x = centres + (j - 1) * 0.6  # side by side, so that the bars do not hide each other
        ax.errorbar(x, acc, yerr=[acc - lo, hi - acc], fmt="o-", color=colour, capsize=3,
                    lw=1.5, label=label)
    ax.axhline(identity["chance"], color="black", ls="--", lw=0.8,
               label=f"chance (1 of {identity['episodes']})")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"frame (centre of each {identity['window']}-frame window)")
    ax.set_ylabel("names its own episode")
    ax.grid(alpha=0.3)
    # Below the axes: inside, it would hide the low accuracies that matter most.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7)
    ax.set_title((title + "\n" if title else "") + "colours of the window vs each clip's context",
                 fontsize=8)
    return _save(fig, path)


def filmstrip(path: str | os.PathLike, real_BTHWC: np.ndarray, fake_BTHWC: np.ndarray,
              n_context: int, *, n_columns: int = 8, scale: int = 2) -> Path:
    """A still picture of rollouts: for each video a row of real frames above the generated
    ones at the same times, from the last context frame to the last generated one (labelled
    with their frame index), so one look shows whether late frames still show the same place."""
    plt = _pyplot()
    if real_BTHWC.shape != fake_BTHWC.shape or real_BTHWC.ndim != 5:
        raise ValueError(f"real {real_BTHWC.shape} and generated {fake_BTHWC.shape} must be "
                         "equal [B, T, H, W, 3]")
    b, t = real_BTHWC.shape[:2]
    if not 0 < n_context < t:
        raise ValueError(f"n_context={n_context} must be in [1, {t - 1}]")
    times = np.unique(np.linspace(n_context - 1, t - 1, n_columns).round().astype(int))
    h, w = real_BTHWC.shape[2:4]
    fig, axes = plt.subplots(2 * b, len(times), squeeze=False,
                             figsize=(len(times) * w * scale / 100, 2 * b * h * scale / 100 + 0.4))
    for i in range(b):
        for j, k in enumerate(times):
            for r, (frames, name) in enumerate(((real_BTHWC, "real"), (fake_BTHWC, "generated"))):
                ax = axes[2 * i + r, j]
                ax.imshow(frames[i, k], interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                colour = "green" if k < n_context else ("black" if r == 0 else "red")
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour), spine.set_linewidth(2)
                if i == 0 and r == 0:
                    ax.set_title(f"frame {k + 1}" + (" (context)" if k < n_context else ""),
                                 fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"{name} #{i}", fontsize=7)
    return _save(fig, path, dpi=100, pad=0.3, h_pad=0.2, w_pad=0.2)


def revisit_strip(path: str | os.PathLike, seen_KHWC: np.ndarray, real_KHWC: np.ndarray,
                  fake_KHWC: np.ndarray, where_K3: np.ndarray, n_context: int, *,
                  scale: int = 2, title: str = "", extra_row=None) -> Path:
    """Revisits side by side, one per column: the context frame that showed the place, the real
    frame when the agent came back, and the generated frame at that time; `where_K3` holds
    (video, frame seen, frame of return) with 0-based frame indices. extra_row: (frames
    [K, H, W, 3], label), another generated row (e.g. imagined from fewer context frames)."""
    plt = _pyplot()
    k = len(seen_KHWC)
    if not k or not (seen_KHWC.shape == real_KHWC.shape == fake_KHWC.shape) \
            or seen_KHWC.ndim != 4 or np.shape(where_K3) != (k, 3):
        raise ValueError(f"revisit_strip: seen {seen_KHWC.shape}, real {real_KHWC.shape}, "
                         f"generated {fake_KHWC.shape} must be equal [K>0, H, W, 3] with "
                         f"where [K, 3], got {np.shape(where_K3)}")
    h, w = seen_KHWC.shape[1:3]
    scale = max(scale, -(-128 // w))  # room for the labels under small frames
    rows = [(seen_KHWC, "seen in context", "green"), (real_KHWC, "real on return", "black"),
            (fake_KHWC, "generated", "red")]
    if extra_row is not None:
        if np.shape(extra_row[0]) != fake_KHWC.shape:
            raise ValueError(f"revisit_strip: extra row {np.shape(extra_row[0])} differs from "
                             f"the generated frames {fake_KHWC.shape}")
        rows.append((extra_row[0], extra_row[1], "orange"))
    fig, axes = plt.subplots(len(rows), k, squeeze=False,
                             figsize=(k * w * scale / 100 + 0.3, len(rows) * h * scale / 100 + 0.7))
    for j in range(k):
        video, seen_at, back_at = (int(x) for x in where_K3[j])
        for r, (frames, name, colour) in enumerate(rows):
            ax = axes[r, j]
            ax.imshow(frames[j], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour), spine.set_linewidth(2)
            if r == 0:
                ax.set_title(f"#{video}: {seen_at + 1} -> {back_at + 1}", fontsize=7)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle((title + "\n" if title else "") +
                 f"frame seen -> frame of return ({n_context} context frames)", fontsize=8)
    return _save(fig, path, dpi=100, pad=0.3, h_pad=0.2, w_pad=0.2)
