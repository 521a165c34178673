"""Does a rollout stay in its own world? The episode told apart by its colours.

A held-out clip's context frames show its world, and in Memory Maze, DMLab or Minecraft a world
has colours of its own (a maze's wall colours, floor and textures). A window of predicted frames
*keeps its world* when, of all the evaluated clips' contexts, the one whose colour histogram is
nearest to the window's (Hellinger distance) was cut from the same episode. The real frames of
the same window show how well colours tell the episodes apart (the ceiling); one over the number
of episodes is chance. It needs no poses and is blind to where things are: a rollout can keep
its world's colours and still not remember a place (teco/metrics/revisit.py asks that). Late
windows, whose frames the model's temporal window no longer shares with the context, test
whether the model carries the world through its own frames. Each window also reports its
*motion*, the mean absolute change between consecutive frames (0-255): colours alone cannot tell
a kept maze from a rollout frozen on one of its walls, and the motion beside the real frames'
can. Pure numpy.
"""
from __future__ import annotations

import numpy as np

BINS = 8  # levels per channel: 512 colours, coarse enough for blurry generated frames
WINDOW = 16


def colour_histograms(frames_NTHWC: np.ndarray, bins: int = BINS) -> np.ndarray:
    """float64 [N, bins**3]: the share of each quantised RGB colour over all frames of a clip."""
    x = np.asarray(frames_NTHWC)
    if x.dtype != np.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"colour_histograms wants uint8 [N, T, H, W, 3], got {x.dtype} "
                         f"{x.shape}")
    q = (x.astype(np.int64) * bins) >> 8
    colour = ((q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]).reshape(len(x), -1)
    k = bins ** 3
    counts = np.bincount((colour + k * np.arange(len(x))[:, None]).ravel(),
                         minlength=k * len(x)).reshape(len(x), k)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def frame_motion(frames_NTHWC: np.ndarray) -> np.ndarray:
    """float64 [N]: the mean absolute change of a pixel value (0-255) between consecutive frames
    of each clip; 0 for a clip of one frame."""
    x = np.asarray(frames_NTHWC)
    if x.ndim != 5:
        raise ValueError(f"frame_motion wants [N, T, H, W, C], got {x.shape}")
    if x.shape[1] < 2:
        return np.zeros(len(x))
    diff = np.abs(np.diff(x.astype(np.int16), axis=1))
    return diff.reshape(len(x), -1).mean(1, dtype=np.float64)


def hellinger(p_NK: np.ndarray, q_MK: np.ndarray) -> np.ndarray:
    """[N, M] Hellinger distances between histograms that sum to 1 (0 = same colours, 1 = no
    colour shared), through the Bhattacharyya coefficient: a matrix product, so that a thousand
    clips never hold a [N, M, K] array."""
    overlap = np.sqrt(p_NK) @ np.sqrt(q_MK).T
    return np.sqrt(np.clip(1.0 - overlap, 0.0, 1.0))


def nearest_episode(query_NK: np.ndarray, context_NK: np.ndarray,
                    episodes_N: np.ndarray) -> np.ndarray:
    """[N]: the episode of the context nearest to each query (the world it names)."""
    return np.asarray(episodes_N)[hellinger(query_NK, context_NK).argmin(1)]


class WorldIdentity:
    """Collects colour histograms batch by batch during evaluation; `summary` tells, per window
    of `window` predicted frames, how often the real, the generated and (with a memory check)
    the short-context generated frames name their own episode."""

    def __init__(self, n_context: int, window: int = WINDOW):
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        self.n_context, self.window = n_context, window
        self.context, self.episodes = [], []
        self.windows: dict[str, list] = {"real": [], "generated": [], "short_context": []}
        self.motion: dict[str, list] = {k: [] for k in self.windows}

    def _per_window(self, predicted_BPHWC: np.ndarray, fn=colour_histograms) -> np.ndarray:
        p = predicted_BPHWC.shape[1]
        return np.stack([fn(predicted_BPHWC[:, s:s + self.window])
                         for s in range(0, p, self.window)], axis=1)       # [B, W, ...]

    def _add(self, kind: str, predicted_BPHWC: np.ndarray) -> None:
        self.windows[kind].append(self._per_window(predicted_BPHWC))
        self.motion[kind].append(self._per_window(predicted_BPHWC, frame_motion))

    def add(self, real_BTHWC, fake_BTHWC, episodes_B, short_fake_BPHWC=None) -> None:
        """real / fake: uint8 [B, context + predicted, H, W, 3]; short_fake: the predicted frames
        imagined from the last K context frames, [B, predicted, H, W, 3]."""
        c = self.n_context
        self.context.append(colour_histograms(real_BTHWC[:, :c]))
        self.episodes.append(np.asarray(episodes_B))
        self._add("real", real_BTHWC[:, c:])
        self._add("generated", fake_BTHWC[:, c:])
        if short_fake_BPHWC is not None:
            self._add("short_context", short_fake_BPHWC)

    def summary(self, n: int) -> dict | None:
        """None with fewer than two episodes (nothing to tell apart)."""
        from teco.metrics.revisit import mean_interval

        if not self.context:
            return None
        context = np.concatenate(self.context)[:n]
        episodes = np.concatenate(self.episodes)[:n]
        n_episodes = len(np.unique(episodes))
        if n_episodes < 2:
            return None
        out = {"definition": f"a window of {self.window} predicted frames names its own episode "
                             "when, of all clips' context frames, the nearest by colour "
                             f"histogram ({BINS}^3 RGB bins, Hellinger distance) was cut from "
                             "its episode; 'real': the real frames of the window (how well "
                             "colours tell these episodes apart), 'chance': 1 / episodes; "
                             "intervals resample the episodes; 'motion': the mean absolute "
                             "change of a pixel (0-255) between consecutive frames of the "
                             "window, near 0 for a rollout frozen on one view; 'named': "
                             "the episode each video's window names; 'most_named': the share "
                             "of the videos naming the most named one (1 / episodes when the "
                             "names spread, 1 when every window names one world)",
               "window": self.window, "videos": int(len(context)), "episodes": n_episodes,
               "chance": 1.0 / n_episodes}
        every_video = np.ones((len(context), 1), bool)
        for kind, parts in self.windows.items():
            if not parts:
                continue
            hist = np.concatenate(parts)[:n]                                # [N, W, K]
            motion = np.concatenate(self.motion[kind])[:n]                  # [N, W]
            out["start"] = [self.n_context + w * self.window for w in range(hist.shape[1])]
            out[kind] = []
            for w in range(hist.shape[1]):
                named = nearest_episode(hist[:, w], context, episodes)       # [N]
                hits = named == episodes
                stats = mean_interval(hits[:, None].astype(np.float64), every_video,
                                      groups_N=episodes)
                # Wrong names spread over the episodes, or one world every rollout drifts to?
                most_named = np.unique(named, return_counts=True)[1].max() / len(named)
                out[kind].append({"accuracy": stats["mean"], "interval": stats["interval"],
                                  "motion": float(motion[:, w].mean()),
                                  "named": [int(e) for e in named],
                                  "most_named": float(most_named)})
        return out


def kept(summary: dict, kind: str = "generated", window: int = -1) -> bool:
    """Whether that window's accuracy interval lies above chance."""
    return summary[kind][window]["interval"][0] > summary["chance"]
