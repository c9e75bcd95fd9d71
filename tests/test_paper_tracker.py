"""The paper's tracking procedure against a naive dense reference written from its description, and the
release's arithmetic (chunk schedule, temperature, read-out) that ``release_quirks`` restores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difftrack.backbones import tiny_configs
from difftrack.capture import DescriptorCapture
from difftrack.errors import UserError
from difftrack.paper_tracker import PaperTracker, chunk_schedule, read_out_points
from difftrack.testing import tiny_backbone
from difftrack.tracker import DiffTracker, DiffTrackerPredictor, create_tracker

METHOD_FAMILIES = [kind for kind, c in tiny_configs().items() if c.backbone_class.method_defaults]


def release_chunks(num_frames: int, chunk_len: int) -> list[list[int]]:
    """The release's loop, transcribed: interval T // (chunk_len - 1), stride 1, the first chunk unclipped."""
    interval = num_frames // (chunk_len - 1)
    chunk_start, chunk_end = 1, (chunk_len - 2) * interval + 1
    visited, chunks = set(), []
    while len(visited) < num_frames - 1:
        indices = list(range(chunk_start, chunk_end + 1, interval))
        visited.update(indices)
        chunks.append(indices)
        chunk_start += 1
        chunk_end = min(chunk_start + (chunk_len - 2) * interval, num_frames - 1)
    return chunks


@pytest.mark.parametrize("frames", [13, 24, 25, 49, 50, 70, 96])
def test_chunk_schedule_is_the_releases_for_videos_it_handles(frames):
    assert chunk_schedule(frames, 13) == release_chunks(frames, 13)


def test_chunk_schedule_covers_short_videos_the_release_cannot():
    for frames, chunk in [(2, 13), (5, 13), (12, 13), (10, 4), (3, 2)]:
        chunks = chunk_schedule(frames, chunk)
        assert sorted({p for c in chunks for p in c}) == list(range(1, frames))
        assert all(1 <= len(c) <= chunk - 1 for c in chunks)
    assert chunk_schedule(30, 13)[0] == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]
    with pytest.raises(UserError, match="at least one more frame"):
        chunk_schedule(10, 1)


def release_read_out(target_map: torch.Tensor, xy_pixels: torch.Tensor, width: int, stride: int = 16):
    """The release's read-out, transcribed: target_map (1, 2, h, w) integer targets, queries (n, 2) pixels."""
    _, _, h, w = target_map.shape
    coords = xy_pixels / stride
    margin = width / (64 * stride)
    norm = torch.stack([coords[:, 0] / (w - margin) * 2 - 1, coords[:, 1] / (h - margin) * 2 - 1], -1)
    track = F.grid_sample(target_map, norm.view(1, -1, 1, 2), mode="bilinear", align_corners=True)
    return track[0, :, :, 0].T * stride


def test_read_out_with_quirks_is_the_releases_grid_sample_and_without_reads_token_centres():
    torch.manual_seed(0)
    h, w = 30, 45
    target = torch.randint(0, 40, (1, 2, h, w)).double()
    xy = torch.rand(200, 2, dtype=torch.float64) * torch.tensor([720.0, 480.0])
    xy[:4] = torch.tensor([[0.0, 0.0], [720.0, 480.0], [719.0, 3.0], [8.0, 8.0]])
    flat = target[0].permute(1, 2, 0).reshape(-1, 2)
    for quirks in (True, False):
        read = read_out_points(xy / 16, (h, w), quirks)
        got = (read.weight[..., None] * flat[read.tokens][read.corner]).sum(1)
        if quirks:
            assert torch.allclose(got * 16, release_read_out(target, xy, 720), atol=1e-9)
        else:  # a query at a token's centre reads exactly that token's target
            assert torch.allclose(got[3], flat[0])
    centres = torch.tensor([[16 * 7 + 8.0, 16 * 3 + 8.0]]) / 16
    read = read_out_points(centres, (h, w), quirks=False)
    assert torch.allclose((read.weight[..., None] * flat[read.tokens][read.corner]).sum(1), flat[3 * w + 7][None])


def naive_paper_tracks(backbone, video, queries, layer, step, num_steps, chunk, quirks, size):
    """The procedure from its description, densely: every anchor token's full cost map per frame and chunk, averaged
    over chunks, its argmax map for the whole grid, and the release's grid_sample read-out (or, fixed, token
    centres at j + 0.5 and a border-clamped sample)."""
    num_frames, height, width = video.shape[:3]
    pixels = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False) / 127.5 - 1
    latents = backbone.encode_video(pixels[None], frame_as_latent=True)
    embeds, extras = backbone.empty_conditioning()
    t = backbone.timesteps(num_steps)[step]
    tracks = np.repeat(queries[None, :, 1:], num_frames, 0).astype(np.float64)
    for anchor in sorted(set(queries[:, 0].astype(int))):
        order = [anchor] + [f for f in range(num_frames) if f != anchor]
        maps = {}
        for positions in release_chunks(num_frames, chunk):
            frames = [order[0]] + [order[p] for p in positions]
            with DescriptorCapture(backbone, [layer]) as cap:
                backbone.predict(backbone.frames_as_tokens(latents[:, frames]), t, embeds, **extras)
            q, k = cap.results[(layer, 0)].query[0].double(), cap.results[(layer, 0)].key[0].double()
            heads, n_tokens, dim = q.shape
            tokens = n_tokens // len(frames)
            scale = 1 / math.sqrt(heads if quirks else dim)
            q0, k0 = q[:, :tokens], k[:, :tokens]
            for j, frame in enumerate(frames[1:], start=1):
                qj, kj = q[:, j * tokens:(j + 1) * tokens], k[:, j * tokens:(j + 1) * tokens]
                forward = torch.softmax(scale * q0 @ kj.transpose(1, 2), -1).mean(0)  # (anchor, target)
                backward = torch.softmax(scale * qj @ k0.transpose(1, 2), -1).mean(0)  # (target, anchor)
                maps.setdefault(frame, []).append((forward + backward.T) / 2)
        grid_h = round(math.sqrt(tokens * size[0] / size[1]))
        grid_w = tokens // grid_h
        stride_x, stride_y = size[1] / grid_w, size[0] / grid_h
        index = np.nonzero(queries[:, 0].astype(int) == anchor)[0]
        xy = torch.from_numpy(queries[index, 1:]).double() * torch.tensor([size[1] / width, size[0] / height])
        xy_tokens = xy / torch.tensor([stride_x, stride_y])
        for frame, costs in maps.items():
            target = torch.stack(costs).mean(0).argmax(-1)
            target_map = torch.stack([target % grid_w, target // grid_w]).double().view(1, 2, grid_h, grid_w)
            if quirks:
                margin = grid_w / 64
                norm = torch.stack([xy_tokens[:, 0] / (grid_w - margin) * 2 - 1,
                                    xy_tokens[:, 1] / (grid_h - margin) * 2 - 1], -1)
                padding = "zeros"
            else:
                norm = torch.stack([(xy_tokens[:, 0] - 0.5) / (grid_w - 1) * 2 - 1,
                                    (xy_tokens[:, 1] - 0.5) / (grid_h - 1) * 2 - 1], -1)
                padding = "border"
            read = F.grid_sample(target_map, norm.view(1, -1, 1, 2), mode="bilinear", padding_mode=padding,
                                 align_corners=True)[0, :, :, 0].T
            read = read if quirks else read + 0.5
            pixels_out = read * torch.tensor([stride_x, stride_y]) * torch.tensor([width / size[1], height / size[0]])
            tracks[frame, index] = pixels_out.numpy()
    return tracks


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize("kind", METHOD_FAMILIES)
def test_paper_tracker_equals_its_naive_dense_reference(kind, quirks):
    backbone = tiny_backbone(kind)
    rng = np.random.default_rng(1)
    video = rng.integers(0, 255, (9, 24, 40, 3), dtype=np.uint8)
    h, w = video.shape[1:3]
    queries = np.array([[0, 3.0, 4.0], [0, w - 1.0, h - 2.0], [0, w / 2, h / 3], [4, w / 3, h / 2]], np.float32)
    # a small tracking size instead of the trained one (HunyuanVideo's tiny configuration records none: 720x1280)
    layer, step, num_steps, chunk, size = backbone.num_layers - 1, 3, 4, 4, (32, 48)
    tracker = PaperTracker(backbone, layers=[layer], steps=[step], num_steps=num_steps, chunk=chunk, size=size,
                           release_quirks=quirks)
    tracks, visible = tracker(video, queries)
    expected = naive_paper_tracks(backbone, video, queries, layer, step, num_steps, chunk, quirks, size)
    assert visible.all()
    np.testing.assert_allclose(tracks, expected, atol=1e-3)
    assert tracker.forwards == 2 * len(chunk_schedule(9, chunk))  # two query frames, one step each


def test_release_quirks_change_the_temperature_and_the_read_out():
    backbone = tiny_backbone("cogvideox-rope")
    rng = np.random.default_rng(2)
    video = rng.integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    queries = np.array([[0, 46.0, 30.0], [0, 10.0, 10.0]], np.float32)
    options = dict(steps=[3], num_steps=4, chunk=3, size=(32, 48))
    fixed, _ = PaperTracker(backbone, **options)(video, queries)
    release, _ = PaperTracker(backbone, release_quirks=True, **options)(video, queries)
    assert not np.allclose(fixed[1:], release[1:])
    np.testing.assert_array_equal(fixed[0], release[0])  # the query frame holds the query itself


def test_occlusion_calls_never_move_positions_and_a_strict_cycle_hides_points():
    backbone = tiny_backbone("cogvideox-rope")
    rng = np.random.default_rng(3)
    video = rng.integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    queries = np.array([[0, 20.0, 12.0], [2, 30.0, 20.0]], np.float32)
    options = dict(steps=[3], num_steps=4, chunk=3, size=(32, 48))
    plain, everywhere = PaperTracker(backbone, **options)(video, queries)
    called, visible = PaperTracker(backbone, occlusion=True, cycle_threshold=0.0, peak_threshold=0.0,
                                   **options)(video, queries)
    np.testing.assert_array_equal(plain, called)
    assert everywhere.all() and not visible.all()
    assert visible[0, 0] and visible[2, 1]  # a query is visible on its own frame


def test_posterior_sampling_is_seeded_and_differs_from_the_mode():
    backbone = tiny_backbone("cogvideox-sincos")
    rng = np.random.default_rng(4)
    video = rng.integers(0, 255, (5, 32, 48, 3), dtype=np.uint8)
    queries = np.array([[0, 20.0, 12.0]], np.float32)
    options = dict(steps=[3], num_steps=4, chunk=3, size=(32, 48))
    mode, _ = PaperTracker(backbone, **options)(video, queries)
    first, _ = PaperTracker(backbone, vae_sample_seed=42, **options)(video, queries)
    again, _ = PaperTracker(backbone, vae_sample_seed=42, **options)(video, queries)
    np.testing.assert_array_equal(first, again)
    pixels = torch.zeros(1, 2, 3, 32, 48)
    sampled = backbone.encode_video(pixels, frame_as_latent=True, generator=torch.Generator().manual_seed(42))
    assert not torch.equal(sampled, backbone.encode_video(pixels, frame_as_latent=True))
    assert mode.shape == first.shape


def test_trackers_by_name_and_the_models_defaults():
    assert isinstance(create_tracker(None, "tiny-video"), DiffTracker)  # calibrated there
    backbone = tiny_backbone("cogvideox-rope")
    assert isinstance(create_tracker(None, backbone), PaperTracker)  # a real family: the paper's procedure
    assert isinstance(create_tracker("difftrack", backbone), DiffTracker)
    assert isinstance(DiffTrackerPredictor(backbone, tracker="paper").tracker, PaperTracker)
    with pytest.raises(UserError, match="unknown tracker"):
        create_tracker("cotracker", backbone)
    # settings chosen on the embedded model reach the embedded model only
    assert DiffTracker(backbone).config.noise == "clean" and DiffTracker(backbone).config.background_weight == 0
    assert DiffTracker("tiny-video").config.noise == "add" and DiffTracker("tiny-video").config.background_weight > 0


def test_device_and_dtype_reach_the_backbone_from_every_api_entry():
    for make in (lambda: DiffTracker("tiny-video", device="cpu", dtype="bfloat16"),
                 lambda: PaperTracker("tiny-video", device="cpu", dtype=torch.bfloat16),
                 lambda: create_tracker("paper", "tiny-video", device="cpu", dtype="bfloat16"),
                 lambda: DiffTrackerPredictor("tiny-video", device="cpu", dtype="bfloat16").tracker):
        backbone = make().backbone
        assert backbone.device.type == "cpu" and backbone.dtype == torch.bfloat16
    from difftrack.tracker import DiffTrackerOnline

    assert DiffTrackerOnline("tiny-video", dtype="bfloat16").tracker.backbone.dtype == torch.bfloat16
    with pytest.raises(UserError, match="dtype"):
        PaperTracker("tiny-video", dtype="float8")


def test_both_trackers_take_float_frames_in_0_1_and_refuse_other_floats():
    from difftrack.tracker_inputs import check_video_and_queries

    frames = np.random.default_rng(5).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    video, _ = check_video_and_queries(frames / 255.0, [[0, 4.0, 4.0]])
    np.testing.assert_array_equal(video, frames)
    with pytest.raises(UserError, match="uint8 in"):
        check_video_and_queries(frames.astype(np.float32), [[0, 4.0, 4.0]])  # 0..255 floats: ambiguous
    with pytest.raises(UserError, match="no query points"):
        check_video_and_queries(frames, np.zeros((0, 3)))
