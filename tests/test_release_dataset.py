"""The DiffTrack release's generated-video dataset: its layout read in difftrack's conventions, and
`difftrack analyze --release-dataset` scoring against the authors' tracks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftrack.cli import main
from difftrack.data.release import ReleaseDataset
from difftrack.data.synthetic import generate_clip
from difftrack.errors import UserError
from difftrack.io import write_video


def write_release_folder(root, clips, grid=4):
    """A folder in the release's layout: prompt.txt, tracks/NNN.npy (1, T, N, 2) at 720x480 with CoTracker's
    integer pixel centres, visibility/NNN.npy (1, T, N); the clips' exact tracks of a grid on frame 0."""
    (root / "tracks").mkdir(parents=True)
    (root / "visibility").mkdir()
    prompts = []
    for i, clip in enumerate(clips):
        height, width = clip.video.shape[1:3]
        xs, ys = np.meshgrid((np.arange(grid) + 0.5) / grid * width, (np.arange(grid) + 0.5) / grid * height)
        queries = np.stack([np.zeros(grid * grid), xs.ravel(), ys.ravel()], 1).astype(np.float32)
        tracks, visible = (a.swapaxes(0, 1) for a in clip.track(queries))  # (T, N, ...)
        scale = np.float32([720 / width, 480 / height])
        np.save(root / "tracks" / f"{i:03d}.npy", (tracks * scale - 0.5)[None].astype(np.float32))
        np.save(root / "visibility" / f"{i:03d}.npy", visible[None])
        prompts.append(["a striped disc moves left over a checkered wall", "a striped square moves up"][i % 2])
    (root / "prompt.txt").write_text("\n".join(prompts) + "\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    clips = [generate_clip(600000 + i, num_frames=8, height=64, width=64) for i in range(2)]
    write_release_folder(root / "fg", clips)
    videos = root / "videos"
    videos.mkdir()
    for i, clip in enumerate(clips):
        write_video(videos / f"{i:03d}.mp4", clip.video, 8)
    return root, clips


def test_reader_converts_the_releases_conventions(release):
    root, clips = release
    dataset = ReleaseDataset(root / "fg")
    assert [e.name for e in dataset.entries] == ["000", "001"] and dataset.entries[1].prompt == "a striped square moves up"
    tracks, visible = dataset.load_tracks(dataset.entries[0], size=(64, 64))
    xs, ys = np.meshgrid((np.arange(4) + 0.5) / 4 * 64, (np.arange(4) + 0.5) / 4 * 64)
    queries = np.stack([np.zeros(16), xs.ravel(), ys.ravel()], 1).astype(np.float32)
    expected, expected_visible = (a.swapaxes(0, 1) for a in clips[0].track(queries))
    np.testing.assert_allclose(tracks, expected, atol=1e-4)  # +0.5 and 720x480 -> 64x64 undone
    np.testing.assert_array_equal(visible, expected_visible)


def test_reader_refuses_broken_folders_in_one_line(tmp_path, release):
    root, _ = release
    with pytest.raises(UserError, match="prompt.txt"):
        ReleaseDataset(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "prompt.txt").write_text("one\ntwo\n")
    (broken / "tracks").mkdir()
    with pytest.raises(UserError, match="tracks/000.npy"):
        ReleaseDataset(broken)
    np.save(broken / "tracks" / "000.npy", np.zeros((1, 4, 3, 2), np.float32))
    (broken / "visibility").mkdir()
    np.save(broken / "visibility" / "000.npy", np.zeros((1, 4, 5), bool))
    np.save(broken / "tracks" / "001.npy", np.zeros((4, 3), np.float32))
    np.save(broken / "visibility" / "001.npy", np.zeros((1, 4, 3), bool))
    dataset = ReleaseDataset(broken)
    with pytest.raises(UserError, match=r"expected \(1, T, N\)"):
        dataset.load_tracks(dataset.entries[0])
    with pytest.raises(UserError, match=r"\(1, T, N, 2\)"):
        dataset.load_tracks(dataset.entries[1])


def test_analyze_scores_given_videos_against_the_authors_tracks(release, tmp_path):
    root, _ = release
    out = tmp_path / "analysis"
    assert main(["analyze", "--release-dataset", str(root / "fg"), "--videos", str(root / "videos"),
                 "--layers", "4", "5", "--steps", "40", "--num-steps", "50", "--no-features", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    videos = results["videos"]
    assert [v["name"] for v in videos] == ["000", "001"] and all(v["points"] == 16 for v in videos)
    assert all(v["extra"]["release_tracks"].endswith(f"tracks/{v['name']}.npy") for v in videos)


def test_analyze_generates_each_prompt_and_scores_it_against_the_authors_tracks(release, tmp_path):
    root, _ = release
    out = tmp_path / "generated"
    assert main(["analyze", "--release-dataset", str(root / "fg"), "--seeds", "3", "--layers", "5", "--steps", "3",
                 "--num-steps", "4", "--no-features", "--out", str(out)]) == 0
    videos = json.loads((out / "results.json").read_text())["videos"]
    assert [v["name"] for v in videos] == ["000-s3", "001-s3"] and all(v["points"] == 16 for v in videos)
    assert all(v["prompt"] and v["seed"] == 3 for v in videos)


def test_plain_npy_tracks_are_refused_with_the_way_out(release, tmp_path, capsys):
    root, _ = release
    assert main(["analyze", "--video", str(root / "videos" / "000.mp4"), "--tracks",
                 str(root / "fg" / "tracks" / "000.npy"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--release-dataset" in err
