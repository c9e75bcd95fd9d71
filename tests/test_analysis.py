"""difftrack analyze: reductions and scores against naive references, ranking, labellers, runner, CLI errors."""

import json
import math

import numpy as np
import pytest
import torch

from difftrack.analysis import AnalysisConfig, Analyzer, VideoJob, run_analysis
from difftrack.analysis.labellers import CoTrackerLabeller, ExactLabeller
from difftrack.analysis.metrics import Reduction, StepReducer, pck_thresholds, score_reduction
from difftrack.analysis.ranking import aggregate, harmonic_mean, min_max, rank
from difftrack.backbones.cogvideox import CogVideoXBackbone
from difftrack.capture import Descriptors
from difftrack.cli import main
from difftrack.errors import UserError
from difftrack.evaluation.queries import token_grid
from difftrack.geometry import TokenGeometry
from difftrack.io import save_npz, write_video
from difftrack.testing import tiny_components


@pytest.fixture(scope="module")
def backbone():
    c = tiny_components("cogvideox-rope")
    return CogVideoXBackbone("tiny", c["transformer"], c["scheduler"], c["vae"], c["text_encoder"], c["tokenizer"])


def geometry(frames=3, grid=(4, 5), compression=4, stride=(16.0, 16.0)):
    return TokenGeometry(frames=frames, grid_h=grid[0], grid_w=grid[1], text_tokens=6, text_position="first",
                         stride_px=stride, temporal_compression=compression)


def test_query_tokens_are_distinct_token_centres():
    g = geometry(grid=(4, 5))
    every = token_grid(20, g.grid_h, g.grid_w)
    assert len(every) == 20 and len({tuple(p) for p in every}) == 20
    assert np.all((every % 1) == 0.5)
    two = token_grid(2, g.grid_h, g.grid_w)
    assert two.tolist() == [[1.5, 1.5], [3.5, 1.5], [1.5, 3.5], [3.5, 3.5]]


def test_thresholds_scale_with_resolution_and_token_size():
    g = geometry(stride=(16.0, 16.0))
    assert pck_thresholds(g, 480, 720) == pytest.approx({"pck": 8.0, "pck_token": 8.0})
    small = geometry(stride=(4.0, 4.0))
    t = pck_thresholds(small, 64, 64)
    assert t["pck"] == pytest.approx(8 * math.sqrt(64 * 64 / (480 * 720)))
    assert t["pck_token"] == pytest.approx(2.0)


def test_score_maps_latent_frames_to_rgb_frames_and_counts_visible_points_only():
    g = geometry(frames=3, compression=4)  # latent frames 0, 1, 2 <-> RGB frames 0, 4, 8
    n, rgb_frames = 2, 9
    tracks = np.zeros((rgb_frames, n, 2), np.float32)
    for t in range(rgb_frames):
        tracks[t] = [[8 + 4 * t, 8.0], [40.0, 24 + 2 * t]]  # both points move every RGB frame
    visible = np.ones((rgb_frames, n), bool)
    visible[8, 1] = False
    pred = np.stack([g.pixel_to_token(tracks[[0, 4, 8]][:, k]) for k in range(n)])  # exact at RGB 0, 4, 8
    red = Reduction(qk_xy=pred, feat_xy=pred + 10.0, max_text=np.full(n, 0.1), max_frames=np.full((n, 3), 0.2),
                    mass_text=np.full(n, 0.3), mass_frames=np.full((n, 3), 0.2))
    red.max_frames[1, 2] = 0.9  # point 1 is invisible on latent frame 2: must not count
    s = score_reduction(red, g, tracks, visible, {"pck": 1.0})
    assert s["qk_pck"] == 1.0 and s["feat_pck"] == 0.0
    assert s["qk_pck_moved"] == 1.0 and s["zero_pck"] == 0.0
    assert s["conf_cross"] == pytest.approx(0.2) and s["conf_own"] == pytest.approx(0.2)
    assert s["attn_cross"] == pytest.approx(0.4) and s["attn_text"] == pytest.approx(0.3)
    # predicting the neighbouring RGB frame (3 instead of 4) is wrong: the mapping is 4f, not 4f - 1
    shifted = np.stack([g.pixel_to_token(tracks[[0, 3, 7]][:, k]) for k in range(n)])
    red.qk_xy = shifted
    assert score_reduction(red, g, tracks, visible, {"pck": 1.0})["qk_pck"] == 0.0
    # half right: point 0 within the threshold, point 1 off by 2 px
    red.qk_xy = pred.copy()
    red.qk_xy[1] += g.pixel_to_token(np.array([2.0, 0.0]))
    assert score_reduction(red, g, tracks, visible, {"pck": 1.0})["qk_pck"] == pytest.approx(2 / 3)


def test_step_reducer_matches_naive_joint_attention():
    torch.manual_seed(0)
    g = geometry(frames=3, grid=(3, 4), compression=1)
    heads, dim, p = 2, 8, 12
    q = torch.randn(1, heads, 3 * p, dim)
    k = torch.randn(1, heads, 3 * p, dim)
    text = torch.randn(1, heads, 6, dim)
    feat = torch.randn(1, 3 * p, 16)
    query_xy = token_grid(4, g.grid_h, g.grid_w)
    reducer = StepReducer(g, query_xy, figure={(1, 2)}, figure_points=[0, 3], figure_frames=[0, 2])
    assert reducer(Descriptors(1, 2, q, k, text, feat)) is True
    red = reducer.reductions[(1, 2)]
    idx = torch.from_numpy(g.nearest_token(g.token_to_pixel(query_xy)))
    logits = torch.einsum("hnd,hsd->hns", q[0][:, idx], torch.cat([text[0], k[0]], 1)) / math.sqrt(dim)
    joint = logits.softmax(-1).mean(0)  # (N, 6 + 3P)
    assert np.allclose(red.mass_text, joint[:, :6].sum(-1), atol=1e-5)
    assert np.allclose(red.max_text, joint[:, :6].max(-1).values, atol=1e-5)
    frames = joint[:, 6:].reshape(-1, 3, p)
    assert np.allclose(red.mass_frames, frames.sum(-1), atol=1e-5)
    assert np.allclose(red.max_frames, frames.max(-1).values, atol=1e-5)
    per_frame = (logits[:, :, 6:].reshape(heads, -1, 3, p).softmax(-1)).mean(0)
    # both directions, as the method matches: each target token's softmax over frame 0, read at the query's token
    backward = (torch.einsum("hjd,hsd->hjs", q[0], k[0][:, :p]) / math.sqrt(dim)).softmax(-1).mean(0)[:, idx]
    two_way = (per_frame + backward.T.reshape(-1, 3, p)) / 2
    for cost, bidirectional in ((two_way, True), (per_frame, False)):
        argmax = cost.argmax(-1)
        centre = torch.stack([argmax % 4 + 0.5, argmax // 4 + 0.5], -1)
        xy = red.qk_xy if bidirectional else StepReducer(g, query_xy, bidirectional=False).reduce(
            Descriptors(1, 2, q, k, text, feat)).qk_xy
        assert (np.abs(xy - centre.numpy()) <= 1.0).all()  # refined stays within the peak's window
    f_logits = torch.einsum("nd,sd->ns", feat[0][idx], feat[0]) / 4.0
    f_arg = f_logits.reshape(-1, 3, p).argmax(-1)
    f_centre = torch.stack([f_arg % 4 + 0.5, f_arg // 4 + 0.5], -1)
    assert (np.abs(red.feat_xy - f_centre.numpy()) <= 1.0).all()
    figs = reducer.figures[(1, 2)]
    assert figs["attention_maps"].shape == (2, 2, 3, 4)
    assert np.allclose(figs["attention_maps"].reshape(2, 2, -1), per_frame[[0, 3]][:, [0, 2]], atol=1e-5)
    assert figs["pca_q"].shape == (2, 3, 4, 3) and figs["pca_k"].shape == (2, 3, 4, 3)


def test_ranking_min_max_harmonic_mean_and_same_step_pairing():
    assert min_max(np.array([[1.0, 3.0], [2.0, np.nan]])).tolist()[0] == [0.0, 1.0]
    assert np.isnan(min_max(np.array([[1.0, 3.0], [2.0, np.nan]]))[1, 1])
    assert harmonic_mean(np.array([1.0, 0.5, 0.0]), np.array([1.0, 1.0, 1.0])).tolist() == pytest.approx([1, 2 / 3, 0])
    layers, steps = [0, 1], [0, 5, 9]
    acc = np.array([[0.1, 0.2, 0.9], [0.1, 0.1, 0.3]])
    # cross-frame scores peak one step EARLIER than accuracy: pairing t+1 with t would pick step 5
    conf = np.array([[0.1, 0.9, 0.8], [0.1, 0.2, 0.3]])
    attn = np.array([[0.1, 0.9, 0.8], [0.1, 0.2, 0.3]])
    r = rank({"qk_pck": acc, "conf_cross": conf, "attn_cross": attn}, layers, steps, "qk_pck", top=1)
    expected = harmonic_mean(min_max(acc), min_max(conf), min_max(attn))
    assert np.allclose(r["score"], expected)
    assert r["ranking"][0]["layer"] == 0 and r["ranking"][0]["step"] == 9
    assert r["layers"] == [0] and r["steps"] == [9]
    agg = aggregate([{"m": [[1.0, np.nan]]}, {"m": [[3.0, 2.0]]}])["m"]
    assert agg["mean"].tolist() == [[2.0, 2.0]] and agg["count"].tolist() == [[2, 1]] and agg["std"][0, 0] == 1.0


def test_exact_labeller_follows_the_generator_and_cotracker_needs_the_cache(tmp_path, monkeypatch):
    from difftrack.data.synthetic import generate_clip

    clip = generate_clip(3, num_frames=5, height=32, width=32)
    queries = np.array([[0, 10.5, 12.5], [0, 20.0, 5.0]], np.float32)
    tracks, visible = ExactLabeller(clip)(clip.video, queries)
    assert tracks.shape == (5, 2, 2) and visible.shape == (5, 2)
    assert np.allclose(tracks[0], queries[:, 1:])
    expected, exp_vis = clip.track(queries)
    assert np.allclose(tracks, expected.transpose(1, 0, 2)) and (visible == exp_vis.T).all()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match="local torch hub cache"):
        CoTrackerLabeller()


def _translating_video(frames=9, size=64, shift=2):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (size + frames * shift, size + frames * shift, 3), dtype=np.uint8)
    import cv2

    base = cv2.GaussianBlur(base, (5, 5), 1.0)
    return np.stack([base[:size, t * shift:t * shift + size] for t in range(frames)])


def test_real_video_one_forward_per_step_early_exit_and_report(backbone, tmp_path):
    video = _translating_video()
    write_video(tmp_path / "clip.mp4", video)
    config = AnalysisConfig(model="tiny", layers=[0], steps=[1, 3], num_steps=4, grid=4)
    analyzer = Analyzer(backbone, config)
    calls = {"forward": 0, "block1": 0}
    blocks = backbone.transformer.transformer_blocks
    h1 = backbone.transformer.register_forward_pre_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    h2 = blocks[1].register_forward_pre_hook(lambda *a: calls.__setitem__("block1", calls["block1"] + 1))
    try:
        results = run_analysis(analyzer, [VideoJob("video", "clip", path=str(tmp_path / "clip.mp4"))],
                               tmp_path / "out", progress=False)
    finally:
        h1.remove()
        h2.remove()
    assert calls == {"forward": 2, "block1": 0}  # one forward per step, nothing after the last requested layer
    out = tmp_path / "out"
    for name in ("results.json", "recommendation.json", "aggregate.csv", "per_video.csv", "index.html",
                 "heatmap_qk_pck.png", "accuracy_vs_step.png", "accuracy_vs_layer.png", "attention_maps.png",
                 "pca_qk.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("heatmap_zero_*"))  # the no-motion baseline is one number per video, not a table
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["layers"] == [0] and rec["steps"][0] in (1, 3) and rec["model"] == "tiny"
    metrics = results["videos"][0]["metrics"]
    assert np.asarray(metrics["qk_pck"]).shape == (1, 2)
    assert results["videos"][0]["latent_frames"] == 3
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_resume_after_kill_skips_finished_videos_and_matches_a_fresh_run(backbone, tmp_path):
    config = AnalysisConfig(model="tiny", layers=[0, 1], steps=[2], num_steps=3, grid=3, num_frames=5, height=32,
                            width=32)
    jobs = [VideoJob("synthetic", str(s), seed=s) for s in (11, 12)]

    class Killed(Exception):
        pass

    def kill_after_first(job):
        raise Killed

    with pytest.raises(Killed):
        run_analysis(Analyzer(backbone, config), jobs, tmp_path / "run", progress=False, after_video=kill_after_first)
    done = sorted(p.name for p in (tmp_path / "run" / "videos").iterdir())
    assert done == ["run.json", "synthetic-11.json", "synthetic-11.npz"]
    assert not (tmp_path / "run" / "results.json").exists()
    analysed = []
    resumed = run_analysis(Analyzer(backbone, config), jobs, tmp_path / "run", progress=False,
                           after_video=lambda job: analysed.append(job.name))
    assert analysed == ["12"]
    fresh = run_analysis(Analyzer(backbone, config), jobs, tmp_path / "fresh", progress=False)
    np.testing.assert_equal(resumed["aggregate"], fresh["aggregate"])
    assert not [p for p in (tmp_path / "run").rglob(".*")]


def test_distributed_run_equals_single_process(backbone, model_dir, tmp_path):
    import os
    import subprocess
    import sys

    seeds = [21, 22, 23]
    args = ["analyze", "--model", str(model_dir), "--synthetic-seeds", *map(str, seeds), "--layers", "0", "1",
            "--steps", "1", "--num-steps", "2", "--grid", "3", "--frames", "5", "--height", "32", "--width", "32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "difftrack.cli", *args, "--out", str(tmp_path / "dist")],
                          env=env, capture_output=True, text=True)
    assert dist.returncode == 0, dist.stderr[-2000:]
    shards = {json.loads(p.read_text())["seed"] for p in (tmp_path / "dist" / "videos").glob("synthetic-*.json")}
    assert shards == set(seeds)
    config = AnalysisConfig(model=str(model_dir), layers=[0, 1], steps=[1], num_steps=2, grid=3, num_frames=5,
                            height=32, width=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_analysis(Analyzer(backbone, config), [VideoJob("synthetic", str(s), seed=s) for s in seeds],
                              tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(threads)
    merged = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert [v["id"] for v in merged["videos"]] == [v["id"] for v in single["videos"]]
    for name, table in single["aggregate"].items():
        np.testing.assert_allclose(np.asarray(merged["aggregate"][name]["mean"], float), table["mean"], atol=1e-6,
                                   err_msg=name)
    rec = json.loads((tmp_path / "dist" / "recommendation.json").read_text())
    assert rec["layers"] == json.loads((tmp_path / "single" / "recommendation.json").read_text())["layers"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusers import CogVideoXPipeline

    from difftrack.testing import save_pipeline

    path = tmp_path_factory.mktemp("tiny_model")
    save_pipeline(tiny_components("cogvideox-rope"), CogVideoXPipeline, path)
    return path


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A random model with the embedded model's architecture (pixel space, flow matching), as tiny-video is saved."""
    import difftrack
    from difftrack.backbones.embedded import build_components, model_config, save_components

    path = tmp_path_factory.mktemp("embedded") / "tiny"
    config = model_config(layers=3, heads=2, head_dim=16, size=16, frames=3, text_tokens=6)
    save_components(build_components(config), path, frames_per_sample=3)
    return difftrack.create_backbone(str(path))


def test_generated_video_is_measured_on_its_own_trajectory(embedded):
    from difftrack.capture import DescriptorCapture
    from difftrack.sampling import initial_noise, sample

    config = AnalysisConfig(model="tiny", layers=[0, 2], steps=[0, 2], num_steps=3, grid=4, guidance_scale=4.0)
    analyzer = Analyzer(embedded, config)
    job = VideoJob("generated", "p0", prompt="a striped disc moves left over a brick wall", seed=7)
    video, geometry, reducer, tracks, visible = analyzer.generate(job, want_figures=False, progress=False)
    # capturing does not change the generation
    plain = sample(embedded, job.prompt, num_frames=3, height=16, width=16, num_steps=3, seed=7, guidance_scale=4.0,
                   output="uint8", progress=False)
    assert np.array_equal(video, plain)
    assert set(reducer.reductions) == {(0, 0), (0, 2), (2, 0), (2, 2)}
    assert tracks.shape == (3, 16, 2) and visible.shape == (3, 16)
    # step 0 replayed by hand: the conditional branch on the seed's initial noise at the first timestep
    x = initial_noise(embedded, 1, 3, 16, 16, seed=7)
    t = embedded.timesteps(3)[0]
    replay = StepReducer(geometry, token_grid(4, geometry.grid_h, geometry.grid_w))
    with DescriptorCapture(embedded, [0, 2], features=True, on_capture=replay) as cap:
        cap.step = 0
        embedded.predict(x, t, embedded.encode_prompt([job.prompt]))
    for layer in (0, 2):
        a, b = reducer.reductions[(layer, 0)], replay.reductions[(layer, 0)]
        np.testing.assert_allclose(a.qk_xy, b.qk_xy, atol=1e-4)
        np.testing.assert_allclose(a.mass_frames, b.mass_frames, atol=1e-5)
        np.testing.assert_allclose(a.feat_xy, b.feat_xy, atol=1e-4)


def test_generator_clips_on_a_flow_matching_model_at_every_step(embedded, tmp_path):
    config = AnalysisConfig(model="tiny", steps=None, num_steps=4, grid=4)
    results = run_analysis(Analyzer(embedded, config), [VideoJob("synthetic", "5", seed=5)], tmp_path, progress=False)
    table = np.asarray(results["videos"][0]["metrics"]["attn_cross"], float)
    assert table.shape == (3, 4) and np.isfinite(table).all()
    assert results["videos"][0]["points"] == 16


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, err
    return lines[-1]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["analyze", "--model", str(model_dir), "--out", str(out)]
    assert "does not exist" in _cli_error(capsys, base + ["--prompts", str(tmp_path / "missing.txt")])
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert "holds no prompt" in _cli_error(capsys, base + ["--prompts", str(tmp_path / "empty.txt")])
    write_video(tmp_path / "clip.mp4", _translating_video())
    save_npz(tmp_path / "short.npz", tracks=np.zeros((5, 2, 2), np.float32), visibility=np.ones((5, 2), bool))
    assert "5 frames" in _cli_error(capsys, base + ["--video", str(tmp_path / "clip.mp4"),
                                                    "--tracks", str(tmp_path / "short.npz")])
    save_npz(tmp_path / "flat.npz", tracks=np.zeros((9, 2), np.float32), visibility=np.ones((9, 2), bool))
    assert "(T, N, 2)" in _cli_error(capsys, base + ["--video", str(tmp_path / "clip.mp4"),
                                                     "--tracks", str(tmp_path / "flat.npz")])
    assert "layer 7 is out of range" in _cli_error(capsys, base + ["--synthetic-seeds", "1", "--layers", "0", "7"])
    assert "step 9 is out of range" in _cli_error(capsys, base + ["--synthetic-seeds", "1", "--steps", "9",
                                                                  "--num-steps", "5"])
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert "could not decode" in _cli_error(capsys, base + ["--video", str(tmp_path / "bad.mp4")])
    assert not out.exists()


@pytest.mark.parametrize("noise", ["add", "invert"])
def test_real_video_analysis_on_hunyuanvideo_passes_its_pooled_conditioning(tmp_path, noise):
    from difftrack.testing import tiny_backbone

    config = AnalysisConfig(model="hunyuan", layers=[0, 1], steps=[2], num_steps=4, grid=2, num_frames=5,
                            height=32, width=32, noise=noise, features=False)
    results = run_analysis(Analyzer(tiny_backbone("hunyuanvideo"), config), [VideoJob("synthetic", "5", seed=5)],
                           tmp_path, progress=False)
    assert np.isfinite(np.asarray(results["videos"][0]["metrics"]["attn_cross"], float)).all()
