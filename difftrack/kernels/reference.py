"""Naive dense matching: materialises every logit and probability. Ground truth for tests (float64), and the
dense baseline of benchmarks/kernel.py (float32)."""

from __future__ import annotations

import torch

from difftrack.kernels.common import MatchResult, soft_argmax, top_candidates, window_tokens


def dense_cost(query, key, grid_h, grid_w, source_frame, scale=1.0, reverse=None, dtype=torch.float64):
    """The (N, F, P) matching cost C (head-averaged per-frame softmax, two-direction average with ``reverse``)."""
    tokens = grid_h * grid_w
    heads, points, _ = query.shape
    frames = key.shape[1] // tokens
    q, k = query.to(dtype), key.to(dtype)
    logits = torch.einsum("hnd,htd->hnt", q, k) * scale  # (H, N, F * P)
    cost = torch.softmax(logits.view(heads, points, frames, tokens), dim=-1).mean(0)
    if reverse is not None:
        all_queries, source_index = reverse
        source_keys = k[:, source_frame * tokens:(source_frame + 1) * tokens]
        backward = torch.softmax(torch.einsum("htd,hsd->hts", all_queries.to(dtype), source_keys) * scale, dim=-1)
        backward = backward.mean(0)[:, source_index]  # (F * P, N)
        cost = (cost + backward.T.reshape(points, frames, tokens)) / 2
    return cost


def match_reference(query, key, grid_h, grid_w, source_frame, text_key=None, scale=1.0, window=1, reverse=None,
                    candidates=0, dtype=torch.float64):
    tokens = grid_h * grid_w
    heads, points, _ = query.shape
    frames = key.shape[1] // tokens
    cost = dense_cost(query, key, grid_h, grid_w, source_frame, scale, reverse, dtype)
    peak, argmax = cost.max(-1)
    index, valid, centres = window_tokens(argmax, grid_h, grid_w, window)
    refined = soft_argmax(cost.gather(-1, index), valid, centres.to(dtype))
    top = top_candidates(cost, grid_h, grid_w, window, candidates) if candidates else (None, None, None)

    logits = torch.einsum("hnd,htd->hnt", query.to(dtype), key.to(dtype)) * scale
    text_len = 0 if text_key is None else text_key.shape[1]
    if text_key is not None:
        logits = torch.cat([torch.einsum("hnd,hld->hnl", query.to(dtype), text_key.to(dtype)) * scale, logits], dim=-1)
    joint = torch.softmax(logits, dim=-1).mean(0)  # (N, L + F * P)
    video = joint[:, text_len:].reshape(points, frames, tokens)
    text = joint[:, :text_len]
    zeros = torch.zeros(points, dtype=dtype)
    return MatchResult(
        argmax=argmax, peak=peak, refined=refined,
        mass_frames=video.sum(-1), mass_text=text.sum(-1) if text_len else zeros,
        max_frames=video.amax(-1), max_text=text.amax(-1) if text_len else zeros,
        candidate_index=top[0], candidate_cost=top[1], candidate_refined=top[2])
