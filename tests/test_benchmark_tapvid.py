"""The reference trackers, and benchmarks/tapvid.py and benchmarks/make_tapvid_fixture.py run as programs: outputs,
protocols, Kinetics shards, resume, torchrun, bad input."""

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
from difftrack.data.tapvid import TapVidReader
from difftrack.evaluation.metrics import METRIC_NAMES, average_over_videos, compute_tapvid_metrics
from difftrack.evaluation.protocols import metric_mode, sample_queries, to_protocol

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *argv, env=None):
    """``python benchmarks/<script>.py ARGV`` from the repository root; the finished process."""
    return subprocess.run([sys.executable, f"benchmarks/{script}.py", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def tapvid(*argv) -> int:
    done = _run("tapvid", *argv)
    assert done.returncode in (0, 2), done.stderr[-2000:]
    return done.returncode


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tapvid_fixture")
    done = _run("make_tapvid_fixture", "--out", root / "tapvid_davis.pkl", "--num-videos", 3, "--frames", 8,
                "--size", 64, "--points", 8)
    assert done.returncode == 0, done.stderr[-2000:]
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
            _, points = to_protocol(sample.video, sample.points)
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
    timing = json.loads((out / "timing.json").read_text())
    assert timing["wall_seconds"] > 0 and timing["cpu_seconds"] > 0 and len(timing["load_average_after"]) == 3
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
    assert tapvid("--dataset", "davis", "--root", fixture_root, "--mode", mode, "--trackers", "zero_motion,lucas_kanade",
                  "--out", out) == 0
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
    assert tapvid("--dataset", "kinetics", "--root", shards, *common, "--out", tmp_path / "kinetics_out") == 0
    assert tapvid("--dataset", "davis", "--root", fixture_root, *common, "--out", tmp_path / "davis_out") == 0
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
    assert tapvid("--dataset", "davis", "--root", fixture_root, "--limit", 1, "--model", tiny_pipeline, "--out", out) == 0
    _check_outputs(fixture_root, out, ["difftrack", "zero_motion", "lucas_kanade"], "first", limit=1)


def test_the_release_protocol_runs_all_four_trackers_in_one_summary(fixture_root, tiny_pipeline, tmp_path):
    """The README's reproduction command at tiny size: both model trackers on one loaded model, and the run's
    protocol, device, dtype, revision and settings in summary.json."""
    out = tmp_path / "out"
    trackers = ["paper", "difftrack", "zero_motion", "lucas_kanade"]
    assert tapvid("--dataset", "davis", "--root", fixture_root, "--limit", 2, "--model", tiny_pipeline, "--device", "cpu",
                  "--dtype", "float32", "--protocol", "release", "--trackers", ",".join(trackers), "--out", out) == 0
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


def test_a_run_resumes_from_the_finished_videos_of_its_partial_folder_and_refuses_another_runs(fixture_root, tmp_path):
    """The dataset loop's resume itself is tested in test_scoring.py; here the program picks up a partial/ folder of
    the same run (its first video, as an interrupted run leaves it), gives the outputs of an uninterrupted run and
    removes the folder, and refuses one of another run."""
    from difftrack.evaluation.scoring import score_dataset

    pickle_path = fixture_root / "tapvid_davis.pkl"
    argv = ["--dataset", "davis", "--root", pickle_path, "--mode", "strided", "--trackers", "zero_motion,lucas_kanade"]
    assert tapvid(*argv, "--out", tmp_path / "whole") == 0
    resumed = tmp_path / "resumed"
    run = {"dataset": "davis", "source": str(pickle_path.resolve()), "protocol": "strided"}
    trackers = {name: BASELINES[name] for name in ("zero_motion", "lucas_kanade")}
    score_dataset(trackers, TapVidReader("davis", pickle_path).entries(), "strided", resumed / "partial",
                  {name: run for name in trackers}, limit=1, progress=False)
    assert tapvid(*argv, "--out", resumed) == 0
    assert not (resumed / "partial").exists()
    _assert_same_outputs(_outputs(tmp_path / "whole", list(trackers)), _outputs(resumed, list(trackers)))

    other = tmp_path / "other"
    score_dataset(trackers, TapVidReader("davis", pickle_path).entries(), "first", other / "partial",
                  {name: dict(run, protocol="first") for name in trackers}, limit=1, progress=False)
    done = _run("tapvid", *argv, "--out", other)
    assert done.returncode == 2 and "holds results of another run" in done.stderr
    assert not (other / "summary.json").exists()


def test_two_torchrun_processes_give_the_single_process_result(fixture_root, tmp_path):
    argv = ["--dataset", "davis", "--root", str(fixture_root), "--mode", "strided",
            "--trackers", "zero_motion,lucas_kanade"]
    assert tapvid(*argv, "--out", tmp_path / "single") == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(ROOT / "benchmarks" / "tapvid.py"), *map(str, argv), "--out", str(tmp_path / "sharded")],
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
def test_bad_input_is_one_line_exit_2_and_no_output(fixture_root, tmp_path, argv, message):
    out = tmp_path / "out"
    argv = [a.format(root=fixture_root, missing=tmp_path / "missing") for a in argv]
    done = _run("tapvid", *argv, "--out", out)
    err = done.stderr
    assert done.returncode == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_fixture_maker_is_deterministic(tmp_path):
    for name in ("a", "b"):
        done = _run("make_tapvid_fixture", "--out", tmp_path / name / "tapvid_davis.pkl", "--num-videos", 1,
                    "--frames", 4, "--size", 32, "--points", 4, "--seed-offset", 7)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (pickle.loads((tmp_path / n / "tapvid_davis.pkl").read_bytes()) for n in ("a", "b"))
    assert list(a) == ["synthetic_000007"]
    for key in ("video", "points", "occluded"):
        assert np.array_equal(a["synthetic_000007"][key], b["synthetic_000007"][key])
