"""Fused matching in Triton (GPU target; runs on CPU under TRITON_INTERPRET=1).

Three steps, none of which stores anything of size queries x tokens:

1. ``_segment_stats_kernel``: for every (head, query point, segment) the logit max and the sum of
   exp(logit - max) over the segment's tokens (flash-attention-style online update). Segments are
   the target frames, the text, and for ``reverse`` the source frame seen from every video token.
2. Host side (tiny tensors): the joint-softmax coefficients from those statistics
   (:func:`joint_weights`), the attention masses, and the text maxima.
3. ``_peak_kernel``: per (query block, frame), walks the frame's tokens in blocks, recomputes the
   logits of every head, accumulates the head-averaged per-frame and joint probabilities of the
   block in registers, and keeps the running argmax / max. The refinement window (a handful of
   tokens per point and frame) is then recomputed from the same statistics on the host.

Logits are recomputed in step 3 (two matmul passes instead of one), the usual trade for not
writing the cost volume to memory. Dots accumulate in fp32; fp32 inputs use full-precision
("ieee", not TF32) dots for parity with the torch backend. Under the interpreter bf16/fp16 inputs
are upcast to fp32 before ``tl.dot`` because the interpreter computes bf16 dots wrongly; on a GPU
they go to the tensor cores as they are.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from difftrack.kernels.common import MatchResult, joint_weights, soft_argmax, window_tokens


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _query_rows(block, points, dim, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's block of query rows and the descriptor columns, with their in-range masks."""
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    return rows, cols, rows < points, cols < dim


@triton.jit
def _segment_stats_kernel(q_ptr, k_ptr, max_ptr, sum_ptr, points, segment_len, segments, dim, scale,
                          UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    """q (H, points, dim), k (H, segments * segment_len, dim) -> max, sum (H, points, segments)."""
    segment = tl.program_id(1)
    head = tl.program_id(2)
    rows, cols, row_ok, col_ok = _query_rows(tl.program_id(0), points, dim, BLOCK_N, BLOCK_D)
    q = tl.load(q_ptr + (head * points + rows[:, None]) * dim + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    running_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_N,), tl.float32)
    if UPCAST:
        q = q.to(tl.float32)
    key_base = k_ptr + (head * segments + segment) * segment_len * dim
    for t0 in range(0, segment_len, BLOCK_T):
        tokens = t0 + tl.arange(0, BLOCK_T)
        token_ok = tokens < segment_len
        k = tl.load(key_base + tokens[:, None] * dim + cols[None, :], mask=token_ok[:, None] & col_ok[None, :],
                    other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        logits = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        logits = tl.where(token_ok[None, :], logits, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
    out = (head * points + rows) * segments + segment
    tl.store(max_ptr + out, running_max, mask=row_ok)
    tl.store(sum_ptr + out, running_sum, mask=row_ok)


@triton.jit
def _peak_kernel(q_ptr, k_ptr, frame_max_ptr, cost_coef_ptr, joint_coef_ptr,
                 reverse_q_ptr, source_key_ptr, reverse_max_ptr, reverse_coef_ptr,
                 argmax_ptr, peak_ptr, joint_max_ptr,
                 heads, points, tokens, frames, dim, scale,
                 REVERSE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Running argmax/max over one frame of the head-summed coefficient x exp(logit - frame max).

    frame_max/cost_coef/joint_coef: (H, points, frames). With REVERSE, also adds
    coef[h, t] * exp(scale * q_t . k_source(n) - max[h, t]) with reverse_q (H, frames * tokens, dim),
    source_key (H, points, dim) the source-frame key of each query point, reverse max/coef (H, frames * tokens).
    """
    frame = tl.program_id(1)
    rows, cols, row_ok, col_ok = _query_rows(tl.program_id(0), points, dim, BLOCK_N, BLOCK_D)
    q_mask = row_ok[:, None] & col_ok[None, :]
    best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_index = tl.zeros((BLOCK_N,), tl.int64)
    joint_best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    for t0 in range(0, tokens, BLOCK_T):
        in_frame = t0 + tl.arange(0, BLOCK_T)
        token_ok = in_frame < tokens
        k_mask = token_ok[:, None] & col_ok[None, :]
        video_index = frame * tokens + in_frame
        cost = tl.zeros((BLOCK_N, BLOCK_T), tl.float32)
        joint = tl.zeros((BLOCK_N, BLOCK_T), tl.float32)
        for head in range(0, heads):
            q = tl.load(q_ptr + (head * points + rows[:, None]) * dim + cols[None, :], mask=q_mask,
                        other=0.0)
            k = tl.load(k_ptr + (head * frames * tokens + video_index[:, None]) * dim + cols[None, :], mask=k_mask,
                        other=0.0)
            stat = (head * points + rows) * frames + frame
            frame_max = tl.load(frame_max_ptr + stat, mask=row_ok, other=0.0)
            cost_coef = tl.load(cost_coef_ptr + stat, mask=row_ok, other=0.0)
            joint_coef = tl.load(joint_coef_ptr + stat, mask=row_ok, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                k = k.to(tl.float32)
            weights = tl.exp(tl.dot(q, tl.trans(k), input_precision="ieee") * scale - frame_max[:, None])
            cost += weights * cost_coef[:, None]
            joint += weights * joint_coef[:, None]
            if REVERSE:
                source_key = tl.load(source_key_ptr + (head * points + rows[:, None]) * dim + cols[None, :],
                                     mask=q_mask, other=0.0)
                target_q = tl.load(reverse_q_ptr + (head * frames * tokens + video_index[:, None]) * dim + cols[None, :],
                                   mask=k_mask, other=0.0)
                reverse_max = tl.load(reverse_max_ptr + head * frames * tokens + video_index, mask=token_ok, other=0.0)
                reverse_coef = tl.load(reverse_coef_ptr + head * frames * tokens + video_index, mask=token_ok,
                                       other=0.0)
                if UPCAST:
                    source_key = source_key.to(tl.float32)
                    target_q = target_q.to(tl.float32)
                backward = tl.exp(tl.dot(source_key, tl.trans(target_q), input_precision="ieee") * scale
                                  - reverse_max[None, :])
                cost += backward * reverse_coef[None, :]
        cost = tl.where(token_ok[None, :], cost, float("-inf"))
        joint = tl.where(token_ok[None, :], joint, float("-inf"))
        block_best = tl.max(cost, axis=1)
        block_index = tl.argmax(cost, axis=1).to(tl.int64) + t0
        better = block_best > best
        best_index = tl.where(better, block_index, best_index)
        best = tl.where(better, block_best, best)
        joint_best = tl.maximum(joint_best, tl.max(joint, axis=1))
    out = rows * frames + frame
    tl.store(argmax_ptr + out, best_index, mask=row_ok)
    tl.store(peak_ptr + out, best, mask=row_ok)
    tl.store(joint_max_ptr + out, joint_best, mask=row_ok)


def _blocks(dim: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(dim))
    # The interpreter runs each block as numpy ops: few big blocks are much faster than many small ones.
    return (64, 256, block_d) if _interpreted() else (32, 64, block_d)


def _segment_stats(q, k, segment_len, segments, scale):
    heads, points, dim = q.shape
    block_n, block_t, block_d = _blocks(dim)
    frame_max = torch.empty(heads, points, segments, dtype=torch.float32, device=q.device)
    frame_sum = torch.empty_like(frame_max)
    grid = (triton.cdiv(points, block_n), segments, heads)
    _segment_stats_kernel[grid](q, k, frame_max, frame_sum, points, segment_len, segments, dim, scale,
                                UPCAST=_interpreted(), BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_D=block_d)
    return frame_max, frame_sum


def _window_cost(query, key, all_queries, source_keys, index, frame_max, cost_coef, reverse_max, reverse_coef,
                 scale, tokens, point_chunk=32):
    """Head-summed per-frame (+ reverse) probabilities at a few in-frame tokens per (point, frame)."""
    heads, points, _ = query.shape
    frames = index.shape[1]
    out = torch.empty(index.shape, dtype=torch.float32, device=query.device)
    frame_offset = (torch.arange(frames, device=query.device) * tokens).view(1, frames, 1)
    for n0 in range(0, points, point_chunk):
        n1 = min(n0 + point_chunk, points)
        video_index = (index[n0:n1] + frame_offset).reshape(-1)  # (n * F * K,)
        keys = key[:, video_index].float().view(heads, n1 - n0, -1, key.shape[-1])
        logits = torch.einsum("hnd,hnkd->hnk", query[:, n0:n1].float(), keys).view(heads, n1 - n0, frames, -1)
        values = torch.exp(logits * scale - frame_max[:, n0:n1, :, None]) * cost_coef[:, n0:n1, :, None]
        if all_queries is not None:
            targets = all_queries[:, video_index].float().view(heads, n1 - n0, -1, key.shape[-1])
            backward = torch.einsum("hnd,hnkd->hnk", source_keys[:, n0:n1].float(), targets).view(values.shape)
            flat = video_index.view(n1 - n0, frames, -1)
            values = values + torch.exp(backward * scale - reverse_max[:, flat]) * reverse_coef[:, flat]
        out[n0:n1] = values.sum(0)
    return out


def match_triton(query, key, grid_h, grid_w, source_frame, text_key=None, scale=1.0, window=1, reverse=None):
    heads, points, dim = query.shape
    tokens = grid_h * grid_w
    frames = key.shape[1] // tokens
    # tl.dot needs one operand dtype; mixed or float64 inputs are computed in float32.
    dtypes = {t.dtype for t in (query, key, text_key, None if reverse is None else reverse[0]) if t is not None}
    native = (torch.float32, torch.bfloat16, torch.float16)
    dtype = query.dtype if len(dtypes) == 1 and query.dtype in native else torch.float32
    query, key = query.to(dtype).contiguous(), key.to(dtype).contiguous()
    if text_key is not None:
        text_key = text_key.to(dtype)
    if reverse is not None:
        reverse = (reverse[0].to(dtype), reverse[1])

    frame_max, frame_sum = _segment_stats(query, key, tokens, frames, scale)
    text_max = text_sum = None
    if text_key is not None:
        text_key = text_key.contiguous()
        text_max, text_sum = (s.squeeze(-1) for s in _segment_stats(query, text_key, text_key.shape[1], 1, scale))
    frame_coef, text_coef = joint_weights(frame_max, frame_sum, text_max, text_sum)
    forward_weight = (0.5 if reverse is not None else 1.0) / heads
    cost_coef = (forward_weight / frame_sum).contiguous()
    joint_coef = (frame_coef / heads).contiguous()

    all_queries = source_keys = reverse_max = reverse_coef = None
    if reverse is not None:
        all_queries, source_index = reverse
        all_queries = all_queries.contiguous()
        source_rows = source_frame * tokens + source_index.to(key.device)
        source_keys = key[:, source_rows].contiguous()  # (H, N, D)
        frame_keys = key[:, source_frame * tokens:(source_frame + 1) * tokens].contiguous()
        reverse_max, reverse_sum = (s.squeeze(-1) for s in _segment_stats(all_queries, frame_keys, tokens, 1, scale))
        reverse_coef = (0.5 / heads / reverse_sum).contiguous()

    argmax = torch.empty(points, frames, dtype=torch.int64, device=query.device)
    peak = torch.empty(points, frames, dtype=torch.float32, device=query.device)
    max_frames = torch.empty_like(peak)
    block_n, block_t, block_d = _blocks(dim)
    unused = frame_max  # placeholder pointer for the reverse arguments when REVERSE is off
    _peak_kernel[(triton.cdiv(points, block_n), frames)](
        query, key, frame_max, cost_coef, joint_coef,
        unused if all_queries is None else all_queries, unused if source_keys is None else source_keys,
        unused if reverse_max is None else reverse_max, unused if reverse_coef is None else reverse_coef,
        argmax, peak, max_frames, heads, points, tokens, frames, dim, scale,
        REVERSE=reverse is not None, UPCAST=_interpreted(), BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_D=block_d)

    index, valid, centres = window_tokens(argmax, grid_h, grid_w, window)
    values = _window_cost(query, key, all_queries, source_keys, index, frame_max, cost_coef, reverse_max,
                          reverse_coef, scale, tokens)
    refined = soft_argmax(values, valid, centres)

    mass_frames = (frame_sum * frame_coef).mean(0)
    mass_text = torch.zeros(points, dtype=torch.float32, device=query.device)
    max_text = torch.zeros_like(mass_text)
    if text_key is not None:
        mass_text = (text_sum * text_coef).mean(0)
        for n0 in range(0, points, 256):
            n1 = min(n0 + 256, points)
            logits = torch.bmm(query[:, n0:n1].float(), text_key.float().transpose(1, 2)) * scale
            text_joint = torch.exp(logits - text_max[:, n0:n1, None]) * text_coef[:, n0:n1, None]
            max_text[n0:n1] = text_joint.mean(0).amax(-1)
    return MatchResult(argmax=argmax, peak=peak, refined=refined, mass_frames=mass_frames, mass_text=mass_text,
                       max_frames=max_frames, max_text=max_text)
