"""The fused matching kernel against the naive dense reference (and a hand-computed case)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from difftrack.errors import UserError
from difftrack.geometry import TokenGeometry
from difftrack.kernels import MatchResult, match, triton_available
from difftrack.kernels.reference import dense_cost
from difftrack.kernels.torch_chunked import CPU_HEAD_CHUNK, CPU_WORKING_BUDGET, chunk_sizes, match_torch

FIELDS = [name for name in MatchResult.__dataclass_fields__ if not name.startswith("candidate_")]


def make_inputs(heads=3, points=7, dim=8, grid=(3, 5), frames=4, text=6, seed=0, spread=2.0):
    gen = torch.Generator().manual_seed(seed)
    tokens = grid[0] * grid[1]
    query = torch.randn(heads, points, dim, generator=gen) * spread
    key = torch.randn(heads, frames * tokens, dim, generator=gen) * spread
    text_key = torch.randn(heads, text, dim, generator=gen) * spread if text else None
    all_queries = torch.randn(heads, frames * tokens, dim, generator=gen) * spread
    source_index = torch.randint(0, tokens, (points,), generator=gen)
    return query, key, text_key, (all_queries, source_index)


def check_against_reference(result, query, key, grid, source_frame, atol=1e-5, **kwargs):
    """Every field close to the naive reference. Where the argmax differs, the pick must be tied with the
    reference peak within ``atol`` (head averages of near-one-hot softmaxes tie exactly)."""
    grid_h, grid_w = grid
    expected = match(query, key, grid, source_frame, backend="reference", **kwargs)
    for name in FIELDS:
        assert getattr(result, name).shape == getattr(expected, name).shape, name
    scale = kwargs.get("scale") or 1 / math.sqrt(query.shape[-1])
    cost = dense_cost(query, key, grid_h, grid_w, source_frame, scale, kwargs.get("reverse"))
    picked = cost.gather(-1, result.argmax.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(picked, expected.peak, atol=atol, rtol=1e-4)
    torch.testing.assert_close(result.peak.double(), expected.peak, atol=atol, rtol=1e-4)
    same = result.argmax == expected.argmax
    torch.testing.assert_close(result.refined.double()[same], expected.refined[same], atol=10 * atol, rtol=1e-4)
    for name in ("mass_frames", "mass_text", "max_frames", "max_text"):
        torch.testing.assert_close(getattr(result, name).double(), getattr(expected, name), atol=atol, rtol=1e-4,
                                   msg=name)


def test_frames_whose_first_token_is_vanishingly_unlikely_still_match_the_reference():
    """The torch kernel reads each frame's log-sum-exp off its first token; make that token's probability
    underflow in some frames (a key far against the query) and every field must still match."""
    query, key, text_key, _ = make_inputs(spread=1.0)
    tokens = 15
    for frame in (0, 2):
        key[:, frame * tokens] = -60.0 * query[:, 0]  # logit of point 0 on token 0: about -60^2 * 8 / sqrt(8)
    result = match(query, key, (3, 5), 1, backend="torch", text_key=text_key)
    check_against_reference(result, query, key, (3, 5), 1, text_key=text_key)


@pytest.mark.parametrize("with_text", [True, False])
@pytest.mark.parametrize("with_reverse", [True, False])
@pytest.mark.parametrize("window", [1, 2])
def test_torch_matches_reference_odd_sizes(with_text, with_reverse, window):
    query, key, text_key, reverse = make_inputs(text=6 if with_text else 0)
    kwargs = dict(text_key=text_key, window=window, reverse=reverse if with_reverse else None)
    result = match(query, key, (3, 5), 1, backend="torch", **kwargs)
    assert result.argmax.dtype == torch.int64 and result.peak.dtype == torch.float32
    check_against_reference(result, query, key, (3, 5), 1, **kwargs)


@pytest.mark.parametrize("with_reverse", [True, False])
def test_candidates_match_the_reference(with_reverse):
    query, key, text_key, reverse = make_inputs(text=6)
    kwargs = dict(text_key=text_key, window=1, reverse=reverse if with_reverse else None, candidates=4)
    got = match(query, key, (3, 5), 1, backend="torch", **kwargs)
    want = match(query, key, (3, 5), 1, backend="reference", **kwargs)
    assert got.candidate_index.shape == (query.shape[1], key.shape[1] // 15, 4)
    torch.testing.assert_close(got.candidate_cost.double(), want.candidate_cost, atol=1e-5, rtol=1e-4)
    assert torch.all(got.candidate_cost[..., :-1] >= got.candidate_cost[..., 1:])  # best first
    assert torch.equal(got.candidate_index[..., 0], got.argmax)
    same = got.candidate_index == want.candidate_index
    torch.testing.assert_close(got.candidate_refined.double()[same], want.candidate_refined[same], atol=1e-4,
                               rtol=1e-4)
    assert match(query, key, (3, 5), 1, backend="torch", text_key=text_key).candidate_index is None


def test_single_frame_and_geometry_grid():
    query, key, text_key, (all_queries, source_index) = make_inputs(frames=1, points=5, heads=2)
    geometry = TokenGeometry(frames=1, grid_h=3, grid_w=5, text_tokens=6, text_position="first")
    for reverse in (None, (all_queries, source_index)):
        result = match(query, key, geometry, 0, text_key=text_key, reverse=reverse)
        check_against_reference(result, query, key, (3, 5), 0, text_key=text_key, reverse=reverse)


def test_joint_masses_sum_to_one_and_bound_the_maxima():
    query, key, text_key, _ = make_inputs()
    result = match(query, key, (3, 5), 2, text_key=text_key)
    total = result.mass_text + result.mass_frames.sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total))
    assert (result.max_frames <= result.mass_frames + 1e-7).all()
    assert (result.max_text <= result.mass_text + 1e-7).all()
    no_text = match(query, key, (3, 5), 2)
    assert (no_text.mass_text == 0).all() and (no_text.max_text == 0).all()
    torch.testing.assert_close(no_text.mass_frames.sum(-1), torch.ones(query.shape[1]))


def corner_case_inputs():
    """One head, one-hot keys: logits = log of chosen probabilities, peaked at the top-left corner."""
    grid_h, grid_w = 3, 5
    tokens = grid_h * grid_w
    probabilities = torch.full((tokens,), 1e-12)
    probabilities[0], probabilities[1], probabilities[grid_w], probabilities[grid_w + 1] = 0.5, 0.2, 0.2, 0.1
    key = torch.eye(tokens).unsqueeze(0)  # (1, P, P)
    query = torch.log(probabilities).view(1, 1, tokens)  # scale 1 below
    return query, key, (grid_h, grid_w)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_refinement_is_clipped_at_the_border(backend):
    query, key, grid = corner_case_inputs()
    result = match(query, key, grid, 0, scale=1.0, window=1, backend=backend)
    assert result.argmax.item() == 0
    assert result.peak.item() == pytest.approx(0.5, abs=1e-6)
    # only the four in-grid window tokens count: x = y = 0.5 * 0.5 + 0.2 * 1.5 + 0.2 * 0.5 + 0.1 * 1.5
    assert result.refined[0, 0].tolist() == pytest.approx([0.8, 0.8], abs=1e-6)


def test_border_points_match_reference():
    query, key, text_key, reverse = make_inputs(grid=(2, 7), points=9, seed=3, spread=3.0)
    for window in (1, 3):
        result = match(query, key, (2, 7), 0, text_key=text_key, window=window)
        on_border = (result.argmax % 7 == 0) | (result.argmax % 7 == 6)
        assert on_border.any()  # with 2 rows every peak touches the top or bottom border anyway
        check_against_reference(result, query, key, (2, 7), 0, text_key=text_key, window=window)


def test_bf16_inputs_accumulate_in_fp32():
    query, key, text_key, (all_queries, source_index) = make_inputs(seed=1)
    bf16 = [t.to(torch.bfloat16) for t in (query, key, text_key, all_queries)]
    reverse = (bf16[3], source_index)
    result = match(bf16[0], bf16[1], (3, 5), 3, text_key=bf16[2], reverse=reverse, backend="torch")
    assert result.peak.dtype == torch.float32
    check_against_reference(result, bf16[0], bf16[1], (3, 5), 3, text_key=bf16[2], reverse=reverse)


def test_chunking_over_points_and_heads_changes_nothing():
    query, key, text_key, reverse = make_inputs(heads=5, points=11, frames=3)
    args = (query, key, 3, 5, 1, text_key, 0.3, 1, reverse)
    whole = match_torch(*args)
    tokens_bytes = key.shape[1] * 4
    chunked = match_torch(*args, memory_budget=5 * tokens_bytes, head_chunk=2)  # 1 point, 2 heads at a time
    for name in FIELDS:
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), msg=name)
    bf16 = (query.bfloat16(), key.bfloat16(), *args[2:])
    # bf16 keys are upcast a head chunk at a time; a budget this small forces one head per chunk
    small = match_torch(*bf16, memory_budget=key.shape[1] * key.shape[2] * 4 * 3)
    for name in FIELDS:
        torch.testing.assert_close(getattr(small, name), getattr(match_torch(*bf16), name), msg=name)


def test_cpu_steps_take_every_head_while_all_points_fit_and_two_heads_when_they_do_not():
    video, dim = 3 * 15, 16
    step_bytes = (5 + 2) * video * 4  # one point with its working rows, all 5 heads
    assert chunk_sizes(5, 11, video, dim, torch.float32, torch.float32, 11 * step_bytes, cpu=True) == (5, 11)
    heads, points = chunk_sizes(5, 11, video, dim, torch.float32, torch.float32, 4 * step_bytes, cpu=True)
    assert heads == CPU_HEAD_CHUNK and points == 4 * step_bytes // ((CPU_HEAD_CHUNK + 2) * video * 4)
    assert chunk_sizes(5, 11, video, dim, torch.float32, torch.float32, 4 * step_bytes) == (5, 4)  # not on the CPU
    assert chunk_sizes(5, 11, video, dim, torch.float32, torch.float32, 4 * step_bytes, head_chunk=3, cpu=True)[0] == 3
    assert chunk_sizes(5, 10**6, video, dim, torch.float32, torch.float32, cpu=True)[1] * (CPU_HEAD_CHUNK + 2) \
        * video * 4 <= CPU_WORKING_BUDGET
    query, key, text_key, reverse = make_inputs(heads=5, points=11, frames=3)
    args = (query, key, 3, 5, 1, text_key, 0.3, 1, reverse)
    split = match_torch(*args, memory_budget=4 * step_bytes)
    for name in FIELDS:
        torch.testing.assert_close(getattr(split, name), getattr(match_torch(*args), name), msg=name)


def test_a_point_gets_the_same_bits_alone_or_among_others():
    """The tracker promises that a query's result does not depend on the other queries; BLAS multiplies a
    lone row by another kernel than a block of rows (MKL on AVX-512 sums it in another order). Checked as
    the tracker calls the kernel: both directions, candidates, no text."""
    query, key, _, (all_queries, source_index) = make_inputs(heads=4, points=5, dim=32, grid=(6, 7), frames=3,
                                                              spread=3.0)
    together = match_torch(query, key, 6, 7, 1, None, 0.2, 0, (all_queries, source_index), candidates=8)
    for point in range(5):
        alone = match_torch(query[:, point:point + 1], key, 6, 7, 1, None, 0.2, 0,
                            (all_queries, source_index[point:point + 1]), candidates=8)
        for name in ("argmax", "peak", "refined", "mass_frames", "max_frames", "candidate_index", "candidate_cost",
                     "candidate_refined"):
            assert torch.equal(getattr(alone, name), getattr(together, name)[point:point + 1]), (point, name)


def test_large_logits_stay_finite():
    query, key, text_key, reverse = make_inputs(spread=30.0, seed=2)
    result = match(query, key, (3, 5), 0, text_key=text_key, reverse=reverse)
    for name in FIELDS:
        assert torch.isfinite(getattr(result, name).double()).all(), name
    check_against_reference(result, query, key, (3, 5), 0, atol=1e-4, text_key=text_key, reverse=reverse)


def test_default_scale_is_inverse_sqrt_head_dim():
    query, key, _, _ = make_inputs(dim=16)
    torch.testing.assert_close(match(query, key, (3, 5), 0).peak,
                               match(query, key, (3, 5), 0, scale=1 / math.sqrt(16)).peak)


@pytest.mark.parametrize("call, message", [
    (lambda q, k: match(q, k, (4, 4), 0), "whole number"),
    (lambda q, k: match(q, k, (3, 5), 9), "source_frame"),
    (lambda q, k: match(q, k[:2], (3, 5), 0), "heads"),
    (lambda q, k: match(q, k, (3, 5), 0, backend="cuda"), "backend"),
    (lambda q, k: match(q, k, (3, 5), 0, reverse=(k, torch.zeros(2, dtype=torch.long))), "source_index"),
    (lambda q, k: match(q, k, "3x5", 0), "grid"),
])
def test_user_errors(call, message):
    query, key, _, _ = make_inputs()
    with pytest.raises(UserError, match=message):
        call(query, key)


TRITON_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_kernels import make_inputs, check_against_reference
    from difftrack.kernels import match

    report = {{}}
    for name, kwargs in {cases!r}:
        query, key, text_key, reverse = make_inputs(**kwargs)
        options = dict(text_key=text_key if kwargs.get("text", 6) else None,
                       reverse=reverse if name.endswith("reverse") else None)
        if name.startswith("bf16"):
            query, key = query.bfloat16(), key.bfloat16()
            options["reverse"] = (reverse[0].bfloat16(), reverse[1])
        grid, source_frame = kwargs.get("grid", (3, 5)), 1 if kwargs.get("frames", 4) > 1 else 0
        result = match(query, key, grid, source_frame, backend="triton", **options)
        check_against_reference(result, query, key, grid, source_frame, **options)
        report[name] = "ok"
    print(json.dumps(report))
""")


@pytest.mark.skipif(not triton_available(), reason="triton is not installed (pip install 'difftrack[triton]')")
def test_triton_interpreter_matches_reference():
    cases = [
        ("odd", dict()),
        ("odd_reverse", dict()),
        ("no_text_single_frame", dict(text=0, frames=1, points=5)),
        ("wide_grid_reverse", dict(grid=(2, 7), heads=2, points=9, dim=20, seed=3)),
        ("bf16_reverse", dict(seed=1)),
    ]
    script = TRITON_SCRIPT.format(tests=os.path.dirname(__file__), cases=cases)
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {name: "ok" for name, _ in cases}
