"""Aggregation over videos and the harmonic-mean ranking of (layer, step) pairs.

Every metric is a (layers x steps) table per video. Aggregation takes, cell by cell, the mean,
standard deviation and count over the videos where the metric is defined (NaN-aware: a video with
no moved visible point says nothing about moved-point accuracy).

Ranking (docs/method.md section 3): accuracy, cross-frame confidence and cross-frame attention, each
min-max normalised over the whole (layer x step) table of means, combined by their harmonic mean
cell by cell. All three tables are indexed by the same (layer, step), so accuracy at step t is
paired with the scores at step t (the authors' release pairs accuracy at t + 1 with scores at t).

The recommendation takes the step of the best cell and the ``top`` best layers at that step, so
``track --layers auto`` gets layers that work together at one step; cells without a score (NaN: no
ground-truth point to score) are never recommended, and a table without any scored cell recommends nothing.
"""

from __future__ import annotations

import warnings

import numpy as np

RANKED_SCORES = ("conf_cross", "attn_cross")


def aggregate(per_video: list[dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """{metric: (L, S) table} per video -> {metric: {"mean", "std", "count"}} tables."""
    out = {}
    for name in per_video[0]:
        stack = np.stack([np.asarray(v[name], dtype=np.float64) for v in per_video])
        count = np.isfinite(stack).sum(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
            mean = np.nanmean(stack, 0)
            std = np.nanstd(stack, 0)
        out[name] = {"mean": mean, "std": std, "count": count}
    return out


def min_max(table: np.ndarray) -> np.ndarray:
    """Min-max normalise over every finite cell; a constant table maps to 1 (no cell is worse)."""
    table = np.asarray(table, dtype=np.float64)
    finite = np.isfinite(table)
    if not finite.any():
        return np.full_like(table, np.nan)
    lo, hi = table[finite].min(), table[finite].max()
    if hi - lo <= 0:
        return np.where(finite, 1.0, np.nan)
    return (table - lo) / (hi - lo)


def harmonic_mean(*tables: np.ndarray) -> np.ndarray:
    """Cell-wise harmonic mean; 0 where any input is 0, NaN where any is NaN."""
    stack = np.stack(tables)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(stack > 0, 1.0 / stack, np.inf)
        hm = len(tables) / inv.sum(0)
    return np.where(np.isnan(stack).any(0), np.nan, hm)


def rank(means: dict[str, np.ndarray], layers: list[int], steps: list[int], accuracy: str,
         top: int = 3) -> dict:
    """Harmonic-mean score table and the recommendation from aggregated mean tables."""
    normalised = {name: min_max(means[name]) for name in (accuracy, *RANKED_SCORES)}
    score = harmonic_mean(*normalised.values())
    order = [(i, j) for i, j in zip(*np.unravel_index(np.argsort(-np.nan_to_num(score, nan=-1), axis=None, kind="stable"),
                                                      score.shape))]
    ranking = [{"layer": layers[i], "step": steps[j], "score": float(score[i, j]),
                **{name: float(means[name][i, j]) for name in (accuracy, *RANKED_SCORES)}}
               for i, j in order if np.isfinite(score[i, j])]
    if not ranking:  # no cell has a score: nothing to recommend
        return {"score": score, "normalised": normalised, "ranking": [], "layers": [], "steps": []}
    best_step = ranking[0]["step"]
    column = score[:, steps.index(best_step)]
    best_layers = [layers[i] for i in np.argsort(-np.nan_to_num(column, nan=-1), kind="stable")[:top]
                   if np.isfinite(column[i])]
    return {"score": score, "normalised": normalised, "ranking": ranking, "layers": best_layers,
            "steps": [best_step]}
