"""Place memory during evaluation: revisits (teco/metrics/revisit.py) collected batch by batch,
the memory check against rollouts from the last K context frames, and the revisits picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class PlaceMemory:
    """Collects revisits (teco/metrics/revisit.py) batch by batch during evaluation.

    With `short_context` K > 0 it also holds the same frames imagined from only the last K
    context frames: on a revisit of a place seen before those K frames, only the full context
    can know what the place looks like, so the difference is the model's memory. `window` is the
    model's temporal window (seq_len): a place seen `window` or more frames before its revisit
    has slid out of the rollout's window, so no memory can reach it.
    """

    def __init__(self, n_context: int, short_context: int = 0, window: int | None = None):
        self.n_context, self.short_context, self.window = n_context, short_context, window
        self.videos = 0
        self.is_revisit, self.scores, self.pairs = [], {}, []
        self.sources, self.short_scores, self.short_pairs = [], {}, []
        self.episodes = []

    def add(self, ref_BTHWC, fake_BTHWC, poses, scores: dict, short_fake=None,
            lpips=None, episodes=None, nll=None) -> None:
        """short_fake: uint8 [B, P, H, W, 3], the predicted frames imagined from the last K;
        episodes: [B] the episode each clip was cut from (default: every clip its own);
        nll: (full, short) [B, P], the real frames' NLL with the whole and the last-K context
        (teco/likelihood.py), scored like the rest as metric `nll`."""
        from teco.metrics import frame_metrics
        from teco.metrics.revisit import find_revisits, match_pairs

        is_revisit, source = find_revisits(*poses, self.n_context)
        if not {"psnr", "ssim"} <= set(scores):  # an FVD-only protocol: score frames here
            scores = dict(scores, **frame_metrics(ref_BTHWC[:, self.n_context:],
                                                  fake_BTHWC[:, self.n_context:],
                                                  which=("psnr", "ssim")))
        for k, v in scores.items():
            self.scores.setdefault(k, []).append(np.asarray(v))
        if short_fake is not None:
            which = tuple(k for k in scores if k != "lpips" or lpips is not None)
            short = frame_metrics(ref_BTHWC[:, self.n_context:], short_fake, lpips=lpips,
                                  which=which)
            for k, v in short.items():
                self.short_scores.setdefault(k, []).append(np.asarray(v))
        if nll is not None:
            self.scores.setdefault("nll", []).append(np.asarray(nll[0]))
            self.short_scores.setdefault("nll", []).append(np.asarray(nll[1]))
        self.is_revisit.append(is_revisit)
        self.sources.append(source)
        self.episodes.append(self.videos + np.arange(len(ref_BTHWC)) if episodes is None
                             else np.asarray(episodes))
        seen, real, fake, where = match_pairs(ref_BTHWC, fake_BTHWC, source, self.n_context)
        if short_fake is not None:
            self.short_pairs.append(short_fake[where[:, 0], where[:, 2] - self.n_context])
        where[:, 0] += self.videos
        self.pairs.append((seen, real, fake, where))
        self.videos += len(ref_BTHWC)

    def summary(self, n: int) -> dict:
        from teco.metrics import psnr
        from teco.metrics.revisit import (AWAY_COS, AWAY_DISTANCE, MAX_DISTANCE, MIN_COS,
                                          finite_mean, revisit_summary)

        rev = np.concatenate(self.is_revisit)[:n]
        scores = {k: np.concatenate(v)[:n] for k, v in self.scores.items()}
        out = {"definition": f"predicted frame within {MAX_DISTANCE} cells and cos >= {MIN_COS} "
                             f"of a context frame's pose, after being > {AWAY_DISTANCE} cells "
                             f"away or turned past cos {AWAY_COS} in between",
               **revisit_summary(scores, rev)}
        if self.short_scores:
            out["memory_check"] = self._memory_check(n, scores)
        seen, real, fake, where, _ = self._pairs(n)
        if len(seen):
            # How alike the two real views of the place are (what a perfect memory could reach)
            # and how alike the generated view is to what the context showed.
            for name, frames in (("real", real), ("generated", fake)):
                out[f"psnr_seen_vs_{name}"] = finite_mean(psnr(seen, frames))
        return out

    def _memory_check(self, n: int, full: dict) -> dict:
        """Full context minus last-K context on the same frames (positive = better with the
        early context): on revisits of places seen only before the last K context frames (all,
        and those still inside the model's window), and on the frames that revisit nothing (the
        control, where memory of a place cannot help)."""
        from teco.metrics.revisit import (HIGHER_IS_BETTER, finite_mean, mean_interval,
                                          memory_effect)

        source = np.concatenate(self.sources)[:n]
        episodes = np.concatenate(self.episodes)[:n]
        only_full_saw = (source >= 0) & (source < self.n_context - self.short_context)
        gap = self.n_context + np.arange(source.shape[-1]) - source
        in_window = only_full_saw & ((gap < self.window) if self.window else True)
        control = source < 0
        groups = {"revisits in the window": in_window,
                  "revisits out of the window": only_full_saw & ~in_window,
                  "no revisit (control)": control}
        out = {"short_context": self.short_context, "window": self.window,
               "note": f"the same predicted frames imagined from only the last "
                       f"{self.short_context} context frames; gains are full - short "
                       "(LPIPS, NLL: short - full), positive = the early context helped; 'nll': "
                       "the real frame's teacher-forced NLL per TECO token, nats "
                       "(teco/likelihood.py), no sampling; "
                       "'in_window': the place was seen fewer than `window` frames before; "
                       "'memory_effect': gain in window minus gain on control frames, with a "
                       "bootstrap interval over the episodes (memory shows when it is above 0)",
               "revisit_frames": int(only_full_saw.sum()),
               "revisit_frames_in_window": int(in_window.sum()),
               "control_frames": int(control.sum())}
        for k, parts in self.short_scores.items():
            short = np.concatenate(parts)[:n]
            sign = 1.0 if HIGHER_IS_BETTER[k] else -1.0
            diff = sign * (full[k] - short)
            out[f"{k}_full"] = finite_mean(full[k][only_full_saw])
            out[f"{k}_short"] = finite_mean(short[only_full_saw])
            out[f"{k}_gain"] = finite_mean(diff[only_full_saw])
            out[f"{k}_gain_in_window"] = finite_mean(diff[in_window])
            out[f"{k}_gain_control"] = finite_mean(diff[control])
            out[f"{k}_memory_effect"] = memory_effect(diff, in_window, control,
                                                      groups_N=episodes)
            out[f"{k}_gain_intervals"] = {name: mean_interval(diff, mask, groups_N=episodes)
                                          for name, mask in groups.items()}
        return out

    def _pairs(self, n: int):
        seen, real, fake, where = (np.concatenate(x) for x in zip(*self.pairs))
        keep = where[:, 0] < n
        short = np.concatenate(self.short_pairs)[keep] if self.short_pairs else None
        return seen[keep], real[keep], fake[keep], where[keep], short

    def picture(self, path: Path, title: str, rows: int = 6) -> None:
        from teco import videos

        seen, real, fake, where, short = self._pairs(self.videos)
        if not len(seen):
            return
        gap = where[:, 2] - where[:, 1]
        # Revisits the model's window still holds come first (the others no memory can reach),
        # then one per video, the longest gap since the place was seen first.
        reach = gap < self.window if self.window else np.ones(len(gap), bool)
        order = sorted(range(len(where)), key=lambda i: (not reach[i], -gap[i]))
        picked, videos_used = [], set()
        for i in order:
            if where[i, 0] not in videos_used and reach[i]:
                picked.append(i), videos_used.add(where[i, 0])
        picked = (picked + [i for i in order if i not in picked])[:rows]
        extra = None
        if short is not None:  # the same revisits imagined from the last K context frames
            extra = (short[picked], f"from the last {self.short_context} only")
        videos.revisit_strip(path, seen[picked], real[picked], fake[picked], where[picked],
                             self.n_context, title=title, extra_row=extra)
