"""Every command's bad input, through the real entry points: exit 2, one `error:` line, no traceback, no new file.

Each row is (argv, a phrase the error must contain). `{in}` is a folder of ready inputs, `{file}` a regular
file (so `{file}/out` cannot be created), `{ro}` a directory nobody can write in (Linux's /proc; root
ignores permission bits, a real attempt does not), `{out}` a fresh folder that must stay empty.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from difftrack.cli import main
from difftrack.data.synthetic import generate_clip
from difftrack.io import write_video
from benchmark_scripts import load_benchmark


TRACK = [
    (["track", "{in}/missing.mp4"], "does not exist"),
    (["track", "{in}/junk.mp4"], "could not decode"),
    (["track", "{in}/clip.mp4", "--grid", "0"], "--grid: must be an integer >= 1"),
    (["track", "{in}/clip.mp4", "--grid", "-3"], "--grid: must be an integer >= 1"),
    (["track", "{in}/clip.mp4", "--grid", "2.5"], "--grid: must be an integer"),
    (["track", "{in}/clip.mp4", "--grid-frame", "99"], "--grid-frame 99 is out of range"),
    (["track", "{in}/clip.mp4", "--grid-frame", "-1"], "--grid-frame: must be an integer >= 0"),
    (["track", "{in}/clip.mp4", "--window", "0"], "--window: must be an integer >= 2"),
    (["track", "{in}/clip.mp4", "--window", "1"], "--window: must be an integer >= 2"),
    (["track", "{in}/clip.mp4", "--cycle-threshold", "-1"], "--cycle-threshold: must be a finite number >= 0"),
    (["track", "{in}/clip.mp4", "--cycle-threshold", "nan"], "--cycle-threshold: must be a finite number"),
    (["track", "{in}/clip.mp4", "--background-weight", "1.5"], "--background-weight: must be a finite number"),
    (["track", "{in}/clip.mp4", "--seed", "-1"], "--seed: must be an integer >= 0"),
    (["track", "{in}/clip.mp4", "--num-steps", "0"], "--num-steps: must be an integer >= 1"),
    (["track", "{in}/clip.mp4", "--steps", "-2"], "--steps: must be an integer >= 0"),
    (["track", "{in}/clip.mp4", "--steps", "60", "--num-steps", "50"], "step 60 is out of range"),
    (["track", "{in}/clip.mp4", "--layers", "99"], "layer 99 is out of range"),
    (["track", "{in}/clip.mp4", "--layers", "x"], "--layers takes integers or `auto`"),
    (["track", "{in}/clip.mp4", "--noise", "loud"], "invalid choice: 'loud'"),
    (["track", "{in}/clip.mp4", "--points", "{in}/missing.json"], "does not exist"),
    (["track", "{in}/clip.mp4", "--points", "{in}/not_json.json"], "not valid JSON"),
    (["track", "{in}/clip.mp4", "--points", "{in}/outside.json"], "lies outside"),
    (["track", "{in}/clip.mp4", "--points", "{in}/late.json"], "query frame 40"),
    (["track", "{in}/clip.mp4", "--model", "no-such-model"], "no-such-model"),
    (["track", "{in}/clip.mp4", "--device", "gpu0"], "is not a torch device"),
    (["track", "{in}/clip.mp4", "--dtype", "float8"], "invalid choice: 'float8'"),
    (["track", "{in}/clip.mp4", "--out", "{file}/tracks"], "is a file, not a directory"),
    (["track", "{in}/clip.mp4", "--out", "{ro}/tracks"], "cannot write in"),
    (["track", "{in}/clip.mp4", "--out", "{out}/missing/tracks"], "does not exist"),
    (["track", "{in}/clip.mp4", "--gt", "{in}/missing_gt.npz"], "does not exist"),
    (["track", "{in}/clip.mp4", "--gt", "{in}/gt_without_queries.npz"], "holds no 'queries'"),
    (["track", "{in}/clip.mp4", "--gt", "{in}/gt_of_another_video.npz"], "has 5 frames but the video has 8"),
    (["track", "{in}/clip.mp4", "--gt", "{in}/gt_outside.npz"], "lies outside"),
    (["track", "{in}/clip.mp4", "--gt", "{in}/gt_outside.npz", "--grid", "3"], "not allowed with argument"),
]

ANALYZE = [
    (["analyze", "--synthetic-seeds", "1", "--frames", "-2", "--out", "{out}/a"], "--frames: must be an integer >= 1"),
    (["analyze", "--synthetic-seeds", "1", "--frames", "0", "--out", "{out}/a"], "--frames: must be an integer >= 1"),
    (["analyze", "--synthetic-seeds", "-1", "--out", "{out}/a"], "--synthetic-seeds: must be an integer >= 0"),
    (["analyze", "--synthetic-seeds", "1", "--grid", "0", "--out", "{out}/a"], "--grid: must be an integer >= 1"),
    (["analyze", "--synthetic-seeds", "1", "--num-steps", "0", "--out", "{out}/a"], "--num-steps: must be an integer"),
    (["analyze", "--synthetic-seeds", "1", "--top", "0", "--out", "{out}/a"], "--top: must be an integer >= 1"),
    (["analyze", "--synthetic-seeds", "1", "--frame-stride", "0", "--out", "{out}/a"], "--frame-stride"),
    (["analyze", "--synthetic-seeds", "1", "--guidance-scale", "nan", "--out", "{out}/a"], "--guidance-scale"),
    (["analyze", "--synthetic-seeds", "1", "--layers", "99", "--out", "{out}/a"], "layer 99 is out of range"),
    (["analyze", "--synthetic-seeds", "1", "--steps", "9", "--num-steps", "5", "--out", "{out}/a"],
     "step 9 is out of range"),
    (["analyze", "--prompts", "{in}/comments.txt", "--out", "{out}/a"], "holds no prompt"),
    (["analyze", "--prompts", "{in}/missing.txt", "--out", "{out}/a"], "does not exist"),
    (["analyze", "--prompts", "{in}/unknown_words.txt", "--out", "{out}/a"], "does not know the word(s) cat"),
    (["analyze", "--tapvid", "{in}/bad_shape.pkl", "--out", "{out}/a"], "has points"),
    (["analyze", "--tapvid", "{in}/bad_shape.pkl", "--dataset", "davos", "--out", "{out}/a"], "invalid choice"),
    (["analyze", "--tapvid", "{in}/bad_shape.pkl", "--limit", "0", "--out", "{out}/a"], "--limit: must be an integer"),
    (["analyze", "--video", "{in}/junk.mp4", "--out", "{out}/a"], "could not decode"),
    (["analyze", "--out", "{out}/a"], "give exactly one video source"),
    (["analyze", "--synthetic-seeds", "1", "--out", "{file}/a"], "is a file, not a directory"),
    (["analyze", "--synthetic-seeds", "1", "--out", "{file}"], "exists and is not a directory"),
    (["analyze", "--synthetic-seeds", "1", "--out", "{ro}/a"], "cannot write in"),
]

GENERATE = [
    (["generate", "--prompt", "a disc moves up", "--steps", "0", "--out", "{out}/v.mp4"], "--steps: must be an integer"),
    (["generate", "--prompt", "a disc moves up", "--cfg-scale", "-1", "--out", "{out}/v.mp4"], "--cfg-scale"),
    (["generate", "--prompt", "a disc moves up", "--cag-scale", "nan", "--out", "{out}/v.mp4"], "--cag-scale"),
    (["generate", "--prompt", "a disc moves up", "--fps", "0", "--out", "{out}/v.mp4"], "--fps: must be a finite number > 0"),
    (["generate", "--prompt", "a disc moves up", "--seed", "-1", "--out", "{out}/v.mp4"], "--seed: must be an integer >= 0"),
    (["generate", "--prompt", "a disc moves up", "--frames", "0", "--out", "{out}/v.mp4"], "--frames: must be an integer"),
    (["generate", "--prompt", "a disc moves up", "--cag-steps", "3", "1", "--guidance", "cag", "--out", "{out}/v.mp4"],
     "is not a range"),
    (["generate", "--prompt", "a cat jumps over a dog", "--out", "{out}/v.mp4"], "does not know the word(s) cat, jumps, dog"),
    (["generate", "--prompt", "  ", "--out", "{out}/v.mp4"], "--prompt is empty"),
    (["generate", "--prompt", "a disc moves up", "--device", "meta", "--out", "{out}/v.mp4"], "runs on cpu or cuda"),
    (["generate", "--prompts-file", "{in}/comments.txt", "--out", "{out}"], "holds no prompt"),
    (["generate", "--prompt", "a disc moves up", "--out", "{out}/v.txt"], "must end in .mp4"),
    (["generate", "--prompt", "a disc moves up", "--out", "{file}/v.mp4"], "is a file, not a directory"),
    (["generate", "--prompt", "a disc moves up", "--out", "{ro}/v.mp4"], "cannot write in"),
    (["generate", "--prompt", "a disc moves up", "--seed", "0", "1", "--out", "{out}/v.mp4"],
     "--out must be an existing directory"),
]

PROBE = [
    (["probe", "features", "--video", "{in}/clip.mp4", "--block", "-1"], "--block: must be an integer >= 0"),
    (["probe", "features", "--video", "{in}/clip.mp4", "--block", "0", "--num-steps", "0"], "--num-steps"),
    (["probe", "features", "--video", "{in}/clip.mp4", "--block", "0", "--out", "{out}/f.txt"], "must end in .npz"),
    (["probe", "features", "--video", "{in}/clip.mp4", "--block", "0", "--out", "{ro}/f.npz"], "cannot write in"),
    (["probe", "features", "--video", "{in}/junk.mp4", "--block", "0", "--out", "{out}/f.npz"], "could not decode"),
    (["probe", "propagate", "--synthetic", "0"], "--synthetic: must be an integer >= 1"),
    (["probe", "propagate", "--synthetic", "2", "--temperature", "0"], "--temperature: must be a finite number > 0"),
    (["probe", "propagate", "--synthetic", "2", "--topk", "0"], "--topk: must be an integer >= 1"),
    (["probe", "propagate", "--video", "{in}/clip.mp4", "--keypoints", "{in}/missing.json", "--out", "{out}/p"],
     "does not exist"),
    (["probe", "compare", "--eval-videos", "0", "--out", "{out}/c"], "--eval-videos: must be an integer >= 1"),
    (["probe", "compare", "--out", "{file}/c"], "is a file, not a directory"),
    (["probe", "sweep", "--frames", "1", "--out", "{out}/s"], "--frames: must be an integer >= 2"),
    (["probe", "sweep", "--out", "{ro}/s"], "cannot write in"),
    (["probe", "pictures", "--control", "--clusters", "0", "--out", "{out}/q"], "--clusters: must be an integer"),
    (["probe", "pictures", "--control", "--out", "{ro}/q"], "cannot write in"),
]

TRAIN = [
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--layers", "0"], "--layers: must be an integer >= 1"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--lr", "nan"], "--lr: must be a finite number > 0"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--lr", "0"], "--lr: must be a finite number > 0"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--steps", "0"], "--steps: must be an integer >= 1"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--sample-frames", "0"], "--sample-frames"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--size", "30", "--steps", "1"], "multiple of"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--head-dim", "3", "--steps", "1"], "even"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--checkpoint-minutes", "-1"], "--checkpoint-minutes"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{ro}/r"], "cannot write in"),
    (["train-tiny", "--out", "{file}/m", "--run-dir", "{out}/r"], "is a file, not a directory"),
    (["train-tiny", "--run-dir", "{out}/r"], "--out"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--device", "gpu0"], "is not a torch device"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--device", "meta"], "runs on cpu or cuda"),
    (["train-tiny", "--out", "{out}/m", "--run-dir", "{out}/r", "--workers", "0"], "--workers: must be an integer"),
]

SYNTH = [
    (["synth", "{out}/c.mp4", "--speed", "-1"], "--speed: must be a finite number > 0"),
    (["synth", "{out}/c.mp4", "--speed", "inf"], "--speed: must be a finite number"),
    (["synth", "{out}/c.mp4", "--fps", "0"], "--fps: must be a finite number > 0"),
    (["synth", "{out}/c.mp4", "--seed", "-1"], "--seed: must be an integer >= 0"),
    (["synth", "{out}/c.mp4", "--frames", "1"], "--frames: must be an integer >= 2"),
    (["synth", "{out}/c.mp4", "--size", "8"], "--size: must be an integer >= 16"),
    (["synth", "{out}/c.mp4", "--grid", "0"], "--grid: must be an integer >= 1"),
    (["synth", "{out}/c.txt"], "must end in .mp4"),
    (["synth", "{ro}/c.mp4"], "cannot write in"),
    (["synth", "{file}/c.mp4"], "is a file, not a directory"),
    (["synth", "{out}/missing/c.mp4"], "does not exist"),
]

OTHER = [
    (["models", "--bogus"], "unrecognized arguments: --bogus"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
    ([], "give a command"),
]

TAPVID = [
    (["--dataset", "davis", "--root", "{in}/bad_shape.pkl", "--trackers", "zero_motion", "--out", "{out}/t"], "has points"),
    (["--dataset", "davis", "--root", "{in}/bad_shape.pkl", "--trackers", "zero_motion", "--out", "{ro}/t"],
     "cannot write in"),
    (["--dataset", "davis", "--root", "{in}/bad_shape.pkl", "--trackers", "zero_motion", "--out", "{file}/t"],
     "is a file, not a directory"),
    (["--dataset", "davis", "--root", "{in}/bad_shape.pkl", "--limit", "-1", "--out", "{out}/t"], "--limit"),
    (["--dataset", "davis", "--root", "{in}/clip.mp4", "--out", "{out}/t"], "not a readable TAP-Vid pickle"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    write_video(folder / "clip.mp4", generate_clip(3, num_frames=8, height=64, width=64).video)
    (folder / "junk.mp4").write_bytes(b"this is not a video")
    (folder / "a_file").write_text("a regular file")
    (folder / "comments.txt").write_text("# a comment, and nothing else\n\n")
    (folder / "unknown_words.txt").write_text("a cat moves over a dog\n")
    (folder / "not_json.json").write_text("[[0, 1,")
    (folder / "outside.json").write_text(json.dumps([[0, 500.0, 10.0]]))
    (folder / "late.json").write_text(json.dumps([{"t": 40, "x": 10.0, "y": 10.0}]))
    tracks, visibility = np.full((8, 2, 2), 10.0, np.float32), np.ones((8, 2), bool)
    np.savez(folder / "gt_without_queries.npz", tracks=tracks, visibility=visibility)
    np.savez(folder / "gt_of_another_video.npz", tracks=tracks[:5], visibility=visibility[:5],
             queries=np.float32([[0, 10, 10], [0, 10, 10]]))
    np.savez(folder / "gt_outside.npz", tracks=tracks, visibility=visibility, queries=np.float32([[0, 10, 10], [0, 99, 9]]))
    video = np.zeros((4, 16, 16, 3), np.uint8)
    entry = {"video": video, "points": np.zeros((3, 5, 2), np.float32), "occluded": np.zeros((3, 4), bool)}
    (folder / "bad_shape.pkl").write_bytes(pickle.dumps({"clip": entry}))
    return folder


def _files(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


def _check(run, argv, message, inputs, tmp_path, capfd, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)  # default output names land here, where the test can see them
    argv = [a.format(**{"in": inputs, "file": inputs / "a_file", "ro": "/proc", "out": out}) for a in argv]
    before = _files(inputs, tmp_path)
    code = run(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert all("%|" in line for line in lines[:-1]), err  # nothing else but progress bars (no FFmpeg noise)
    assert message in lines[-1], lines[-1]
    assert _files(inputs, tmp_path) == before, "a failed command left files behind"


@pytest.mark.parametrize("argv, message", TRACK + ANALYZE + GENERATE + PROBE + TRAIN + SYNTH + OTHER,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_cli_bad_input(inputs, tmp_path, capfd, monkeypatch, argv, message):
    _check(main, argv, message, inputs, tmp_path, capfd, monkeypatch)


@pytest.fixture(scope="module")
def tapvid_main():
    return load_benchmark("tapvid").main


@pytest.mark.parametrize("argv, message", TAPVID, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_tapvid_benchmark_bad_input(tapvid_main, inputs, tmp_path, capfd, monkeypatch, argv, message):
    _check(tapvid_main, argv, message, inputs, tmp_path, capfd, monkeypatch)


def test_read_only_directory_is_refused_for_ordinary_users(tmp_path):
    """Permission bits stop everyone but root; the probe-by-writing check agrees with them."""
    from difftrack.options import writable_directory_problem

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        can_write = os.access(locked, os.W_OK)
        assert (writable_directory_problem(locked / "sub") is None) == can_write
    finally:
        locked.chmod(0o755)


def test_a_non_video_file_gives_one_line_from_a_fresh_process(inputs, tmp_path):
    """FFmpeg inside OpenCV logs on its own when it first opens a file; only a fresh process shows it."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    done = subprocess.run([sys.executable, "-m", "difftrack.cli", "track", str(inputs / "junk.mp4")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: could not decode any frame from {inputs / 'junk.mp4'}; is it a video file OpenCV can read (mp4, avi)?"]
    assert not list(tmp_path.iterdir())


BENCHMARK_SCRIPTS = [
    ("gpu_smoke", ["--repeats", "0"], "--repeats: must be an integer >= 1"),
    ("gpu_smoke", ["--out", "{out}/g.txt"], "must end in .json"),
    ("train_step_profile", ["--device", "gpu0"], "is not a torch device"),
    ("train_step_profile", ["--timed-steps", "0"], "--timed-steps: must be an integer >= 1"),
    ("train_step_profile", ["--out", "{in}/missing/p.json"], "does not exist"),
    ("track_ablation", ["--root", "{in}", "--rows", "best", "--out", "{out}/a"], "--rows: invalid choice: 'best'"),
]


@pytest.mark.parametrize("script, argv, message", BENCHMARK_SCRIPTS)
def test_benchmark_scripts_bad_input(inputs, tmp_path, capfd, monkeypatch, script, argv, message):
    _check(load_benchmark(script).main, argv, message, inputs, tmp_path, capfd, monkeypatch)
