import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from difftrack.baselines import BASELINES, LucasKanade, zero_motion
from difftrack.data.tapvid import TapVidReader, metric_mode, sample_queries, to_protocol
from difftrack.metrics import METRIC_NAMES, average_over_videos, compute_tapvid_metrics
from benchmark_scripts import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


tapvid_benchmark = load_benchmark("tapvid")
make_tapvid_fixture = load_benchmark("make_tapvid_fixture")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tapvid_fixture")
    assert make_tapvid_fixture.main(["--out", str(root / "tapvid_davis.pkl"), "--num-videos", "3",
                                     "--frames", "8", "--size", "64", "--points", "8"]) == 0
    return root


def _translating_texture(num_frames=10, size=128, step=(3, 2), seed=0):
    """Content moves by -step pixels a frame (the view slides over a larger blurred noise image)."""
    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur((rng.random((400, 400, 3)) * 255).astype(np.uint8), (5, 5), 1.5)
    return np.stack([canvas[50 + step[1] * t:50 + step[1] * t + size, 60 + step[0] * t:60 + step[0] * t + size]
                     for t in range(num_frames)]).copy()


# ----- reference trackers ------------------------------------------------------------------------

def test_zero_motion_holds_every_query_in_place_and_visible():
    video = np.zeros((5, 16, 16, 3), np.uint8)
    queries = np.array([[0, 1.5, 2.5], [4, 10.0, 3.0]], np.float32)
    tracks, visible = zero_motion(video, queries)
    assert tracks.shape == (5, 2, 2) and tracks.dtype == np.float32 and visible.all()
    assert np.array_equal(tracks, np.broadcast_to(queries[:, 1:], (5, 2, 2)))


def test_lucas_kanade_follows_a_translation_forward_and_backward_from_the_query_frame():
    video = _translating_texture()
    queries = np.array([[4, 64.5, 64.5], [0, 50.0, 70.0], [9, 30.25, 40.75]], np.float32)
    tracks, visible = LucasKanade()(video, queries)
    frames = np.arange(10)[:, None]
    expected = np.stack([queries[:, 1] - 3 * (frames - queries[:, 0]), queries[:, 2] - 2 * (frames - queries[:, 0])],
                        -1)
    assert tracks.shape == (10, 3, 2) and visible.shape == (10, 3)
    assert np.abs(tracks - expected).max() < 0.05
    assert visible.all()


def test_lucas_kanade_marks_a_covered_point_occluded():
    video = _translating_texture()
    for t in range(6, 10):  # a flat grey square covers the point's neighbourhood from frame 6
        cx, cy = int(64.5 - 3 * t), int(64.5 - 2 * t)
        video[t, cy - 20:cy + 20, cx - 20:cx + 20] = 128
    _, visible = LucasKanade()(video, np.array([[0, 64.5, 64.5]], np.float32))
    assert visible[:6, 0].all() and not visible[6, 0]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_a_query_does_not_depend_on_the_other_queries(name):
    video = _translating_texture(num_frames=8, size=96, seed=3)
    rng = np.random.default_rng(1)
    queries = np.stack([rng.integers(0, 8, 6), rng.uniform(5, 90, 6), rng.uniform(5, 90, 6)], -1).astype(np.float32)
    tracks, visible = BASELINES[name](video, queries)
    for n in range(len(queries)):
        alone_tracks, alone_visible = BASELINES[name](video, queries[n:n + 1])
        assert np.array_equal(alone_tracks[:, 0], tracks[:, n]) and np.array_equal(alone_visible[:, 0], visible[:, n])


# ----- the benchmark -------------------------------------------------------------------------------

def _read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _rescore_from_predictions(root, out, tracker, mode, limit=None):
    """Score predictions_{tracker}.npz with the ground truth, as an outside user would."""
    per_video = {}
    with np.load(out / f"predictions_{tracker}.npz") as predictions:
        for name, load in list(TapVidReader("davis", root).entries())[:limit]:
            sample = load()
            _, points = to_protocol(sample)
            queries = sample_queries(points, sample.occluded, mode)
            if mode != "strided":  # one query per track: the per-track arrays are enough
                tracks = predictions[f"{name}/tracks"][queries.track_index]
                occluded = predictions[f"{name}/occluded"][queries.track_index]
            else:
                tracks, occluded = predictions[f"{name}/query_tracks"], predictions[f"{name}/query_occluded"]
            per_video[name] = compute_tapvid_metrics(queries.query_points, queries.occluded, queries.target_points,
                                                     occluded, tracks, metric_mode(mode))
    return per_video


def _check_outputs(root, out, trackers, mode, limit=None):
    """Documented files and shapes, and the CSV / summary equal a re-scoring of the saved predictions."""
    names = [name for name, _ in TapVidReader("davis", root).entries()][:limit]
    summary = json.loads((out / "summary.json").read_text())
    run = summary.pop("run")
    assert list(summary) == trackers and run["protocol"] == mode and run["videos"] == len(names)
    assert not (out / "partial").exists()  # a finished run keeps no partial results
    for metrics in summary.values():
        assert list(metrics) == list(METRIC_NAMES) and all(0 <= v <= 1 for v in metrics.values())
    rows = _read_csv(out / "per_video.csv")
    assert [(r["tracker"], r["video"]) for r in rows] == [(t, name) for t in trackers for name in names]
    table = (out / "summary.md").read_text()
    assert all(f"| {t} |" in table for t in trackers)

    reader = TapVidReader("davis", root)
    for tracker in trackers:
        with np.load(out / f"predictions_{tracker}.npz") as predictions:
            assert sorted({key.split("/")[0] for key in predictions.files}) == names
            for name, load in list(reader.entries())[:limit]:
                sample = load()
                num_tracks, num_frames = sample.occluded.shape
                tracks, occluded = predictions[f"{name}/tracks"], predictions[f"{name}/occluded"]
                assert tracks.shape == (num_tracks, num_frames, 2) and tracks.dtype == np.float32
                assert occluded.shape == (num_tracks, num_frames) and occluded.dtype == bool
                never_visible = sample.occluded.all(axis=1)
                assert (tracks[never_visible] == 0).all() and occluded[never_visible].all()
        rescored = _rescore_from_predictions(root, out, tracker, mode, limit)
        for row in (r for r in rows if r["tracker"] == tracker):
            for metric in METRIC_NAMES:
                assert float(row[metric]) == pytest.approx(rescored[row["video"]][metric], abs=1e-6)
        assert summary[tracker] == pytest.approx(average_over_videos(list(rescored.values())))
    return summary, run


@pytest.mark.parametrize("mode", ["first", "strided", "release"])
def test_reference_trackers_end_to_end_on_the_generator_fixture(fixture_root, tmp_path, mode):
    out = tmp_path / "out"
    assert tapvid_benchmark.main(["--dataset", "davis", "--root", str(fixture_root), "--mode", mode,
                                  "--trackers", "zero_motion,lucas_kanade", "--out", str(out)]) == 0
    summary, _ = _check_outputs(fixture_root, out, ["zero_motion", "lucas_kanade"], mode)
    # A point tracker that follows the motion must beat standing still on moving content.
    assert summary["lucas_kanade"]["average_pts_within_thresh"] > summary["zero_motion"]["average_pts_within_thresh"]


def test_kinetics_shards_run_through_the_benchmark_like_the_same_videos_in_a_davis_pickle(fixture_root, tmp_path):
    """The fixture re-packed as Kinetics shards (JPEG frames, 2 + 1 videos): names follow shard order and
    zero motion, which ignores pixels, scores exactly as on the DAVIS-style pickle."""
    from difftrack.data.tapvid import restricted_load

    fixture = restricted_load(fixture_root / "tapvid_davis.pkl")
    entries = [fixture[name] for name in sorted(fixture)]
    shards = tmp_path / "kinetics"
    shards.mkdir()
    for shard, members in ((1, entries[2:]), (0, entries[:2])):
        packed = [dict(e, video=[cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes()
                                 for f in e["video"]]) for e in members]
        (shards / f"{shard:04d}_of_0010.pkl").write_bytes(pickle.dumps(packed))
    common = ["--trackers", "zero_motion", "--limit", "3"]
    assert tapvid_benchmark.main(["--dataset", "kinetics", "--root", str(shards), *common,
                                  "--out", str(tmp_path / "kinetics_out")]) == 0
    assert tapvid_benchmark.main(["--dataset", "davis", "--root", str(fixture_root), *common,
                                  "--out", str(tmp_path / "davis_out")]) == 0
    kinetics_rows = _read_csv(tmp_path / "kinetics_out" / "per_video.csv")
    davis_rows = _read_csv(tmp_path / "davis_out" / "per_video.csv")
    assert [r["video"] for r in kinetics_rows] == ["0000_of_0010_0000", "0000_of_0010_0001", "0001_of_0010_0000"]
    for k, d in zip(kinetics_rows, davis_rows):
        assert [k[m] for m in METRIC_NAMES] == [d[m] for m in METRIC_NAMES]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from diffusers import CogVideoXPipeline

    from difftrack.testing import save_pipeline, tiny_components

    path = tmp_path_factory.mktemp("tiny_cogvideox")
    save_pipeline(tiny_components("cogvideox-rope"), CogVideoXPipeline, path)
    return path


def test_difftrack_runs_through_the_benchmark_by_model_name(fixture_root, tiny_pipeline, tmp_path):
    """difftrack's tracker on a random-weight tiny CogVideoX: the plumbing, not the accuracy."""
    out = tmp_path / "out"
    assert tapvid_benchmark.main(["--dataset", "davis", "--root", str(fixture_root), "--limit", "1",
                                  "--model", str(tiny_pipeline), "--out", str(out)]) == 0
    _check_outputs(fixture_root, out, ["difftrack", "zero_motion", "lucas_kanade"], "first", limit=1)


def test_the_release_protocol_runs_all_four_trackers_in_one_summary(fixture_root, tiny_pipeline, tmp_path):
    """The README's reproduction command at tiny size: both model trackers on one loaded model, and the run's
    protocol, device, dtype, revision and settings in summary.json."""
    out = tmp_path / "out"
    trackers = ["paper", "difftrack", "zero_motion", "lucas_kanade"]
    assert tapvid_benchmark.main(["--dataset", "davis", "--root", str(fixture_root), "--limit", "2",
                                  "--model", str(tiny_pipeline), "--device", "cpu", "--dtype", "float32",
                                  "--protocol", "release", "--trackers", ",".join(trackers), "--out", str(out)]) == 0
    _, run = _check_outputs(fixture_root, out, trackers, "release", limit=2)
    assert run["device"] == "cpu" and run["dtype"] == "float32" and run["model"] == str(tiny_pipeline)
    assert run["revision"].startswith("config-sha256:")
    assert run["settings"]["paper"]["release_quirks"] is False and run["settings"]["paper"]["steps"] == [49]
    assert run["settings"]["difftrack"]["noise"] == "clean"  # no embedded-model calibration on another model
    with np.load(out / "predictions_paper.npz") as predictions:  # the paper predicts no occlusion
        queried = [key for key in predictions.files if key.endswith("/query_occluded")]
        assert queried and not any(predictions[key].any() for key in queried)


def _outputs(out, trackers):
    files = {name: (out / name).read_text() for name in ("summary.json", "per_video.csv", "summary.md")}
    for tracker in trackers:
        with np.load(out / f"predictions_{tracker}.npz") as predictions:
            files[tracker] = {key: predictions[key] for key in predictions.files}
    return files


def _assert_same_outputs(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key], key
        else:
            assert a[key].keys() == b[key].keys()
            for array in a[key]:
                assert np.array_equal(a[key][array], b[key][array]), array


def test_resume_skips_finished_videos(fixture_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--dataset", "davis", "--root", str(fixture_root / "tapvid_davis.pkl"), "--mode", "strided",
            "--trackers", "zero_motion,lucas_kanade", "--out", str(out)]
    assert tapvid_benchmark.main(argv) == 0
    first = _outputs(out, ["zero_motion", "lucas_kanade"])

    calls = []

    def interrupted(video, queries):
        if calls:
            raise KeyboardInterrupt
        calls.append("lucas_kanade")
        return BASELINES["lucas_kanade"](video, queries)

    def counting(name):
        def tracker(video, queries):
            calls.append(name)
            return BASELINES[name](video, queries)
        return tracker

    resumed = tmp_path / "resumed"
    argv = [*argv[:-1], str(resumed)]
    monkeypatch.setattr("difftrack.baselines.BASELINES", dict(BASELINES, lucas_kanade=interrupted))
    assert tapvid_benchmark.main(argv) == 130  # stopped on the second video: its first one is kept
    assert not (resumed / "summary.json").exists()
    calls.clear()
    monkeypatch.setattr("difftrack.baselines.BASELINES", {name: counting(name) for name in BASELINES})
    assert tapvid_benchmark.main(argv) == 0
    assert calls == ["lucas_kanade", "zero_motion", "lucas_kanade"]  # only the unfinished (tracker, video) pairs
    _assert_same_outputs(first, _outputs(resumed, ["zero_motion", "lucas_kanade"]))

    # A different run into a folder holding another run's partial results is refused, not mixed in.
    monkeypatch.setattr("difftrack.baselines.BASELINES", dict(BASELINES, lucas_kanade=interrupted))
    calls.clear()
    other = tmp_path / "other"
    assert tapvid_benchmark.main([*argv[:-1], str(other)]) == 130
    assert tapvid_benchmark.main([*argv[:-3], "--protocol", "first", "--out", str(other)]) == 2


def test_two_torchrun_processes_give_the_single_process_result(fixture_root, tmp_path):
    argv = ["--dataset", "davis", "--root", str(fixture_root), "--mode", "strided",
            "--trackers", "zero_motion,lucas_kanade"]
    assert tapvid_benchmark.main([*argv, "--out", str(tmp_path / "single")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(BENCHMARKS / "tapvid.py"), *argv, "--out", str(tmp_path / "sharded")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_outputs(_outputs(tmp_path / "single", ["zero_motion", "lucas_kanade"]),
                         _outputs(tmp_path / "sharded", ["zero_motion", "lucas_kanade"]))


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "davis", "--root", "{missing}"], "does not exist"),
    (["--dataset", "davos", "--root", "{root}"], "invalid choice: 'davos'"),
    (["--dataset", "davis", "--root", "{root}", "--trackers", "zero_motion,raft"], "unknown tracker raft"),
    (["--dataset", "kinetics", "--root", "{root}"], "holds no Kinetics shards"),
    (["--dataset", "davis", "--root", "{root}", "--limit", "0"], "--limit: must be an integer >= 1"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(fixture_root, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [a.format(root=fixture_root, missing=tmp_path / "missing") for a in argv]
    assert tapvid_benchmark.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_fixture_maker_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert make_tapvid_fixture.main(["--out", str(tmp_path / name / "tapvid_davis.pkl"), "--num-videos", "1",
                                         "--frames", "4", "--size", "32", "--points", "4", "--seed-offset", "7"]) == 0
    a, b = (pickle.loads((tmp_path / n / "tapvid_davis.pkl").read_bytes()) for n in ("a", "b"))
    assert list(a) == ["synthetic_000007"]
    for key in ("video", "points", "occluded"):
        assert np.array_equal(a["synthetic_000007"][key], b["synthetic_000007"][key])



def test_moved_point_counts_score_only_visible_points_more_than_a_token_from_their_query():
    moved_point_counts = load_benchmark("track_ablation").moved_point_counts
    queries = np.array([[0, 10.0, 10.0]], np.float32)
    target = np.array([[[10.0, 10.0], [30.0, 10.0], [50.0, 10.0], [70.0, 10.0]]], np.float32)
    run = {"queries": queries, "target_points": target,
           "target_occluded": np.array([[False, False, False, True]]),
           "query_tracks": np.array([[[10.0, 10.0], [40.0, 12.0], [10.0, 10.0], [70.0, 10.0]]], np.float32)}
    # frame 0 has not moved and frame 3 is hidden; frame 1 is within 16 px of the truth, frame 2 is not
    assert moved_point_counts(run, 16.0).tolist() == [1, 2]
