"""Conformance, in the spirit of timm's tests parametrised over the registry: every family's tiny
configuration (stock classes at tiny width, its checkpoints' VAE compression, patch size and scheduler),
saved as a diffusers pipeline directory and passed as --model DIR, goes through every command:
track (a query frame other than 0), analyze (a generated video, and a real one in each noise mode),
generate (none / cfg / cag, or CAG's one-line refusal) and probe features. Each run checks shapes,
frame counts and value ranges, and a second run must give identical output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from difftrack.backbones import tiny_configs
from difftrack.cli import main
from difftrack.io import read_video, write_video
from difftrack.testing import TINY_KINDS, save_pipeline, tiny_components, tiny_pipeline_class

FRAMES, SIZE = 9, 64  # 1 + 4k (and 1 + 8k) RGB frames; at least 2x2 tokens for every VAE x patch (16 and 32)
PROMPT = "a red disc moves left over the wall"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    for kind in TINY_KINDS:
        save_pipeline(tiny_components(kind), tiny_pipeline_class(kind), root / kind)
    return root


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from difftrack.data.synthetic import generate_clip

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, generate_clip(7, num_frames=FRAMES, height=SIZE, width=SIZE).video, 8.0)
    return path


def _run(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return captured.out


def test_every_adapter_of_a_real_checkpoint_family_has_a_tiny_configuration():
    from difftrack.backbones import Backbone, list_backbones

    list_backbones()  # imports every family module
    adapters = {cls for cls in _subclasses(Backbone) if cls.family and not cls.family.startswith("embedded")}
    assert adapters == {c.backbone_class for c in tiny_configs().values()}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.mark.parametrize("kind", TINY_KINDS)
@pytest.mark.parametrize("tracker", ["paper", "difftrack"])
def test_track_from_a_later_query_frame_is_repeatable(pipelines, clip, kind, tracker, tmp_path, capsys):
    points = tmp_path / "points.json"
    points.write_text(json.dumps([[3, 8.0, 8.0], [5, 20.0, 12.0], [0, 16.0, 16.0]]))
    # the paper tracks at the model's trained size, which a tiny configuration may not record (LTX: 512x704)
    size = ["--height", SIZE, "--width", SIZE] if tracker == "paper" else []
    outputs = []
    for run in ("a", "b"):
        _run(capsys, "track", clip, "--points", points, "--model", pipelines / kind, "--num-steps", 4, "--steps", 3,
             "--tracker", tracker, *size, "--no-video", "--out", tmp_path / run)
        with np.load(tmp_path / f"{run}.npz") as data:
            outputs.append((data["tracks"], data["visibility"]))
    tracks, visible = outputs[0]
    assert tracks.shape == (FRAMES, 3, 2) and visible.shape == (FRAMES, 3)
    assert np.isfinite(tracks).all()
    assert not visible[((tracks < 0) | (tracks > SIZE)).any(-1)].any()  # carried out of view: occluded
    np.testing.assert_allclose(tracks[3, 0], [8.0, 8.0], atol=0.5)  # a track passes through its query
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])


# Sources that draw noise: each runs twice, the same seed giving the same metrics.
RANDOM_SOURCES = ("real-add", "generated")


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_analyze_generated_and_real_video_in_every_noise_mode(pipelines, clip, kind, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    common = ["--model", pipelines / kind, "--layers", 0, 1, "--num-steps", 3, "--steps", 2, "--grid", 3,
              "--frames", FRAMES]
    sources = {f"real-{mode}": ["--video", clip, "--noise", mode] for mode in ("add", "clean", "invert")}
    generated = ["--prompts", prompts, "--height", SIZE, "--width", SIZE]
    if tiny_configs()[kind].backbone_class.takes_image:  # no first frame to generate from: a one-line refusal
        code = main([str(a) for a in ["analyze", *generated, *common, "--out", tmp_path / "generated"]])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(err) == 1 and "first frame" in err[0] and not (tmp_path / "generated").exists()
    else:
        sources["generated"] = generated
    for name, source in sources.items():
        results = []
        for run in ("a", "b") if name in RANDOM_SOURCES else ("a",):
            _run(capsys, "analyze", *source, *common, "--out", tmp_path / name / run)
            results.append(json.loads((tmp_path / name / run / "results.json").read_text()))
        video = results[0]["videos"][0]
        assert (video["frames"], video["height"], video["width"]) == (FRAMES, SIZE, SIZE), name
        # Accuracy is undefined (null) where the labeller keeps no point visible (random tiny weights, noisy
        # generated videos); the attention-mass split is always defined.
        accuracy = np.array(video["metrics"]["qk_pck"], dtype=float)
        mass = np.array(video["metrics"]["attn_own"], dtype=float) + np.array(video["metrics"]["attn_cross"], dtype=float)
        assert accuracy.shape == (2, 1) and not ((accuracy < 0) | (accuracy > 1)).any(), name
        assert mass.shape == (2, 1) and np.isfinite(mass).all() and (mass <= 1 + 1e-6).all(), name
        if name in RANDOM_SOURCES:
            assert results[1]["videos"][0]["metrics"] == video["metrics"], name


@pytest.mark.parametrize("kind", TINY_KINDS)
@pytest.mark.parametrize("guidance", ["none", "cfg", "cag"])
def test_generate_each_guidance_or_a_clear_refusal(pipelines, kind, guidance, tmp_path, capsys):
    import cv2

    extra = []
    if tiny_configs()[kind].backbone_class.takes_image:
        cv2.imwrite(str(tmp_path / "first.png"), np.full((SIZE, SIZE, 3), 200, np.uint8))
        extra = ["--image", tmp_path / "first.png"]
    argv = ["generate", "--model", pipelines / kind, "--prompt", PROMPT, "--steps", 2, "--frames", FRAMES,
            "--height", SIZE, "--width", SIZE, "--guidance", guidance, "--cfg-scale", 3, *extra]
    if guidance == "cag":
        argv += ["--cag-layers", 0]
    backbone_class = tiny_configs()[kind].backbone_class
    if guidance == "cag" and backbone_class.cag_refusal:
        code = main([str(a) for a in argv + ["--out", tmp_path / "v.mp4"]])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(err) == 1 and "--guidance cfg" in err[0]
        assert not (tmp_path / "v.mp4").exists()
        return
    videos = []
    for run in ("a", "b"):
        _run(capsys, *argv, "--out", tmp_path / f"{run}.mp4")
        videos.append(read_video(tmp_path / f"{run}.mp4")[0])
    assert videos[0].shape == (FRAMES, SIZE, SIZE, 3) and videos[0].dtype == np.uint8
    np.testing.assert_array_equal(videos[0], videos[1])


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_probe_features_shapes_and_repeatability(pipelines, clip, kind, tmp_path, capsys):
    arrays = []
    for run in ("a", "b"):
        _run(capsys, "probe", "features", "--model", pipelines / kind, "--video", clip, "--block", 0, 1,
             "--noise-step", 2, "--num-steps", 3, "--kinds", "query", "block", "--out", tmp_path / f"{run}.npz")
        with np.load(tmp_path / f"{run}.npz") as data:
            arrays.append({name: data[name] for name in data.files})
    maps = [name for name in arrays[0] if name.startswith(("query", "block"))]
    assert len(maps) == 4, sorted(arrays[0])
    for name in maps:
        assert arrays[0][name].shape[0] == FRAMES and np.isfinite(arrays[0][name]).all(), name
        np.testing.assert_array_equal(arrays[0][name], arrays[1][name])
