"""The temporal decoder: motion prior against distractors, the occluded state, and its bookkeeping."""

import math

import torch

from difftrack.decoding import MotionModel, motion_log_prior, viterbi_decode


def _track(frames=8, k=3):
    """A point moving +1 token in x per frame; candidate 0 is always on it, the others far away."""
    truth = torch.stack([torch.arange(1, frames + 1, dtype=torch.float32) + 2.0, torch.full((frames,), 5.0)], -1)
    positions = torch.stack([truth, truth + torch.tensor([9.0, 0.0]), truth + torch.tensor([0.0, 8.0])], 1)[None]
    costs = torch.tensor([0.3, 0.1, 0.1]).repeat(frames, 1)[None]
    return torch.tensor([[2.0, 5.0]]), positions[:, :, :k], costs[:, :, :k].clone(), truth


def test_a_stronger_distractor_far_from_the_path_loses_to_the_weaker_peak_on_it():
    start, positions, costs, truth = _track()
    costs[0, 4] = torch.tensor([0.2, 0.6, 0.1])  # frame 4: the distractor 9 tokens away is three times stronger
    xy, hidden = viterbi_decode(start, positions, costs)
    assert torch.allclose(xy[0], truth) and not hidden.any()
    per_frame_argmax = positions[0, torch.arange(8), costs[0].argmax(-1)]
    assert not torch.allclose(per_frame_argmax, truth)  # what the per-frame mode would have done


def test_a_covered_span_is_occluded_and_the_track_resumes_after_it():
    start, positions, costs, truth = _track(frames=10)
    costs[0, 4:7] = 1e-4  # a sprite covers the point on frames 4-6: no candidate has support
    xy, hidden = viterbi_decode(start, positions, costs, MotionModel(sigma=2.0))
    assert hidden[0].tolist() == [False] * 4 + [True] * 3 + [False] * 3
    assert torch.allclose(xy[0, 4:7], truth[3].expand(3, 2))  # hidden: the position it was last seen at
    assert torch.allclose(xy[0, 7:], truth[7:])


def test_points_are_decoded_independently():
    start, positions, costs, _ = _track()
    both_start = torch.cat([start, start + 1])
    both_xy, _ = viterbi_decode(both_start, torch.cat([positions, positions + 1]), torch.cat([costs, costs]))
    alone_xy, _ = viterbi_decode(start + 1, positions + 1, costs)
    assert torch.equal(both_xy[1], alone_xy[0])


def test_a_background_prior_makes_a_wall_point_follow_the_dominant_motion_exactly():
    """The wall pans 0.4 token a frame. Candidate 0 sits exactly on the pan, a little weaker than candidate 1,
    a token-centre position one token off the path; only the background component keeps the point on the pan."""
    frames = 6
    pan = torch.tensor([0.4, 0.0])
    truth = torch.tensor([3.3, 4.5]) + pan * torch.arange(1, frames + 1, dtype=torch.float32)[:, None]
    jitter = truth.floor() + 0.5 + torch.tensor([1.0, 0.0])
    positions = torch.stack([truth, jitter], 1)[None]
    costs = torch.tensor([0.2, 0.3]).repeat(frames, 1)[None]
    start = torch.tensor([[3.3, 4.5]])
    free_xy, _ = viterbi_decode(start, positions, costs, MotionModel(sigma=2.0))
    assert not torch.allclose(free_xy[0], truth)
    steps = pan.repeat(frames, 1)
    xy, hidden = viterbi_decode(start, positions, costs, MotionModel(sigma=2.0, background_weight=0.5), steps)
    assert torch.allclose(xy[0], truth) and not hidden.any()


def test_the_motion_prior_without_background_is_the_plain_gaussian():
    step = torch.randn(5, 3, 2)
    model = MotionModel(sigma=1.5, background_weight=0.0)
    expected = -step.square().sum(-1) / (2 * 1.5 ** 2)
    assert torch.allclose(motion_log_prior(step, model), expected)
    assert torch.equal(motion_log_prior(step, model, torch.zeros(2)), motion_log_prior(step, model))
    background = MotionModel(sigma=1.5, background_weight=0.3, background_sigma=0.25)
    near, far = torch.tensor([[0.05, 0.0]]), torch.tensor([[3.0, 0.0]])
    assert motion_log_prior(near, background, torch.zeros(2)) > motion_log_prior(near, model) + 2.0
    assert torch.allclose(motion_log_prior(far, background, torch.zeros(2)),
                          motion_log_prior(far, model) + math.log(0.7))  # far from the pan: the free part alone


def _pan(frames=8, pan=(0.5, 0.0), start=(3.25, 4.5)):
    """A wall point panning ``pan`` tokens a frame: candidate 0 on it, candidate 1 one token beside it."""
    step = torch.tensor(pan)
    truth = torch.tensor(start) + step * torch.arange(1, frames + 1, dtype=torch.float32)[:, None]
    positions = torch.stack([truth, truth + torch.tensor([0.0, 1.0])], 1)[None]
    costs = torch.tensor([0.6, 0.3]).repeat(frames, 1)[None]
    return torch.tensor([start]), positions, costs, truth, step.repeat(frames, 1)


def test_an_occluded_point_moves_with_the_scene_and_reappears_on_its_path():
    start, positions, costs, truth, steps = _pan()
    costs[0, 3:5, 0] = 1e-6  # covered on frames 3-4: its own token shows the occluder, its neighbour still matches
    presence = torch.ones(1, 8)
    model = MotionModel(sigma=2.0, background_weight=0.5, presence_weight=2.0)
    xy, hidden = viterbi_decode(start, positions, costs, model, steps, presence)
    assert not hidden.any()  # without presence the neighbour is a fine explanation
    presence[0, 3:5] = 0.05  # the frames get a twentieth of the attention the best frame gets
    xy, hidden = viterbi_decode(start, positions, costs, model, steps, presence)
    assert hidden[0].tolist() == [False] * 3 + [True] * 2 + [False] * 3
    assert torch.allclose(xy[0], truth)  # hidden positions keep moving with the pan


def test_a_point_the_scene_carries_out_of_view_stays_hidden_there():
    start, positions, costs, truth, steps = _pan(frames=8, pan=(-1.0, 0.0), start=(3.25, 4.5))
    inside = truth[:, 0] >= 0
    costs[0, ~inside] = 1e-6  # nothing in the frame matches once the point has left it
    positions[0, ~inside] = positions[0, ~inside].clamp_min(0.5)  # candidates are tokens of the frame
    xy, hidden = viterbi_decode(start, positions, costs, MotionModel(sigma=2.0, background_weight=0.5), steps,
                                bounds=(8, 8))
    assert hidden[0].tolist() == (~inside).tolist()
    assert torch.allclose(xy[0], truth)


def test_a_segment_can_start_occluded_and_pays_to_reappear():
    start, positions, costs, truth, steps = _pan(frames=4)
    model = MotionModel(sigma=2.0, background_weight=0.5, leave_cost=4.0)
    xy, hidden = viterbi_decode(start, positions, costs, model, steps, start_hidden=torch.tensor([True]))
    assert not hidden.any() and torch.allclose(xy[0], truth)
    costs[0, 0, 0] = 1e-3  # the first frame's match is weak: staying hidden one more frame is cheaper
    xy, hidden = viterbi_decode(start, positions, costs, model, steps, start_hidden=torch.tensor([True]))
    assert hidden[0].tolist() == [True, False, False, False]
    xy, hidden = viterbi_decode(start, positions, costs, model, steps)
    assert not hidden[0, 0]  # a visible start pays to enter instead
