"""Fused matching in plain torch, chunked over query points and heads (CPU and GPU).

Per (query chunk, head chunk) one batched matmul over heads gives the logits against every video
token, and the stock softmax turns them in place into per-frame probabilities. Each frame's
log-sum-exp, read off its first token (logit_0 - log p_0), also gives the joint softmax over text +
all frames (:func:`joint_weights`: joint = per-frame probability x joint weight), so the exp is
computed once and the scores are passed over only by the softmax and the head sum. A second batched matmul, over (point, frame) pairs, sums the heads with the two sets
of coefficients into the head-averaged per-frame and joint probabilities of the chunk. Nothing of
size queries x tokens x heads exists at any time: working buffers stay within ``memory_budget``
bytes (plus, with ``reverse``, the (N, F * P) reverse-direction cost, which has no head axis).
"""

from __future__ import annotations

import torch

from difftrack.kernels.common import (
    MatchResult,
    accumulation_dtype,
    joint_weights,
    soft_argmax,
    top_candidates,
    window_tokens,
)

# Working buffers; the rest of a call (outputs, per-chunk statistics) stays within 64 MB with it.
DEFAULT_MEMORY_BUDGET = 56 * 2**20
# On the CPU, when a step cannot hold every query point, few heads and many points per step are faster: each
# key block read from memory then serves more query rows, and the matmul's output stays nearer the cache.
# Two heads within 40 MB ran fastest of 1-6 heads in 14-56 MB on a 2-core Xeon: at the CogVideoX shapes 1.61
# CPU-s (2B) and 2.55 (5B) against 2.52 and 5.34 with all heads in 56 MB (benchmarks/results/kernel*.json).
CPU_HEAD_CHUNK = 2
CPU_WORKING_BUDGET = 40 * 2**20


def _chunk_rows(budget: int, row_bytes: int, total: int) -> int:
    return max(1, min(total, budget // max(row_bytes, 1)))


def chunk_sizes(heads: int, points: int, video: int, dim: int, dtype: torch.dtype, key_dtype: torch.dtype,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, head_chunk: int | None = None,
                cpu: bool = False) -> tuple[int, int]:
    """(heads, query points) per step of :func:`match_torch`, so that its working buffers fit the budget."""
    item = torch.finfo(dtype).bits // 8
    # Keys in another dtype (bf16, fp16) are upcast one head chunk at a time; that copy gets half the budget.
    upcast_bytes_per_head = 0 if key_dtype == dtype else video * dim * item
    if cpu:
        memory_budget = min(memory_budget, CPU_WORKING_BUDGET)

    def query_rows(head_chunk):
        return _chunk_rows(memory_budget - head_chunk * upcast_bytes_per_head, (head_chunk + 2) * video * item,
                           points)

    if head_chunk is None:
        head_chunk = heads if not upcast_bytes_per_head else memory_budget // 2 // upcast_bytes_per_head
        if cpu and query_rows(max(1, min(head_chunk, heads))) < points:
            head_chunk = min(head_chunk, CPU_HEAD_CHUNK)
    head_chunk = max(1, min(head_chunk, heads))
    return head_chunk, query_rows(head_chunk)


# Rows of a product are multiplied in whole blocks of this many, padded with copies of the last row.
ROW_BLOCK = 16


def _row_products(rows: torch.Tensor, columns: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.bmm(rows, columns) over whole blocks of ROW_BLOCK rows. BLAS libraries round a row's sums
    according to how many rows they multiply at once: MKL on AVX-512 takes a single row as a matrix-vector
    product, and on AVX2 the rows left over past its tiles go through other kernels. Padded to whole blocks, a
    point matched alone against the video's keys gets the bits it gets among others (tests/test_kernels.py
    checks the fields the tracker reads)."""
    count = rows.shape[1]
    padding = -count % ROW_BLOCK
    if not padding:
        return torch.bmm(rows, columns, out=out)
    padded = torch.cat([rows, rows[:, -1:].expand(-1, padding, -1)], 1)
    product = torch.bmm(padded, columns)[:, :count]
    return product if out is None else out.copy_(product)


def reverse_cost(all_queries, source_keys, source_index, scale, dtype, memory_budget=DEFAULT_MEMORY_BUDGET,
                 head_chunk=1):
    """Head-averaged C[j -> s] at the query points: (N, T) with T = F * P target tokens.

    For every target token, softmax over the source frame's tokens of q_target . k_source; only the
    columns of the N query points are kept.
    """
    heads, targets, _ = all_queries.shape
    sources = source_keys.shape[1]
    out = torch.zeros(len(source_index), targets, dtype=dtype, device=all_queries.device)
    item = torch.finfo(dtype).bits // 8
    target_chunk = _chunk_rows(memory_budget, head_chunk * (sources + len(source_index)) * item, targets)
    for t0 in range(0, targets, target_chunk):
        t1 = min(t0 + target_chunk, targets)
        for h0 in range(0, heads, head_chunk):
            h1 = min(h0 + head_chunk, heads)
            logits = torch.bmm(all_queries[h0:h1, t0:t1].to(dtype) * scale, source_keys[h0:h1].to(dtype).transpose(1, 2))
            logits.sub_(logits.amax(-1, keepdim=True)).exp_()
            picked = logits[:, :, source_index] / logits.sum(-1, keepdim=True)  # (h, t, N)
            out[:, t0:t1] += picked.sum(0).T
    return out.div_(heads)


# Below this a first-token probability has lost too much precision (or underflowed) to give the log-sum-exp.
_SAFE_FIRST_PROBABILITY = 1e-20


def _frame_logsumexp(first_logit, first_probability, scaled_query, key, tokens, dtype):
    """(h, n, F) log-sum-exp of every frame's logits, logit_0 - log p_0; frames whose first token is
    vanishingly unlikely are recomputed from their logits."""
    lse = first_logit - first_probability.log()
    unsafe = (first_probability < _SAFE_FIRST_PROBABILITY).nonzero()
    for head, point, frame in unsafe.tolist():
        logits = key[head, frame * tokens:(frame + 1) * tokens].to(dtype) @ scaled_query[head, point]
        lse[head, point, frame] = torch.logsumexp(logits, 0)
    return lse


def match_torch(query, key, grid_h, grid_w, source_frame, text_key=None, scale=1.0, window=1, reverse=None,
                candidates=0, memory_budget=DEFAULT_MEMORY_BUDGET, head_chunk=None):
    dtype = accumulation_dtype(query, key, text_key)
    device = query.device
    heads, points, dim = query.shape
    tokens = grid_h * grid_w
    video = key.shape[1]
    frames = video // tokens
    text_len = 0 if text_key is None else text_key.shape[1]
    head_chunk, query_chunk = chunk_sizes(heads, points, video, dim, dtype, key.dtype, memory_budget, head_chunk,
                                          cpu=device.type == "cpu")

    backward = None
    if reverse is not None:
        all_queries, source_index = reverse
        source_keys = key[:, source_frame * tokens:(source_frame + 1) * tokens]
        backward = reverse_cost(all_queries, source_keys, source_index.to(device), scale, dtype, memory_budget,
                                head_chunk).view(points, frames, tokens)
    # Averaging the two directions folds into the forward coefficients: cost = sum_h p_h / (2H) + backward / 2.
    forward_weight = (0.5 if backward is not None else 1.0) / heads

    exp_buffer = torch.empty(head_chunk * query_chunk * video, dtype=dtype, device=device)
    # Head averages of both softmaxes, interleaved per (point, frame) so one batched matmul over heads fills them.
    average_buffer = torch.empty(query_chunk * frames * 2 * tokens, dtype=dtype, device=device)
    coef_buffer = torch.empty(query_chunk * frames * 2 * head_chunk, dtype=dtype, device=device)
    text_keys = None if text_key is None else text_key.to(dtype)

    argmax = torch.empty(points, frames, dtype=torch.int64, device=device)
    peak = torch.empty(points, frames, dtype=dtype, device=device)
    refined = torch.empty(points, frames, 2, dtype=dtype, device=device)
    mass_frames = torch.zeros(points, frames, dtype=dtype, device=device)
    mass_text = torch.zeros(points, dtype=dtype, device=device)
    max_frames = torch.empty(points, frames, dtype=dtype, device=device)
    max_text = torch.zeros(points, dtype=dtype, device=device)
    if candidates:
        k = min(candidates, tokens)
        candidate_index = torch.empty(points, frames, k, dtype=torch.int64, device=device)
        candidate_cost = torch.empty(points, frames, k, dtype=dtype, device=device)
        candidate_refined = torch.empty(points, frames, k, 2, dtype=dtype, device=device)

    for n0 in range(0, points, query_chunk):
        n1 = min(n0 + query_chunk, points)
        count = n1 - n0
        q = query[:, n0:n1].to(dtype) * scale
        averages = average_buffer[:count * frames * 2 * tokens].view(count * frames, 2, tokens).zero_()
        text_joint = torch.zeros(count, text_len, dtype=dtype, device=device)
        for h0 in range(0, heads, head_chunk):
            h1 = min(h0 + head_chunk, heads)
            chunk_heads = h1 - h0
            exp_logits = exp_buffer[:chunk_heads * count * video].view(chunk_heads, count, video)
            _row_products(q[h0:h1], key[h0:h1].to(dtype).transpose(1, 2), out=exp_logits)
            per_frame = exp_logits.view(chunk_heads, count, frames, tokens)
            first_logit = per_frame[..., 0].clone()
            # The stock softmax kernel does max, exp and sum row by row in cache, with a faster exp than
            # exp_(); in place, it reads each row before writing it.
            torch.ops.aten._softmax.out(per_frame, -1, False, out=per_frame)
            # Each frame's log-sum-exp from its first token, p_0 = exp(logit_0 - lse), so no further pass over
            # the scores; the joint softmax needs only that (max = lse, sum = 1 in joint_weights' terms).
            frame_lse = _frame_logsumexp(first_logit, per_frame[..., 0], q[h0:h1], key[h0:h1], tokens, dtype)
            text_max = text_sum = text_exp = None
            if text_keys is not None:
                text_exp = torch.bmm(q[h0:h1], text_keys[h0:h1].transpose(1, 2))
                text_max = text_exp.amax(-1)
                text_exp.sub_(text_max.unsqueeze(-1)).exp_()
                text_sum = text_exp.sum(-1)
            frame_coef, text_coef = joint_weights(frame_lse, torch.ones_like(frame_lse), text_max, text_sum)
            mass_frames[n0:n1] += frame_coef.sum(0)
            coefs = coef_buffer[:count * frames * 2 * chunk_heads].view(count * frames, 2, chunk_heads)
            coefs[:, 0] = forward_weight
            coefs[:, 1] = frame_coef.view(chunk_heads, -1).T
            # sum over heads of coefficient x per-frame probability, for every (point, frame) at once
            torch.baddbmm(averages, coefs, per_frame.view(chunk_heads, count * frames, tokens).transpose(0, 1),
                          out=averages)
            if text_exp is not None:
                mass_text[n0:n1] += (text_sum * text_coef).sum(0)
                text_joint += (text_exp * text_coef.unsqueeze(-1)).sum(0)
        cost = averages[:, 0].view(count, frames, tokens)
        if backward is not None:
            cost = cost + backward[n0:n1] * 0.5
        chunk_peak, chunk_argmax = cost.max(-1)
        index, valid, centres = window_tokens(chunk_argmax, grid_h, grid_w, window)
        refined[n0:n1] = soft_argmax(cost.gather(-1, index), valid, centres.to(dtype))
        argmax[n0:n1] = chunk_argmax
        if candidates:
            candidate_index[n0:n1], candidate_cost[n0:n1], candidate_refined[n0:n1] = top_candidates(
                cost, grid_h, grid_w, window, k)
        peak[n0:n1] = chunk_peak
        max_frames[n0:n1] = averages[:, 1].amax(-1).view(count, frames).div_(heads)
        if text_len:
            max_text[n0:n1] = text_joint.amax(-1).div_(heads)
    mass_frames /= heads
    mass_text /= heads
    top = (candidate_index, candidate_cost, candidate_refined) if candidates else (None, None, None)
    return MatchResult(argmax=argmax, peak=peak, refined=refined, mass_frames=mass_frames, mass_text=mass_text,
                       max_frames=max_frames, max_text=max_text, candidate_index=top[0], candidate_cost=top[1],
                       candidate_refined=top[2])
