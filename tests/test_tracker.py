import json
import math

import numpy as np
import pytest
import torch

from difftrack.backbones.cogvideox import CogVideoXBackbone
from difftrack.backbones.embedded import EMBEDDED_TRACKER_SETTINGS
from difftrack.cli import main
from difftrack.errors import UserError
from difftrack.data.synthetic import generate_clip
from difftrack.io import write_video
from difftrack.testing import save_pipeline, tiny_components
from difftrack.capture import sample_descriptors
from difftrack.tracker import DiffTracker, DiffTrackerPredictor, frame_windows


@pytest.fixture(scope="module")
def backbone():
    c = tiny_components("cogvideox-rope")
    return CogVideoXBackbone("tiny", c["transformer"], c["scheduler"], c["vae"], c["text_encoder"], c["tokenizer"])


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from diffusers import CogVideoXPipeline

    path = tmp_path_factory.mktemp("tiny_cogvideox")
    save_pipeline(tiny_components("cogvideox-rope"), CogVideoXPipeline, path)
    return path


def test_frame_windows_cover_the_video_and_chain_on_shared_frames():
    for frames, window in [(10, 4), (24, 8), (5, 8), (13, 13), (14, 13), (2, 2)]:
        windows = frame_windows(frames, window)
        assert sorted(set(f for w in windows for f in w)) == list(range(frames))
        assert all(len(w) == min(window, frames) and w == list(range(w[0], w[0] + len(w))) for w in windows)
        assert all(b[0] <= a[-1] for a, b in zip(windows, windows[1:]))  # consecutive windows share a frame
        assert len(windows) == max(1, math.ceil((frames - 1) / (window - 1)))
    assert frame_windows(10, 4) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    with pytest.raises(UserError, match="at least 2 frames"):
        frame_windows(10, 1)


def test_sample_descriptors_at_token_centres_is_exact_and_interpolates_between():
    torch.manual_seed(0)
    desc = torch.randn(3, 4 * 5, 6)
    centres = torch.tensor([[0.5, 0.5], [4.5, 3.5], [2.5, 1.5]])
    got = sample_descriptors(desc, centres, (4, 5))
    idx = torch.tensor([0, 3 * 5 + 4, 1 * 5 + 2])
    assert torch.allclose(got, desc[:, idx], atol=1e-6)
    mid = sample_descriptors(desc, torch.tensor([[1.0, 0.5]]), (4, 5))
    assert torch.allclose(mid[:, 0], (desc[:, 0] + desc[:, 1]) / 2, atol=1e-6)


def test_tracker_shapes_query_frames_and_independence(backbone):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (10, 48, 64, 3), dtype=np.uint8)
    queries = np.array([[0, 10, 10], [3, 40.5, 30], [9, 63.9, 47.9]], np.float32)
    tracker = DiffTracker(backbone, window=4, num_steps=10, steps=[5])
    tracks, visible = tracker(video, queries)
    assert tracks.shape == (10, 3, 2) and visible.shape == (10, 3) and visible.dtype == bool
    for n, (t, x, y) in enumerate(queries):
        assert np.allclose(tracks[int(t), n], (x, y)) and visible[int(t), n]
    outside = (tracks[..., 0] < 0) | (tracks[..., 0] > 64) | (tracks[..., 1] < 0) | (tracks[..., 1] > 48)
    assert not visible[outside].any()  # a point the scene carried out of view is never called visible
    # three windows of a 10-frame video with a 4-frame window, forward; the backward pass needs all three too
    assert tracker.stats.forwards == 6
    alone, alone_vis = tracker(video, queries[1:2])
    assert np.array_equal(alone[:, 0], tracks[:, 1]) and np.array_equal(alone_vis[:, 0], visible[:, 1])
    again, _ = DiffTracker(backbone, window=4, num_steps=10, steps=[5])(video, queries)
    assert np.array_equal(again, tracks)


def test_predictor_has_cotracker_shapes(backbone):
    predictor = DiffTrackerPredictor(backbone, tracker="difftrack", window=5, num_steps=10, steps=[9])
    video = torch.randint(0, 255, (2, 6, 3, 32, 32)).float()
    queries = torch.tensor([[[0.0, 5.0, 5.0]], [[2.0, 20.0, 9.0]]])
    tracks, vis = predictor(video, queries)
    assert tracks.shape == (2, 6, 1, 2) and vis.shape == (2, 6, 1)


def test_tracker_rejects_bad_queries(backbone):
    video = np.zeros((6, 32, 32, 3), np.uint8)
    tracker = DiffTracker(backbone, num_steps=10, steps=[5])
    with pytest.raises(UserError, match="query frame 6"):
        tracker(video, np.array([[6, 1, 1]], np.float32))
    with pytest.raises(UserError, match="outside"):
        tracker(video, np.array([[0, 40, 1]], np.float32))
    with pytest.raises(UserError, match="no query points"):
        tracker(video, np.zeros((0, 3), np.float32))
    with pytest.raises(UserError, match="step 10 is out of range"):
        DiffTracker(backbone, num_steps=10, steps=[10])
    with pytest.raises(UserError, match="layer 5 is out of range"):
        DiffTracker(backbone, layers=[5])


def _video(tmp_path, frames=6):
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(1)
    write_video(path, rng.integers(0, 255, (frames, 32, 48, 3), dtype=np.uint8), fps=8)
    return path


def test_track_cli_writes_documented_outputs(tmp_path, pipeline_dir):
    video = _video(tmp_path)
    pts = tmp_path / "pts.json"
    pts.write_text(json.dumps([{"t": 0, "x": 4.0, "y": 5.0}, [2, 30.0, 20.0]]))
    out = tmp_path / "res"
    code = main(["track", str(video), "--points", str(pts), "--model", str(pipeline_dir), "--tracker", "difftrack",
                 "--num-steps", "10", "--steps", "9", "--noise", "add", "--out", str(out)])
    assert code == 0
    data = np.load(out.with_suffix(".npz"))
    assert data["tracks"].shape == (6, 2, 2) and data["tracks"].dtype == np.float32
    assert data["visibility"].shape == (6, 2) and data["visibility"].dtype == bool
    assert np.allclose(data["queries"], [[0, 4, 5], [2, 30, 20]])
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert meta["layers"] == [1] and meta["noise"] == "add" and "difftrack_version" in meta
    assert out.with_suffix(".mp4").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "pts.json", "res.json", "res.mp4", "res.npz"]


def test_track_cli_scores_against_ground_truth_next_to_the_baselines(tmp_path, pipeline_dir, capsys):
    clip = generate_clip(5, num_frames=6, height=32, width=48)
    video = tmp_path / "clip.mp4"
    write_video(video, clip.video)
    queries = np.float32([[0, 8.5, 8.5], [0, 30.5, 20.5], [2, 20.5, 12.5]])
    truth, visible = clip.track(queries)  # (N, T, 2), (N, T)
    gt = tmp_path / "clip_gt.npz"
    np.savez(gt, tracks=truth.transpose(1, 0, 2), visibility=visible.T, queries=queries)
    out = tmp_path / "res"
    assert main(["track", str(video), "--gt", str(gt), "--model", str(pipeline_dir), "--tracker", "difftrack",
                 "--num-steps", "10", "--steps", "9", "--no-video", "--out", str(out)]) == 0
    saved = np.load(out.with_suffix(".npz"))
    assert np.allclose(saved["queries"], queries)
    scores = json.loads(out.with_suffix(".json").read_text())["scores"]
    assert set(scores) == {"difftrack", "zero_motion", "lucas_kanade"}
    # zero motion, scored by hand: frames after each query frame, at 256x256, visible truth within d px
    scale = np.float32([256 / 48, 256 / 32])
    scored = np.arange(6)[None] > queries[:, :1]
    distance = np.linalg.norm((truth - queries[:, None, 1:]) * scale, axis=-1)
    expected = np.mean([(distance < d)[scored & visible].mean() for d in (1, 2, 4, 8, 16)])
    assert scores["zero_motion"]["average_pts_within_thresh"] == pytest.approx(expected)
    tracks = saved["tracks"].transpose(1, 0, 2)
    mine = np.linalg.norm((tracks - truth) * scale, axis=-1)
    assert scores["difftrack"]["pts_within_16"] == pytest.approx((mine < 16)[scored & visible].mean())
    error = np.linalg.norm(tracks - truth, axis=-1)  # the video's own pixels, every truth-visible point per frame
    assert scores["difftrack"]["median_error_px"] == pytest.approx([np.median(error[visible[:, t], t]) for t in range(6)])
    printed = capsys.readouterr().out
    assert "zero_motion" in printed and "lucas_kanade" in printed


@pytest.mark.parametrize("points, message", [
    ("not json", "not valid JSON"),
    ("[]", "non-empty"),
    ('[{"t": 0, "x": 1}]', "point 0"),
    ('[[0, 100, 1]]', "outside"),
    ('[[7, 1, 1]]', "query frame 7"),
])
def test_track_cli_bad_points_fail_cleanly(tmp_path, pipeline_dir, capsys, points, message):
    video = _video(tmp_path)
    pts = tmp_path / "pts.json"
    pts.write_text(points)
    code = main(["track", str(video), "--points", str(pts), "--model", str(pipeline_dir), "--out",
                 str(tmp_path / "res")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not list(tmp_path.glob("res*")) and not list(tmp_path.glob(".res*"))


def test_track_cli_missing_video_and_unknown_model(tmp_path, capsys):
    assert main(["track", str(tmp_path / "nope.mp4"), "--grid", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    video = _video(tmp_path)
    assert main(["track", str(video), "--grid", "2", "--model", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_track_cli_layers_auto_reads_recommendation(tmp_path, pipeline_dir, capsys):
    import shutil

    video = _video(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(pipeline_dir, model)
    common = ["track", str(video), "--grid", "2", "--num-steps", "10", "--no-video", "--layers", "auto"]
    assert main(common + ["--model", str(model), "--out", str(tmp_path / "a")]) == 2
    assert "ships no recommendation.json" in capsys.readouterr().err
    rec_dir = tmp_path / "analysis"
    rec_dir.mkdir()
    (rec_dir / "recommendation.json").write_text(json.dumps({"model": "tiny", "layers": [0], "steps": [9],
                                                              "num_steps": 10}))
    assert main(common + ["--model", str(model), "--recommendation", str(rec_dir), "--out", str(tmp_path / "b")]) == 0
    meta = json.loads((tmp_path / "b.json").read_text())["meta"]
    assert meta["layers"] == [0] and meta["steps"] == [9]
    (model / "recommendation.json").write_text(json.dumps({"model": "tiny", "layers": [1], "steps": [20],
                                                           "num_steps": 30}))
    assert main(common[:4] + ["--no-video", "--layers", "auto", "--model", str(model), "--out",
                              str(tmp_path / "c")]) == 0
    meta = json.loads((tmp_path / "c.json").read_text())["meta"]
    assert meta["layers"] == [1] and meta["steps"] == [20] and meta["num_steps"] == 30
    (rec_dir / "recommendation.json").write_text(json.dumps({"model": "tiny", "layers": [7], "steps": [9]}))
    assert main(common + ["--model", str(model), "--recommendation", str(rec_dir), "--out", str(tmp_path / "d")]) == 2
    assert "layer 7 is out of range" in capsys.readouterr().err


def test_forwards_grow_with_video_length_not_with_query_frames(backbone):
    rng = np.random.default_rng(2)
    counts = {}
    for frames in (6, 13):
        video = rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8)
        for query_frames in ([0], [0, 2, 4, frames - 1], list(range(frames))):
            queries = np.array([[t, 10.0, 12.0] for t in query_frames], np.float32)
            tracker = DiffTracker(backbone, window=4, num_steps=10, steps=[5])
            tracker(video, queries)
            counts[frames, len(query_frames)] = tracker.stats.forwards
    for frames in (6, 13):
        windows = len(frame_windows(frames, 4))
        assert counts[frames, 1] == windows  # frame-0 queries: one pass
        assert counts[frames, 4] == counts[frames, frames] <= 2 * windows  # both passes, whatever the queries
    assert counts[13, 1] > counts[6, 1]


@pytest.mark.parametrize("noise, draws", [("clean", 1), ("add", 2)])
def test_the_progress_bar_counts_the_forwards_the_summary_reports(backbone, monkeypatch, noise, draws):
    import difftrack.tracker as tracker_module

    bars = []

    class RecordingBar(tracker_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            self.done = 0
            bars.append(self)

        def update(self, n=1):
            self.done += n

    monkeypatch.setattr(tracker_module, "tqdm", RecordingBar)
    video = np.random.default_rng(3).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    queries = np.array([[5, 10.0, 12.0], [9, 20.0, 8.0]], np.float32)  # windows before frame 5 idle going forward
    tracker = DiffTracker(backbone, window=4, num_steps=10, steps=[3, 5], noise=noise, noise_draws=draws)
    tracker(video, queries, progress=True)
    (bar,) = bars
    assert tracker.stats.forwards < 2 * len(frame_windows(12, 4)) * 2 * draws  # some windows were skipped
    assert bar.done == bar.total == tracker.stats.forwards


def test_online_tracker_equals_offline_for_frame_zero_queries(backbone):
    from difftrack.tracker import DiffTrackerOnline

    rng = np.random.default_rng(3)
    video = rng.integers(0, 255, (11, 32, 32, 3), dtype=np.uint8)
    queries = np.array([[0, 10.0, 12.0], [0, 25.5, 3.0], [4, 8.0, 20.0]], np.float32)
    offline, offline_vis = DiffTracker(backbone, window=4, num_steps=10, steps=[5])(video, queries)
    online = DiffTrackerOnline(backbone, window=4, num_steps=10, steps=[5])
    online.reset(queries, 32, 32)
    partial = [online.step(video[t:t + 3])[0].shape[0] for t in range(0, 11, 3)]
    assert partial == [0, 4, 7, 10]  # frames are released as their window finishes
    tracks, visible = online.finish()
    np.testing.assert_allclose(tracks[:, :2], offline[:, :2], atol=1e-4)
    assert np.array_equal(visible[:, :2], offline_vis[:, :2])
    np.testing.assert_allclose(tracks[4:, 2], offline[4:, 2], atol=1e-4)  # forward from its frame, as offline
    assert not visible[:4, 2].any() and np.allclose(tracks[:4, 2], queries[2, 1:])


def test_caller_config_is_never_mutated_and_explicit_thresholds_win_over_calibration():
    from dataclasses import asdict

    from difftrack.tracker_config import TrackerConfig

    config = TrackerConfig(cycle_threshold=3.0)
    before = asdict(config)
    tracker = DiffTracker("tiny-video", config)  # tiny-video ships a calibration that turns the cycle check off
    assert asdict(config) == before
    assert tracker.config.cycle_threshold == 3.0 and tracker.config.layers is not None
    assert DiffTracker("tiny-video").config.cycle_threshold == float("inf")


def _wall_oracle(clip, grid: int):
    """Stand-in for a model's q/k whose attention matches exactly: logit = -200 |w_query - w_key|^2, with w a token
    centre's wall coordinate (sprite tokens far off the wall), so each wall point has one true match per frame."""
    centres = np.stack(np.meshgrid(np.arange(grid) + 0.5, np.arange(grid) + 0.5), -1).reshape(-1, 2) / grid

    def descriptors(window_latents, frames):
        queries, keys = [], []
        for f in frames:
            owner = clip._layer_at(f, centres)
            wall = centres + clip.camera[f] + 10.0 * (owner[:, None] + 1) * (owner[:, None] >= 0)
            squared, ones = (wall ** 2).sum(1, keepdims=True), np.ones((len(wall), 1))
            queries.append(np.concatenate([2 * wall, -squared, -ones], 1) * 200 * 2)  # match scales by 1/sqrt(4)
            keys.append(np.concatenate([wall, ones, squared], 1))
        return (torch.tensor(np.concatenate(queries), dtype=torch.float32)[None],
                torch.tensor(np.concatenate(keys), dtype=torch.float32)[None])
    return descriptors


@pytest.mark.parametrize("window", [12, 4])
def test_an_uncovered_wall_point_follows_the_pan_through_chained_windows_with_an_exact_matcher(backbone, window):
    clip = generate_clip(0, num_frames=12, height=128, width=128)
    query = np.float32([[0, 88.0, 104.0]])
    truth, truth_visible = clip.track(query)
    assert truth_visible.all() and np.ptp(truth[0], axis=0).max() > 16  # in view throughout, moving over a token
    # the decoder's mechanisms (dominant motion, presence), with the settings they were calibrated with
    tracker = DiffTracker(backbone, window=window, num_steps=10, steps=[5], **EMBEDDED_TRACKER_SETTINGS)
    tracker._descriptors = _wall_oracle(clip, grid=8)
    tracks, visible = tracker(clip.video, query)
    assert visible.all()
    assert (np.linalg.norm(tracks[:, 0] - truth[0], axis=-1) < 8).all()


@pytest.mark.parametrize("window", [12, 4])
def test_a_sprite_covering_a_wall_point_for_a_known_span_is_called_occluded(backbone, window):
    clip = generate_clip(0, num_frames=12, height=128, width=128)
    query = np.float32([[0, 24.0, 8.0]])  # a wall point the sprite covers on frames 2-3 only
    truth, truth_visible = clip.track(query)
    assert np.nonzero(~truth_visible[0])[0].tolist() == [2, 3]
    # the decoder's mechanisms (dominant motion, presence), with the settings they were calibrated with
    tracker = DiffTracker(backbone, window=window, num_steps=10, steps=[5], **EMBEDDED_TRACKER_SETTINGS)
    tracker._descriptors = _wall_oracle(clip, grid=8)
    tracks, visible = tracker(clip.video, query)
    assert visible[:, 0].tolist() == truth_visible[0].tolist()
    error = np.linalg.norm(tracks[:, 0] - truth[0], axis=-1)
    assert (error[truth_visible[0]] < 8).all()  # within half a 16-px token wherever the point is visible


@pytest.mark.parametrize("temporal", ["viterbi", "none"])
def test_temporal_modes_and_noise_draws_run(backbone, temporal):
    video = np.random.default_rng(4).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    queries = np.array([[0, 10.0, 12.0]], np.float32)
    tracker = DiffTracker(backbone, window=4, num_steps=10, steps=[5], temporal=temporal, noise="add", noise_draws=2)
    tracks, visible = tracker(video, queries)
    assert tracks.shape == (6, 1, 2) and tracker.stats.forwards == 2 * len(frame_windows(6, 4))


def test_wan_in_bfloat16_tracks_and_reports_its_working_dtype(tmp_path):
    from difftrack.backbones import create_backbone
    from difftrack.testing import tiny_components, tiny_pipeline_class

    save_pipeline(tiny_components("wan"), tiny_pipeline_class("wan"), tmp_path / "wan")
    backbone = create_backbone(str(tmp_path / "wan"), dtype=torch.bfloat16)
    assert backbone.dtype == torch.bfloat16  # though diffusers keeps Wan's norms and embedders in float32
    video = np.random.default_rng(5).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    tracker = DiffTracker(backbone, num_steps=10, steps=[9])
    tracks, visible = tracker(video, np.array([[0, 10.0, 12.0]], np.float32))
    assert tracks.shape == (5, 1, 2) and np.isfinite(tracks).all()
    assert tracker.meta()["dtype"] == "bfloat16" and tracker.meta()["device"] == "cpu"


def test_track_cli_takes_device_and_dtype(tmp_path, pipeline_dir):
    video = _video(tmp_path)
    out = tmp_path / "res"
    assert main(["track", str(video), "--grid", "2", "--model", str(pipeline_dir), "--num-steps", "10", "--steps", "9",
                 "--device", "cpu", "--dtype", "bfloat16", "--no-video", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert meta["device"] == "cpu" and meta["dtype"] == "bfloat16"


@pytest.mark.parametrize("noise", ["add", "invert"])
def test_hunyuanvideo_tracks_with_its_pooled_text_conditioning(noise):
    from difftrack.testing import tiny_backbone

    backbone = tiny_backbone("hunyuanvideo")  # its predict needs the CLIP pooled projection as well
    video = np.random.default_rng(6).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    tracker = DiffTracker(backbone, num_steps=4, steps=[2], noise=noise)
    tracks, visible = tracker(video, np.array([[0, 10.0, 12.0], [2, 20.0, 5.0]], np.float32))
    assert tracks.shape == (5, 2, 2) and np.isfinite(tracks).all()


def test_dominant_shift_finds_a_pan_from_the_costs_of_all_tokens():
    """Frame 1 shows frame 0's content moved by (x +2, y +1) tokens (new content at the edges); each query
    matches its own key sharply, so the dominant displacement is the pan, with no sub-token offset."""
    from difftrack.tracker import dominant_shift

    grid_h, grid_w, heads, dim = 8, 10, 2, 16
    gen = torch.Generator().manual_seed(0)
    frame0 = torch.randn(heads, grid_h, grid_w, dim, generator=gen) * 3
    frame1 = torch.randn(heads, grid_h, grid_w, dim, generator=gen) * 3
    frame1[:, 1:, 2:] = frame0[:, :-1, :-2]
    key = torch.cat([frame0.flatten(1, 2), frame1.flatten(1, 2)], 1)
    shift = dominant_shift(key.clone(), key, (grid_h, grid_w), 0, [0, 1])
    assert torch.allclose(shift, torch.tensor([[0.0, 0.0], [2.0, 1.0]]), atol=0.05)


def test_cost_at_reads_the_token_under_a_position_or_bounds_it():
    from difftrack.tracker import cost_at

    index = torch.tensor([[[5, 7, 1]]])  # grid 3 x 4: token 5 = row 1, col 1
    cost = torch.tensor([[[0.5, 0.3, 0.1]]])
    xy = torch.tensor([[[1.7, 1.2]]])  # inside token 5
    assert cost_at(xy, index, cost, (3, 4)).item() == 0.5
    assert cost_at(torch.tensor([[[3.5, 2.5]]]), index, cost, (3, 4)).item() == pytest.approx(0.1)  # token 11: not a candidate


def test_background_motion_prior_tracks_and_keeps_points_independent(backbone):
    video = np.random.default_rng(5).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    queries = np.array([[0, 10.0, 12.0], [0, 20.0, 5.0]], np.float32)
    tracker = DiffTracker(backbone, window=4, num_steps=10, steps=[5], background_weight=0.5)
    both, _ = tracker(video, queries)
    alone, _ = tracker(video, queries[1:])
    assert both.shape == (6, 2, 2) and np.array_equal(both[:, 1], alone[:, 0])
