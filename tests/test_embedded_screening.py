"""Matching on clips of another pixel size or with tracked points, and the v4 screening's scoring mode
(studies/embedded_screening.py, run as a program)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from difftrack.backbones.settings import UNCALIBRATED, occlusion_thresholds
from difftrack.data.clips import load_clips, make_clips, save_clips, save_tapvid, tapvid_fixture, tracked_clips
from difftrack.data.photo_clips import clip_name, clip_seed
from difftrack.errors import UserError
from difftrack.evaluation.matching import tracked_targets
from difftrack.io import json_safe

REPO = Path(__file__).resolve().parents[1]


def test_tracked_points_are_queried_at_the_token_under_them_on_frame_0():
    # three points on a 4 x 4 grid: one still, one moving a token and a half, one hidden on frame 0
    true_tok = np.array([[[1.2, 2.7], [1.2, 2.7], [1.9, 2.1]],
                         [[3.9, 0.1], [2.4, 0.1], [0.5, 0.5]],
                         [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]], np.float32)
    visible = np.array([[True, True, True], [True, False, True], [False, True, True]])
    query_index, targets, shown, moved = tracked_targets(true_tok, visible, 4)
    assert query_index.tolist() == [2 * 4 + 1, 0 * 4 + 3]
    assert np.array_equal(targets, true_tok[:2])
    assert shown.tolist() == [[False, True, True], [False, False, True]]
    # moved: more than one token from the query token's centre (1.5, 2.5) / (3.5, 0.5), where zero motion answers
    assert moved.tolist() == [[False, False, False], [False, True, True]]


def test_a_tracked_set_cuts_each_clip_into_windows_and_pads_them_with_points_never_seen():
    videos = tapvid_fixture(2, seed_offset=7, frames=9, size=32, points=6)
    names = sorted(videos)
    clips = tracked_clips([videos[n] for n in names], [11, 12], window=4, grid=8)
    assert clips["seeds"].tolist() == [11, 11, 12, 12] and int(clips["grid"]) == 8  # the ninth frame is dropped
    assert clips["video"].shape == (4, 4, 32, 32, 3)
    assert np.array_equal(clips["video"][1], videos[names[0]]["video"][4:8])
    for c, (name, start) in enumerate([(n, s) for n in names for s in (0, 4)]):
        entry = videos[name]
        expected = tracked_targets(entry["points"][:, start:start + 4] * np.float32(8),
                                   ~entry["occluded"][:, start:start + 4], 8)
        count = len(expected[0])
        for got, want in zip((clips[k][c] for k in ("query_index", "true_tok", "visible", "moved")), expected):
            assert np.array_equal(got[:count], want)
        assert not clips["visible"][c, count:].any() and not clips["moved"][c, count:].any()


def test_generator_sets_name_their_grid_and_the_same_seeds_give_the_same_targets_at_every_pixels_per_token():
    small, large = make_clips([200000], 4, (64, 64), 4), make_clips([200000], 4, (128, 128), 8)
    assert int(small["grid"]) == int(large["grid"]) == 16
    for name in ("query_index", "true_tok", "visible", "moved"):
        assert np.array_equal(small[name], large[name])
    # the acceptance set was frozen before sets named their grid: its queries say it
    assert int(load_clips(REPO / "benchmarks" / "data" / "acceptance_clips.npz")["grid"]) == 16


def test_a_photo_clip_seed_reads_back_from_its_name():
    assert clip_seed(clip_name(400003)) == 400003
    for name in ("synthetic_000001", "photo_", "photo_3a"):
        with pytest.raises(UserError, match="not the name of a frozen photo clip"):
            clip_seed(name)


def _train(out: Path, twin: bool) -> None:
    from difftrack.train import TrainConfig, train

    train(TrainConfig(out=str(out), run_dir=str(out) + "-run", steps=2, warmup=0, batch=1, frames=4, sample_frames=2,
                      image_twin=twin, layers=1, heads=2, head_dim=16, size=128, patch=8, bf16=False), progress=False)


@pytest.fixture(scope="module")
def screening(tmp_path_factory):
    """A rows folder where mix-128 (a tiny 128/8 video model and its twin) has finished, and stand-in clips: one
    64x64 acceptance clip and one tracked clip named as a frozen photo clip."""
    root = tmp_path_factory.mktemp("screening")
    for role in ("video", "twin"):
        _train(root / "rows" / "mix-128" / role, role == "twin")
    save_clips(root / "acceptance.npz", make_clips([200000], 4, (64, 64), 4))
    photo = tapvid_fixture(1, seed_offset=3, frames=8, size=64, points=8)["synthetic_000003"]
    save_tapvid(root / "photos" / "tapvid_davis.pkl", {clip_name(400000): photo})
    return root


def _study(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "studies/embedded_screening.py", "--rows-dir", str(root / "rows"),
                           "--out", str(root / "out"), "--acceptance-clips", str(root / "acceptance.npz"),
                           "--photo-clips", str(root / "photos"), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_screening_scores_finished_rows_at_each_models_size_and_resumes(screening):
    done = _study(screening)
    assert done.returncode == 0, done.stderr[-3000:]
    row_file = screening / "out" / "screening-v4" / "mix-128.json"
    row = json.loads(row_file.read_text())
    assert sorted(p.name for p in (screening / "out" / "screening-v4").iterdir()) == [
        "mix-128.json", "shipped-v2.json", "tracking_baselines.json"]
    assert row["commands"]["twin"].endswith(f"--size 128 --patch 8 --image-twin --out {screening}/rows/mix-128/twin "
                                            f"--run-dir {screening}/rows/mix-128/twin-run")
    assert row["steps"] == {"video": 2, "twin": 2}
    for role in ("video", "twin"):
        model = row["models"][role]
        # the 64x64 acceptance clip scored at the model's own 128x128, 8 pixels a token
        assert model["input_size"] == [128, 128] and model["patch"] == 8 and model["window"] == 4
        assert set(model["qk_moved"]) == {"acceptance", "photos"}
        assert list(model["qk_moved"]["acceptance"]["best_by_s"]) == ["0.0", "0.1", "0.2", "0.5"]
        assert set(model["matching_baselines"]["photos"]) == {"noisy_patch", "ncc_1", "ncc_3", "ncc_5"}
        assert set(model["tracking"]["metrics"]) == {"AJ", "delta_avg", "OA"}
        assert model["tracking"]["tracker"]["name"] == "difftrack"
    assert set(row["models"]["video"]["scoring_seconds"]) == {"matching_acceptance", "matching_photos", "tracking",
                                                              "cross_frame_removal"}
    table = (screening / "out" / "screening-v4.md").read_text()
    assert "| mix-128: the procedural mix, 128/8 pixels per token (`--size 128 --patch 8`) | 0." in table
    assert ("| photos-256: photographs, 256/16 pixels per token (`--data photos --size 256 --patch 16`) | "
            "not trained: ") in table
    assert "| photos-64: photographs, 64/4 pixels per token (`--data photos`) | not finished |" in table
    shipped = json.loads((screening / "out" / "screening-v4" / "shipped-v2.json").read_text())
    assert shipped["steps"] == {"video": 3000, "twin": 3000} and shipped["models"]["video"]["input_size"] == [64, 64]
    # scored as users get it: by its registry name, with the occlusion thresholds calibrated for that name
    calibrated = json_safe(occlusion_thresholds("tiny-video"))
    assert calibrated != json_safe(UNCALIBRATED)
    tracker = shipped["models"]["video"]["tracking"]["tracker"]
    assert {k: tracker[k] for k in calibrated} == calibrated
    assert "| shipped-v2: the shipped tiny-video and tiny-image" in table and "(3000 / 3000 steps) | 0." in table
    assert "- acceptance clips at 128/8: noisy patch " in table and "lucas kanade" in table
    assert f"- photos-64: `difftrack train-tiny --steps 559 --warmup 111 --no-bf16 --data photos --out " \
           f"{screening}/rows/photos-64/video --run-dir {screening}/rows/photos-64/video-run`" in table

    scored = row_file.stat().st_mtime_ns
    again = _study(screening)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "mix-128: scored already" in again.stdout and row_file.stat().st_mtime_ns == scored
    assert "shipped-v2: scoring" not in again.stdout


def test_the_screening_never_trains_unless_asked(screening):
    done = _study(screening, "--rows", "mix-64", "--long-run", str(screening / "long"))
    assert done.returncode == 0 and "mix-64: not finished training, not scored" in done.stdout
    assert "mix-64-long: not finished training, not scored" in done.stdout
    assert not (screening / "rows" / "mix-64").exists() and not (screening / "long").exists()


def test_the_long_runs_commands_are_the_winners_with_more_steps(screening):
    shown = _study(screening, "--rows", "mix-64", "--long-run", str(screening / "long"), "--show-commands")
    row, long = shown.stdout.splitlines()[:2], shown.stdout.splitlines()[2:]
    assert len(long) == 2 and long[1].startswith("difftrack train-tiny --steps 6000 --warmup 400 --no-bf16 ")
    assert [c.split("--out")[0].replace("559 --warmup 111", "6000 --warmup 400") for c in row] == [
        c.split("--out")[0] for c in long]
