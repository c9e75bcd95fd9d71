"""Every command's bad input, through the real entry points: exit 2, one `error:` line, no traceback, no new file.

Each row is (argv, a phrase the error must contain), with these places filled in both: `{in}` is a folder of
ready inputs, `{file}` a regular file (so `{file}/out` cannot be created), `{ro}` a directory nobody can write in
(Linux's /proc; root ignores permission bits, a real attempt does not), `{out}` a fresh folder that must stay empty.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difftrack.backbones import Backbone
from difftrack.cli import main
from difftrack.data.synthetic import generate_clip
from difftrack.io import write_video
from difftrack.testing import bad_inputs

ROOT = Path(__file__).resolve().parents[1]


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
    (["track", "{in}/clip.mp4", "--tracker", "paper", "--noise", "add"], "--noise belongs to --tracker difftrack"),
    (["track", "{in}/clip.mp4", "--occlusion", "--chunk", "4"], "--occlusion, --chunk belong to --tracker paper"),
    (["track", "{in}/clip.mp4", "--tracker", "paper", "--height", "32"], "give --height and --width together"),
    (["track", "{in}/clip.mp4", "--tracker", "sam"], "invalid choice: 'sam'"),
    (["track", "{in}/clip.mp4", "--noise", "loud"], "invalid choice: 'loud'"),
    (["track", "{in}/clip.mp4", "--points", "{in}/missing.json"], "does not exist"),
    (["track", "{in}/clip.mp4", "--points", "{in}/not_json.json"], "not valid JSON"),
    (["track", "{in}/clip.mp4", "--points", "{in}/outside.json"], "lies outside"),
    (["track", "{in}/clip.mp4", "--points", "{in}/late.json"], "query frame 40"),
    (["track", "{in}/clip.mp4", "--model", "no-such-model"], "no-such-model"),
    (["track", "{in}/clip.mp4", "--model", "{in}/no/such/model"], "there is no model directory at"),
    (["track", "{in}/clip.mp4", "--tracker", "paper", "--model", "runs/no-such-model"], "there is none at"),
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
    (["track", "{in}/clip.mp4", "--points", "{in}/nan.json"], "point 0 in {in}/nan.json is [NaN, 10, 10]"),
    (["track", "{in}/clip.mp4", "--points", "{in}/inf.json"], "with finite numbers"),
    (["track", "{in}/clip.mp4", "--points", "{in}/bool.json"], "point 1 in {in}/bool.json is [true, 10, 10]"),
    (["track", "{in}/clip.mp4", "--points", "{in}/text.json"], "with finite numbers"),
    (["track", "{in}/clip.mp4", "--points", "{in}/huge.json"], "must be finite numbers"),
    (["track", "{in}/clip.mp4", "--model", "{in}/model_cut_index"], "model_index.json is not valid JSON"),
    (["track", "{in}/clip.mp4", "--model", "{in}/model_no_weights"],
     "{in}/model_no_weights/transformer holds no weights file (diffusion_pytorch_model.safetensors); copy the whole"),
    (["track", "{in}/clip.mp4", "--model", "{in}/model_cut_weights"],
     "{in}/model_cut_weights/transformer/diffusion_pytorch_model.safetensors is damaged or cut short"),
    (["track", "{in}/clip.mp4", "--model", "{in}/model_no_weights", "--layers", "6"], "layer 6 is out of range"),
    (["track", "{in}/clip.mp4", "--grid", "100000"], "--grid 100000 gives 10,000,000,000 query points"),
    (["track", "{in}/clip.mp4", "--grid", "2000"], "or less"),
    (["track", "{in}/clip.mp4", "--grid", "2000", "--temporal", "none"], "or less"),
    (["track", "{in}/damaged.mp4"], "{in}/damaged.mp4 declares 24 frames but frame"),
    (["track", "{in}/damaged.mp4", "--grid", "100000", "--allow-short-video"], "--grid 100000 gives"),
    (["track", "{in}/frames_empty"], "holds no frames"),
    (["track", "{in}/frames_unreadable"], "00001.png cannot be read as an image"),
    (["track", "{in}/frames_sizes"], "00001.png is 32x24 but 00000.png is 64x64"),
    (["track", "{in}/clip.mp4", "--out", "{out}/missing/"], "directory {out}/missing/ does not exist"),
]

ANALYZE = [
    (["analyze", "--synthetic-seeds", "1", "--frames", "-2", "--out", "{out}/a"], "--frames: must be an integer >= 2"),
    (["analyze", "--synthetic-seeds", "1", "--frames", "1", "--out", "{out}/a"], "--frames: must be an integer >= 2"),
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
    (["analyze", "--video", "{in}/one_frame.mp4", "--out", "{out}/a"], "gives 1 frame to analyse"),
    (["analyze", "--video", "{in}/clip.mp4", "--frame-stride", "8", "--out", "{out}/a"], "or a smaller --frame-stride"),
    (["analyze", "--video", "{in}/clip.mp4", "--tracks", "{in}/tracks.npy", "--out", "{out}/a"],
     "is not an .npz with 'tracks' (T, N, 2) and 'visibility' (T, N)"),
    (["analyze", "--video", "{in}/missing.mp4", "--out", "{out}/a"], "does not exist"),
    (["analyze", "--video", "{in}/damaged.mp4", "--out", "{out}/a"], "declares 24 frames but frame"),
    (["analyze", "--video", "{in}/clip.mp4", "--model", "{in}/model_no_weights", "--layers", "7", "--out", "{out}/a"],
     "layer 7 is out of range; valid layers are 0..5"),
    (["analyze", "--video", "{in}/clip.mp4", "--steps", "-1", "--out", "{out}/a"], "step -1 is out of range"),
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
    (["generate", "--prompt", "a disc moves up", "--cag-steps", "40", "50", "--guidance", "cag", "--out", "{out}/v.mp4"],
     "CAG would never act"),
    (["generate", "--prompt", "a cat jumps over a dog", "--out", "{out}/v.mp4"], "does not know the word(s) cat, jumps, dog"),
    (["generate", "--prompt", "  ", "--out", "{out}/v.mp4"], "--prompt is empty"),
    (["generate", "--prompt", "a disc moves up", "--device", "meta", "--out", "{out}/v.mp4"], "runs on cpu or cuda"),
    (["generate", "--prompts-file", "{in}/comments.txt", "--out", "{out}"], "holds no prompt"),
    (["generate", "--prompt", "a disc moves up", "--out", "{out}/v.txt"], "must end in .mp4"),
    (["generate", "--prompt", "a disc moves up", "--out", "{file}/v.mp4"], "is a file, not a directory"),
    (["generate", "--prompt", "a disc moves up", "--out", "{ro}/v.mp4"], "cannot write in"),
    (["generate", "--prompt", "a disc moves up", "--seed", "0", "1", "--out", "{out}/v.mp4"],
     "--out must be an existing directory"),
    (["generate", "--prompt", "a disc moves up", "--guidance", "cag", "--cag-layers", "9", "--out", "{out}/v.mp4"],
     "--cag-layers: layer 9 is out of range"),
    (["generate", "--prompt", "a disc moves up", "--model", "{in}/model_no_weights", "--out", "{out}/v.mp4"],
     "holds no weights file"),
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
    (["probe", "features", "--video", "{in}/damaged.mp4", "--block", "0", "--out", "{out}/f.npz"], "declares 24 frames"),
    (["probe", "features", "--video", "{in}/clip.mp4", "--block", "0", "6", "--out", "{out}/f.npz"],
     "layer 6 is out of range; valid layers are 0..5"),
    (["probe", "compare", "--block", "6", "--out", "{out}/c"], "layer 6 is out of range"),
    (["probe", "sweep", "--blocks", "1", "9", "--out", "{out}/s"], "layer 9 is out of range"),
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
    (["synth", "{out}/c.mp4", "--grid", "100000"], "--grid 100000 gives 10,000,000,000 query points"),
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
    # a malformed entry is found before the model is looked for
    (["--dataset", "davis", "--root", "{in}/bad_shape.pkl", "--model", "{in}/no_such_model", "--out", "{out}/t"],
     "has points"),
    (["--dataset", "davis", "--root", "{in}/clip.mp4", "--out", "{out}/t"], "not a readable TAP-Vid pickle"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    bad_inputs(folder)
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
    (folder / "inf.json").write_text("[[0, Infinity, 10]]")
    (folder / "bool.json").write_text("[[0, 10, 10], [true, 10, 10]]")
    (folder / "text.json").write_text('[{"t": "0", "x": 10, "y": 10}]')
    (folder / "huge.json").write_text("[[0, 1e39, 10]]")  # finite in JSON, infinite as float32
    _frame_folders(folder)
    _broken_models(folder)
    return folder


def _frame_folders(folder: Path) -> None:
    import cv2

    (folder / "frames_empty").mkdir()
    (folder / "frames_empty" / "notes.txt").write_text("no frames here")
    for name, second in (("frames_unreadable", None), ("frames_sizes", np.zeros((24, 32, 3), np.uint8))):
        (folder / name).mkdir()
        cv2.imwrite(str(folder / name / "00000.png"), np.zeros((64, 64, 3), np.uint8))
        if second is None:
            (folder / name / "00001.png").write_bytes(b"not a PNG")
        else:
            cv2.imwrite(str(folder / name / "00001.png"), second)


def _broken_models(folder: Path) -> None:
    """Copies of the embedded model: model_index.json cut short; transformer weights missing; weights cut short."""
    import shutil

    from difftrack.backbones.embedded import EMBEDDED_DIR

    weights = Path("transformer") / "diffusion_pytorch_model.safetensors"
    for name in ("model_cut_index", "model_no_weights", "model_cut_weights"):
        shutil.copytree(EMBEDDED_DIR / "tiny-video", folder / name, ignore=shutil.ignore_patterns("*.safetensors"))
        shutil.copy(EMBEDDED_DIR / "tiny-video" / "text_encoder" / "model.safetensors",
                    folder / name / "text_encoder" / "model.safetensors")
    index = folder / "model_cut_index" / "model_index.json"
    index.write_text(index.read_text()[:30])
    (folder / "model_cut_weights" / weights).write_bytes((EMBEDDED_DIR / "tiny-video" / weights).read_bytes()[:1000])


def _files(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


# Errors only the loaded model can find: its tokenizer's vocabulary (word-level only in the embedded models,
# which load in about a second).
FOUND_BY_THE_MODEL = ("does not know the word(s)",)


def _check(run, argv, message, inputs, tmp_path, capfd, monkeypatch):
    """``run(argv)`` in this process (the CLI's entry point); unless only the model can find the error, no model
    may load."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)  # default output names land here, where the test can see them
    argv, message = _places(argv, message, inputs, out)
    before = _files(inputs, tmp_path)
    loaded = []
    if not message.startswith(FOUND_BY_THE_MODEL):
        original_init = Backbone.__init__

        def recorded_init(self, name, *args, **kwargs):
            loaded.append(name)
            original_init(self, name, *args, **kwargs)

        monkeypatch.setattr(Backbone, "__init__", recorded_init)
    code = run(argv)
    _check_failure(code, capfd.readouterr().err, message)
    assert not loaded, f"the error came after {loaded} loaded"
    assert _files(inputs, tmp_path) == before, "a failed command left files behind"


def _check_program(script, argv, message, inputs, tmp_path):
    """``python SCRIPT ARGV`` as a fresh process, run in ``tmp_path``."""
    out = tmp_path / "out"
    out.mkdir()
    argv, message = _places(argv, message, inputs, out)
    before = _files(inputs, tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    _check_failure(done.returncode, done.stderr, message)
    assert _files(inputs, tmp_path) == before, "a failed command left files behind"


def _places(argv, message, inputs, out):
    places = {"in": inputs, "file": inputs / "a_file", "ro": "/proc", "out": out}
    return [a.format(**places) for a in argv], message.format(**places)


def _check_failure(code, err, message):
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert all("%|" in line for line in lines[:-1]), err  # nothing else but progress bars (no FFmpeg noise)
    assert message in lines[-1], lines[-1]


@pytest.mark.parametrize("argv, message", TRACK + ANALYZE + GENERATE + PROBE + TRAIN + SYNTH + OTHER,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_cli_bad_input(inputs, tmp_path, capfd, monkeypatch, argv, message):
    _check(main, argv, message, inputs, tmp_path, capfd, monkeypatch)


@pytest.mark.parametrize("argv, message", TAPVID, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_tapvid_benchmark_bad_input(inputs, tmp_path, argv, message):
    _check_program("benchmarks/tapvid.py", argv, message, inputs, tmp_path)


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


SCRIPTS = [
    ("benchmarks/gpu_smoke.py", ["--repeats", "0"], "--repeats: must be an integer >= 1"),
    ("benchmarks/gpu_smoke.py", ["--out", "{out}/g.txt"], "must end in .json"),
    ("studies/train_step_profile.py", ["--device", "gpu0"], "is not a torch device"),
    ("studies/train_step_profile.py", ["--timed-steps", "0"], "--timed-steps: must be an integer >= 1"),
    ("studies/train_step_profile.py", ["--out", "{in}/missing/p.json"], "does not exist"),
    ("benchmarks/track_ablation.py", ["--root", "{in}", "--rows", "best", "--out", "{out}/a"],
     "--rows: invalid choice: 'best'"),
    ("benchmarks/embedded_eval.py", ["--seed-start", "999990"], "held-out seeds must stay below 1000000"),
    ("studies/embedded_screening.py", ["--rows-dir", "{out}/rows", "--minutes", "3"],
     "--minutes is an option of the recipe screening, not of --rows-dir"),
    ("studies/embedded_screening.py", ["--train"], "--train is an option of the v4 screening (--rows-dir)"),
    ("studies/embedded_screening.py", ["--rows-dir", "{out}/rows", "--rows", "v9"], "--rows: invalid choice: 'v9'"),
    ("studies/embedded_screening.py", ["--rows-dir", "{out}/rows", "--photo-clips", "{in}/missing"],
     "no photo clips at {in}/missing"),
    ("studies/embedded_screening.py", ["--rows-dir", "{out}/rows", "--acceptance-clips", "{in}/missing.npz"],
     "no acceptance clips at {in}/missing.npz"),
]


@pytest.mark.parametrize("script, argv, message", SCRIPTS)
def test_benchmark_and_study_scripts_bad_input(inputs, tmp_path, script, argv, message):
    _check_program(script, argv, message, inputs, tmp_path)


def _tracks(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["tracks"]


def test_a_damaged_video_is_tracked_as_far_as_it_decodes_only_when_asked(inputs, tmp_path):
    from difftrack.io import read_video

    decoded, _ = read_video(inputs / "damaged.mp4", allow_short=True)
    assert 0 < len(decoded) < 24
    assert main(["track", str(inputs / "damaged.mp4"), "--allow-short-video", "--grid", "2", "--no-video",
                 "--out", str(tmp_path / "t")]) == 0
    assert _tracks(tmp_path / "t.npz").shape == (len(decoded), 4, 2)


def test_a_folder_of_frames_is_a_video_and_a_directory_out_takes_the_files(tmp_path):
    import cv2

    from difftrack.io import FRAME_FOLDER_FPS, read_video

    clip = generate_clip(3, num_frames=8, height=64, width=64).video
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip):
        cv2.imwrite(str(frames / f"{i:05d}.png"), frame[..., ::-1])
    (frames / "notes.txt").write_text("not a frame")
    video, fps = read_video(frames)
    assert np.array_equal(video, clip) and fps == FRAME_FOLDER_FPS
    out = tmp_path / "out"
    out.mkdir()
    assert main(["track", str(frames), "--grid", "2", "--out", f"{out}/"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frames_tracks.json", "frames_tracks.mp4", "frames_tracks.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out"]
    assert _tracks(out / "frames_tracks.npz").shape == (8, 4, 2)


def test_points_that_cannot_fit_in_memory_are_refused_before_the_model_loads(inputs, tmp_path, capfd, monkeypatch):
    from difftrack.options import tracking_bytes_per_query

    each = tracking_bytes_per_query(8, 256, True, True, None)
    monkeypatch.setattr("difftrack.options.available_memory", lambda: 2 * each + 1)
    monkeypatch.setattr("difftrack.create_backbone", None)  # loading a model would fail the test
    points = tmp_path / "pts.json"
    points.write_text(json.dumps([[0, 10, 10]] * 3))
    assert main(["track", str(inputs / "clip.mp4"), "--points", str(points)]) == 2
    assert capfd.readouterr().err.endswith("track at most 2 points at a time\n")


def test_a_hub_snapshot_missing_its_weights_names_the_download(tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    from difftrack.backbones import load_component
    from difftrack.backbones.embedded import EMBEDDED_DIR
    from difftrack.errors import UserError

    snapshot = tmp_path / "models--org--some-model" / "snapshots" / "0123abc"
    (snapshot / "transformer").mkdir(parents=True)
    (snapshot / "transformer" / "config.json").write_text((EMBEDDED_DIR / "tiny-video" / "transformer" /
                                                           "config.json").read_text())
    with pytest.raises(UserError, match="holds no weights file .*; run `huggingface-cli download org/some-model`"):
        load_component(CogVideoXTransformer3DModel, str(snapshot), "transformer")


def test_cells_without_a_score_are_never_recommended():
    from difftrack.analysis.ranking import rank

    nan = np.full((3, 2), np.nan)
    assert rank({"qk_pck": nan, "conf_cross": nan, "attn_cross": nan}, [0, 1, 2], [0, 1], "qk_pck")["layers"] == []
    partly = np.array([[0.5, np.nan], [np.nan, np.nan], [0.2, np.nan]])
    ranked = rank({"qk_pck": partly, "conf_cross": partly, "attn_cross": partly}, [0, 1, 2], [0, 1], "qk_pck", top=3)
    assert ranked["layers"] == [0, 2] and ranked["steps"] == [0]


def test_an_analysis_without_evidence_recommends_nothing(tmp_path, capsys):
    clip = tmp_path / "two.mp4"
    write_video(clip, generate_clip(3, num_frames=2, height=64, width=64).video)
    hidden = tmp_path / "hidden.npz"  # visible where the queries are (frame 0), never where they are matched
    np.savez(hidden, tracks=np.full((2, 3, 2), 10, np.float32), visibility=np.array([[1, 1, 1], [0, 0, 0]], bool))
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "recommendation.json").write_text("{}")  # an earlier run's, which --layers auto must not read as this one's
    assert main(["analyze", "--video", str(clip), "--tracks", str(hidden), "--num-steps", "2", "--steps", "1",
                 "--layers", "0", "1", "--no-features", "--out", str(out)]) == 0
    assert "analysed 1 video x 2 layers x 1 step" in capsys.readouterr().out
    assert not (out / "recommendation.json").exists()
    page = (out / "index.html").read_text()
    assert "<p>1 video;" in page and "no recommendation.json was written" in page
    assert "best accuracy per layer: layer 0 n/a, layer 1 n/a;" in page
