"""Place memory: when the agent comes back to a place the context showed, does it look the same?

Data sets that store the agent's pose (memory_maze: `agent_pos` in maze cells, `agent_dir` a
unit heading) let evaluation find *revisits*: predicted frames taken from about the pose of a
context frame, after the view had left that place in between. A model that keeps the maze
scores better on revisits than on frames of places it never saw, at the same distance into the
rollout; a model that only continues the last frames does not. Pure numpy.
"""
from __future__ import annotations

import numpy as np

# A predicted frame revisits a context frame when the agent stands within MAX_DISTANCE cells of
# where it stood then and looks within ~30 degrees of the same way ...
MAX_DISTANCE = 0.5
MIN_COS = 0.87
# ... and somewhere in between it was AWAY: more than 1.5 cells off, or turned past 90 degrees
# (without this, the first frames after the context would "revisit" the last context frames).
AWAY_DISTANCE = 1.5
AWAY_COS = 0.0
# Which way is better for the per-frame scores compared here (nll: teco/likelihood.py).
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "nll": False}


def _check_poses(pos_BT2, dir_BT2, n_context: int):
    pos = np.asarray(pos_BT2, np.float64)
    heading = np.asarray(dir_BT2, np.float64)
    if pos.ndim != 3 or pos.shape[-1] != 2 or heading.shape != pos.shape:
        raise ValueError(f"poses must be agent_pos and agent_dir of shape [B, T, 2], got "
                         f"{pos.shape} and {heading.shape}")
    if not 0 < n_context < pos.shape[1]:
        raise ValueError(f"n_context={n_context} must be in [1, {pos.shape[1] - 1}]")
    if not (np.isfinite(pos).all() and np.isfinite(heading).all()):
        raise ValueError("poses hold non-finite values")
    norm = np.linalg.norm(heading, axis=-1, keepdims=True)
    return pos, heading / np.maximum(norm, 1e-12)


def find_revisits(pos_BT2, dir_BT2, n_context: int, *, max_distance: float = MAX_DISTANCE,
                  min_cos: float = MIN_COS, away_distance: float = AWAY_DISTANCE,
                  away_cos: float = AWAY_COS) -> tuple[np.ndarray, np.ndarray]:
    """For every predicted frame (index >= n_context), the context frame it revisits.

    Returns (is_revisit bool [B, P], source int [B, P]) with P = T - n_context; `source` is the
    matched context frame (the nearest in position among those that qualify), -1 where none.
    """
    pos, heading = _check_poses(pos_BT2, dir_BT2, n_context)
    t = pos.shape[1]
    dist_BTT = np.linalg.norm(pos[:, :, None] - pos[:, None, :], axis=-1)
    cos_BTT = np.einsum("bid,bjd->bij", heading, heading)
    away_BTT = (dist_BTT > away_distance) | (cos_BTT < away_cos)     # [b, c, s]
    # first_away[b, c]: the first frame after c at which the agent was away from c's pose.
    later = np.arange(t)[None, None, :] > np.arange(t)[None, :, None]
    first_away = np.where(away_BTT & later, np.arange(t)[None, None, :], t).min(axis=-1)

    ctx = slice(0, n_context)
    pred = slice(n_context, t)
    close = (dist_BTT[:, pred, ctx] <= max_distance) & (cos_BTT[:, pred, ctx] >= min_cos)
    left = first_away[:, None, ctx] < np.arange(n_context, t)[None, :, None]
    ok = close & left                                                 # [b, P, C]
    score = np.where(ok, dist_BTT[:, pred, ctx], np.inf)
    source = np.where(ok.any(-1), score.argmin(-1), -1)
    return source >= 0, source


def revisit_summary(per_frame: dict[str, np.ndarray], is_revisit_NP: np.ndarray,
                    higher_is_better: dict[str, bool] | None = None) -> dict:
    """Scores of generated frames on revisits against the other predicted frames.

    per_frame: metric -> [N, P] per predicted frame (e.g. PSNR of generated vs real).
    `<metric>_gain` compares each revisit with the non-revisit frames at the same horizon
    (frames after the context) and averages over revisits; positive = better on revisits, so
    it is not fooled by revisits happening late, where every frame scores worse.
    """
    higher_is_better = {**HIGHER_IS_BETTER, **(higher_is_better or {})}
    rev = np.asarray(is_revisit_NP, bool)
    out = {"revisit_frames": int(rev.sum()), "predicted_frames": int(rev.size),
           "videos_with_revisits": int(rev.any(axis=1).sum())}
    for name, values in per_frame.items():
        v = np.asarray(values, np.float64)
        if v.shape != rev.shape:
            raise ValueError(f"{name}: scores {v.shape} and revisit mask {rev.shape} differ")
        other = ~rev
        out[f"{name}_revisit"] = finite_mean(v[rev])
        out[f"{name}_other"] = finite_mean(v[other])
        gains = []
        for h in np.flatnonzero(rev.any(0) & other.any(0)):
            base = finite_mean(v[other[:, h], h])
            if base is not None:
                gains.extend(v[rev[:, h], h] - base)
        gain = finite_mean(np.asarray(gains))
        out[f"{name}_gain"] = gain if gain is None or higher_is_better.get(name, True) else -gain
    return out


def match_pairs(real_BTHWC: np.ndarray, fake_BTHWC: np.ndarray, source_BP: np.ndarray,
                n_context: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every revisit as (seen context frame, real frame, generated frame, (video, t_seen, t)),
    frames uint8 [K, H, W, C]; for the place-memory PSNRs and the revisits picture."""
    bi, pi = np.nonzero(np.asarray(source_BP) >= 0)
    seen = real_BTHWC[bi, source_BP[bi, pi]]
    t = pi + n_context
    return (seen, real_BTHWC[bi, t], fake_BTHWC[bi, t],
            np.stack([bi, source_BP[bi, pi], t], axis=-1))


def finite_mean(x) -> float | None:
    """The mean of the finite values (PSNR of identical frames is inf), None if there are none."""
    x = np.asarray(x, np.float64)
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else None


def memory_effect(gain_NP: np.ndarray, revisit_NP: np.ndarray, control_NP: np.ndarray, *,
                  groups_N: np.ndarray | None = None, draws: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict | None:
    """How much more the early context helps on revisits than on frames that revisit nothing.

    gain_NP: per predicted frame, score with the whole context minus score from the last K
    context frames; revisit_NP / control_NP: bool masks of the frames to compare. The effect is
    mean(gain on revisits) - mean(gain on control frames); the interval comes from resampling
    the videos with replacement (the frames of one rollout are not independent), so with a few
    videos it is honestly wide. groups_N: the episode each video was cut from, when several
    clips come from one episode; whole episodes are then resampled (the clips of one walk share
    its maze). None when either set is empty.
    """
    resampled = _resampled_means(gain_NP, (revisit_NP, control_NP), groups_N, draws, seed)
    if resampled is None:
        return None
    means, boot, videos, n = resampled
    diff = boot[0] - boot[1]
    lo, hi = np.quantile(diff[np.isfinite(diff)], [(1 - level) / 2, (1 + level) / 2])
    return {"effect": float(means[0] - means[1]), "interval": [float(lo), float(hi)],
            "level": level, "videos": int(videos), "episodes": int(n)}


def mean_interval(gain_NP: np.ndarray, mask_NP: np.ndarray, *,
                  groups_N: np.ndarray | None = None, draws: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict | None:
    """The mean gain on the masked frames with the same resampled interval as memory_effect;
    None when no finite frame is masked."""
    resampled = _resampled_means(gain_NP, (mask_NP,), groups_N, draws, seed)
    if resampled is None:
        return None
    means, boot, videos, n = resampled
    lo, hi = np.quantile(boot[0][np.isfinite(boot[0])], [(1 - level) / 2, (1 + level) / 2])
    frames = int((np.asarray(mask_NP, bool) & np.isfinite(np.asarray(gain_NP, float))).sum())
    return {"mean": float(means[0]), "interval": [float(lo), float(hi)], "level": level,
            "frames": frames, "videos": int(videos), "episodes": int(n)}


def _resampled_means(gain_NP, masks, groups_N, draws: int, seed: int):
    """(means [M], bootstrap means [M, draws] (NaN where a resample holds no frame of a mask),
    videos, units resampled), or None if a mask holds no finite frame."""
    gain = np.asarray(gain_NP, np.float64)
    masks = [np.asarray(m, bool) for m in masks]
    for m in masks:
        if m.shape != gain.shape:
            raise ValueError(f"gains {gain.shape} and masks {[x.shape for x in masks]} differ")
    ok = np.isfinite(gain)
    masks = [m & ok for m in masks]
    if not all(m.any() for m in masks):
        return None
    g = np.where(ok, gain, 0.0)
    # Per-video sums and counts: a resample of videos is then a weighted sum, no frame copies.
    sums = np.stack([(g * m).sum(1) for m in masks])                 # [M, N]
    counts = np.stack([m.sum(1) for m in masks]).astype(np.float64)
    means = sums.sum(1) / counts.sum(1)
    videos = gain.shape[0]
    if groups_N is not None:
        groups = np.asarray(groups_N)
        if groups.shape != (videos,):
            raise ValueError(f"groups {groups.shape} and gains {gain.shape} differ in videos")
        _, index = np.unique(groups, return_inverse=True)
        sums = np.stack([np.bincount(index, weights=row) for row in sums])
        counts = np.stack([np.bincount(index, weights=row) for row in counts])
    n = sums.shape[1]
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws).T
    s, c = sums @ weights, counts @ weights                          # [M, draws]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(c > 0, s / np.where(c > 0, c, 1.0), np.nan)
    return means, boot, videos, n


# A recall pick is judged among frames more than RECALL_SKIP back: nearer ones are near copies
# of the previous frame, which any match finds.
RECALL_SKIP = 4


def recall_picks(pos_BT2, dir_BT2, logits_BTT, reach: int, skip: int = RECALL_SKIP) -> dict:
    """Where a model's recall looks (`recall`, teco/models/recall.py), judged by the poses: for
    each frame t, among the frames t - reach .. t - skip - 1 (those it may recall, more than
    `skip` back), whether the one its match scores highest (logits_BTT[b, t, s]) shows the same
    view (within MAX_DISTANCE cells and ~30 degrees, as a revisit), the share of them that do
    (a random pick's chance), and whether any does. Float arrays [B, T], NaN where t has none."""
    pos, heading = _check_poses(pos_BT2, dir_BT2, 1)
    b, t = pos.shape[:2]
    logits = np.asarray(logits_BTT, np.float64)
    if logits.shape != (b, t, t):
        raise ValueError(f"recall logits must be [B, T, T] = {(b, t, t)}, got {logits.shape}")
    same = ((np.linalg.norm(pos[:, :, None] - pos[:, None, :], axis=-1) <= MAX_DISTANCE)
            & (np.einsum("bid,bjd->bij", heading, heading) >= MIN_COS))
    back = np.arange(t)[:, None] - np.arange(t)[None, :]              # [t, s]: t - s
    allowed = ((back > skip) & (back <= reach))[None]
    any_allowed = allowed.any(-1)                                      # [1, t]
    pick = np.where(allowed, logits, -np.inf).argmax(-1)              # [b, t]
    picked = np.take_along_axis(same, pick[..., None], axis=-1)[..., 0]
    nan = np.full((b, t), np.nan)
    count = np.maximum(allowed.sum(-1), 1)
    return {"pick": np.where(any_allowed, picked, nan),
            "random": np.where(any_allowed, (same & allowed).sum(-1) / count, nan),
            "exists": np.where(any_allowed, (same & allowed).any(-1), nan)}


class RecallLook:
    """Collects recall_picks batch by batch (teco.eval, models with `recall` on data with
    poses) -> how often the match's pick is the same view, with an interval over episodes,
    against a random pick's chance and the share of frames that have such a view in reach."""

    def __init__(self, reach: int):
        self.reach, self.parts, self.episodes = int(reach), [], []

    def add(self, pos_BT2, dir_BT2, logits_BTT, episodes_B) -> None:
        self.parts.append(recall_picks(pos_BT2, dir_BT2, logits_BTT, self.reach))
        self.episodes.append(np.asarray(episodes_B))

    def summary(self, n: int) -> dict | None:
        if not self.parts:
            return None
        picks = {k: np.concatenate([p[k] for p in self.parts])[:n] for k in self.parts[0]}
        out = mean_interval(picks["pick"], np.isfinite(picks["pick"]),
                            groups_N=np.concatenate(self.episodes)[:n])
        if out is None:
            return None
        return {"same_view_pick": out, "same_view_random": float(np.nanmean(picks["random"])),
                "same_view_in_reach": float(np.nanmean(picks["exists"])),
                "note": f"real clips: for each frame, among the frames it may recall more than "
                        f"{RECALL_SKIP} back (up to {self.reach}), whether the one its match "
                        f"scores highest shows the same view (within {MAX_DISTANCE} cells and "
                        f"~30 degrees), a random one's chance, and whether one exists"}
